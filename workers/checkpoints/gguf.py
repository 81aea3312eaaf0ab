"""GGUF checkpoints (llama.cpp's format) as the same lazy float32 tensors a safetensors
checkpoint gives, with their config and tokenizer read from the file's own metadata.

GGUF is what most local-inference users hold their models in (llama.cpp, ollama, LM
Studio), usually already quantized. The `gguf` package (by the ggml authors, numpy only)
parses the file and dequantizes its block formats; this module maps that onto what the
rest of the project expects from `workers.checkpoints.source`:

- hyper-parameters from the `<architecture>.*` metadata into a `LlamaConfig`, for the
  architectures the graph runs (`llama`, `qwen2`, `qwen3`; others refused by name);
- tensors under their Hugging Face names, each dequantized to float32 only when asked
  for (one at a time, as with safetensors), shaped [out, in];
- in a `llama` file, the rows of `attn_q` / `attn_k` un-permuted: llama.cpp's converter
  interleaves each head's two rotary halves for its adjacent-pair RoPE, the Hugging Face
  layout (and our graph) keeps them as halves; qwen2 and qwen3 use NEOX (half-split)
  RoPE, so their files keep the Hugging Face order and are read as they are;
- Llama 3.1-style RoPE scaling recovered from the `rope_freqs` tensor llama.cpp writes
  in its place;
- the tokenizer rebuilt from `tokenizer.ggml.*` (GPT-2 style byte-level BPE);
- for a variant that keeps the file's blocks (`Variant.blocks`), the linears as
  `StoredBlocks` instead: the Q4_0 / Q4_1 / Q8_0 bytes unpacked, not dequantized, their
  rows un-permuted whole (the blocks run along the input dimension, so a row's blocks
  move together and none is split).

Everything is checked before any tensor data is read (architecture, tensor types,
shapes, and that every tensor's bytes lie inside the file), so a bad file fails in the
driver with a message naming the problem, before any work starts.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from workers.checkpoints.tensors import CheckpointError, LazyTensors, StoredBlocks
from workers.core.config import (
    ARCHITECTURES,
    LINEARS,
    NORMS,
    QK_NORMS,
    REFUSED_ARCHITECTURES,
    LlamaConfig,
    RopeScaling,
    expected_shapes,
    is_linear,
    rope_inv_freq,
)

SUFFIX = ".gguf"
# The one architecture whose q and k rows llama.cpp permutes for adjacent-pair RoPE.
PERMUTED_ARCHITECTURE = "llama"
# GGML tensor types this loader accepts: each is dequantized by `gguf.quants.dequantize`.
SUPPORTED_TYPES: tuple[str, ...] = (
    "F32",
    "F16",
    "BF16",
    "Q8_0",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q2_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
    "Q6_K",
)
# Hugging Face per-layer tensor suffix -> GGUF per-layer name (llama.cpp's tensor map).
_LAYER_NAMES: dict[str, str] = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
}
_GLOBAL_NAMES: dict[str, str] = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
assert set(_LAYER_NAMES) == {*LINEARS, *NORMS, *QK_NORMS}
# `<architecture>.<key>` metadata -> the LlamaConfig field it holds, as llama.cpp writes it.
_METADATA: dict[str, str] = {
    "block_count": "num_hidden_layers",
    "context_length": "max_position_embeddings",
    "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.key_length": "head_dim",
    "attention.value_length": "head_dim",
    "rope.dimension_count": "head_dim",
    "rope.freq_base": "rope_theta",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "vocab_size": "vocab_size",
}


@dataclasses.dataclass(frozen=True)
class GgufCheckpoint:
    """A validated GGUF file: its config and, per Hugging Face name, its tensor entry."""

    path: Path
    config: LlamaConfig
    tensors: dict[str, Any]  # HF name -> gguf.ReaderTensor (data is a memmap view)


def find_gguf(path: str | Path) -> Path | None:
    """The GGUF file `path` names: the file itself, or the one `.gguf` in a directory that
    has no `config.json` (a Hugging Face directory is not GGUF); None otherwise."""
    path = Path(path)
    if path.suffix == SUFFIX and not path.is_dir():
        if not path.is_file():
            raise CheckpointError(f"{path}: GGUF file not found")
        return path
    if not path.is_dir() or (path / "config.json").exists():
        return None
    found = sorted(path.glob(f"*{SUFFIX}"))
    if len(found) > 1:
        names = ", ".join(f.name for f in found)
        raise CheckpointError(
            f"{path}: holds {len(found)} GGUF files ({names}); pass one as model.path=FILE.gguf"
        )
    return found[0] if found else None


def open_gguf(path: str | Path, cfg: LlamaConfig | None = None) -> GgufCheckpoint:
    """Parses and validates a GGUF file without reading any tensor data. With `cfg` (a
    file written for a model whose config is known), the tensors are checked against
    it instead of a config read from the metadata."""
    path = Path(path)
    fields, by_name = _parsed(path)
    if cfg is None:
        cfg = _config(path, fields, tied="output.weight" not in by_name)
        if "rope_freqs.weight" in by_name:
            cfg = dataclasses.replace(cfg, rope_scaling=_llama3_scaling(path, cfg, by_name))
    tensors = {}
    for hf_name, shape in expected_shapes(cfg).items():
        tensors[hf_name] = _checked_tensor(path, by_name, _gguf_name(hf_name), shape)
    if unused := sorted(n for n in by_name if n.endswith(".bias") and n not in _names(tensors)):
        raise CheckpointError(
            f"{path}: bias tensors the {cfg.architecture} graph has no place for: "
            f"{', '.join(unused[:4])}{' ...' if len(unused) > 4 else ''}"
        )
    return GgufCheckpoint(path, cfg, tensors)


def _names(tensors: dict[str, Any]) -> set[str]:
    return {tensor.name for tensor in tensors.values()}


def lazy_gguf(
    path: str | Path, blocks: str | None = None, cfg: LlamaConfig | None = None
) -> LazyTensors:
    """Every tensor the config needs, dequantized to float32 [out, in] when asked for;
    with `blocks` (a block type), the linears as the file's own `StoredBlocks`; `cfg`:
    as for `open_gguf`."""
    ckpt = open_gguf(path, cfg)
    if blocks == AS_STORED:
        kept = stored_types(ckpt)
        return LazyTensors(
            {
                name: functools.partial(
                    _as_stored if name in kept else _dequantized, ckpt, name, tensor
                )
                for name, tensor in ckpt.tensors.items()
            }
        )
    if blocks is not None:
        check_blocks(ckpt, blocks)
    return LazyTensors(
        {
            name: functools.partial(
                _stored_blocks if blocks and is_linear(name) else _dequantized, ckpt, name, tensor
            )
            for name, tensor in ckpt.tensors.items()
        }
    )


def check_blocks(ckpt: GgufCheckpoint, blocks: str) -> None:
    """Every linear of the file must be of block type `blocks`, or the variant cannot keep
    them as stored: the error names the tensors that are not, and their types."""
    others = {
        _gguf_name(name): tensor.tensor_type.name
        for name, tensor in ckpt.tensors.items()
        if is_linear(name) and tensor.tensor_type.name != blocks
    }
    if others:
        raise CheckpointError(
            f"{ckpt.path}: a variant with blocks={blocks} keeps the file's own {blocks} linears, "
            f"but {_listed(others)} are not {blocks}; pick the variant of the file's type, or one "
            "that quantizes (e.g. int4-fac-g32)"
        )


def _parsed(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The file's metadata (key -> value) and tensor entries (GGUF name -> entry).

    Parsing a GGUF header costs seconds (gguf's reader reads the ~100k vocabulary and
    merge strings one small read at a time), and a sweep asks for the config, the
    tokenizer and the tensors separately: parsed once per process and file version.
    """
    stat = path.stat()
    return _parsed_version(path.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _parsed_version(path: Path, size: int, mtime_ns: int) -> tuple[dict[str, Any], dict[str, Any]]:
    reader = _reader(path)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    return fields, {t.name: t for t in reader.tensors}


def _reader(path: Path) -> Any:
    """gguf's reader, with every short read (a file cut short) reported as truncation."""
    import gguf

    class Reader(gguf.GGUFReader):
        # GGUFReader slices its memmap without a bounds check, then fails later with an
        # unrelated message (a reshape, a bad string); check each read instead.
        def _get(self, offset: int, dtype: Any, count: int = 1, override_order: Any = None) -> Any:
            end = int(offset) + np.dtype(dtype).itemsize * int(count)
            if end > len(self.data):
                raise _Truncated(end, len(self.data))
            return super()._get(offset, dtype, count, override_order)

    try:
        return Reader(path)
    except _Truncated as e:
        raise CheckpointError(
            f"{path}: truncated: the GGUF file needs at least {e.needed} bytes but has "
            f"{e.size}; copy or download it again"
        ) from None
    except (ValueError, KeyError, IndexError, UnicodeDecodeError, OverflowError) as e:
        if unknown := re.search(r"(\d+)\)? is not a valid GGMLQuantizationType", str(e)):
            raise CheckpointError(
                f"{path}: a tensor has unknown GGML type id {unknown[1]} (newer than the gguf "
                f"package, or corrupt); supported: {', '.join(SUPPORTED_TYPES)}"
            ) from None
        raise CheckpointError(f"{path}: not a readable GGUF file ({e})") from None


class _Truncated(Exception):
    def __init__(self, needed: int, size: int) -> None:
        super().__init__(needed, size)
        self.needed, self.size = needed, size


def _config(path: Path, fields: dict[str, Any], tied: bool) -> LlamaConfig:
    """`<architecture>.*` metadata -> LlamaConfig; other architectures are rejected by name."""
    arch = fields.get("general.architecture")
    if arch not in ARCHITECTURES:
        later = " (not yet: the graph does not take it)" if arch in REFUSED_ARCHITECTURES else ""
        raise CheckpointError(
            f"{path}: general.architecture={arch!r}{later}: supported GGUF architectures: "
            f"{', '.join(ARCHITECTURES)}"
        )

    def get(key: str, default: Any = None) -> Any:
        value = fields.get(f"{arch}.{key}", default)
        if value is None:
            raise CheckpointError(f"{path}: metadata {arch}.{key} is missing")
        return value

    scaling = fields.get(f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none", "linear") or float(get("rope.scaling.factor", 1.0)) != 1.0:
        raise CheckpointError(
            f"{path}: RoPE scaling {scaling!r} (factor {get('rope.scaling.factor', 1.0)}) is "
            "not supported; only unscaled RoPE"
        )
    heads, hidden = int(get("attention.head_count")), int(get("embedding_length"))
    head_dim = int(get("attention.key_length", hidden // heads))
    if int(get("rope.dimension_count", head_dim)) != head_dim:
        raise CheckpointError(
            f"{path}: {arch}.rope.dimension_count={get('rope.dimension_count')} differs "
            f"from the head size {head_dim}; partial rotary embeddings are not supported"
        )
    tokens = fields.get("tokenizer.ggml.tokens")
    try:
        return LlamaConfig(
            vocab_size=int(get("vocab_size", len(tokens) if tokens else None)),
            hidden_size=hidden,
            intermediate_size=int(get("feed_forward_length")),
            num_hidden_layers=int(get("block_count")),
            num_attention_heads=heads,
            num_key_value_heads=int(get("attention.head_count_kv", heads)),
            head_dim=head_dim,
            rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=float(get("rope.freq_base", 10000.0)),
            rope_scaling=None,
            tie_word_embeddings=tied,
            max_position_embeddings=int(get("context_length", 2048)),
            architecture=arch,
            attention_bias=arch == "qwen2",
            qk_norm=arch == "qwen3",
        )
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: malformed {arch} metadata ({e})") from None


def _llama3_scaling(path: Path, cfg: LlamaConfig, by_name: dict[str, Any]) -> RopeScaling | None:
    """Llama 3.1-style RoPE scaling, recovered from llama.cpp's `rope_freqs` tensor.

    llama.cpp's converter does not keep `rope_scaling`'s four numbers; it writes the
    factor each rotary frequency is divided by: 1 for short wavelengths, `factor` for
    long ones, and in between 1 / ((1 - s) / factor + s) with s linear in the frequency,
    s = (old_context * freq / 2pi - low) / (high - low). `factor` is the largest
    factor; s at the in-between frequencies gives the line, and only its slope and
    intercept matter, so any (old_context, low, high) on it is the same model: old_context
    is rounded to an integer (what `RopeScaling` holds) and low, high solved from it. The
    result is checked by recomputing every factor.
    """
    tensor = by_name["rope_freqs.weight"]
    where = f"{path}: rope_freqs.weight"
    if tensor.tensor_type.name != "F32" or int(tensor.n_elements) != cfg.head_dim // 2:
        raise CheckpointError(f"{where}: expected {cfg.head_dim // 2} F32 values")
    stored = np.array(tensor.data, dtype=np.float64).reshape(-1)
    factor = float(stored.max())
    if np.allclose(stored, 1.0):
        return None
    plain = dataclasses.replace(cfg, rope_scaling=None)
    freq = rope_inv_freq(plain).astype(np.float64)
    mid = (stored > 1 + 1e-6) & (stored < factor * (1 - 1e-6))
    s = (1 / stored[mid] - 1 / factor) / (1 - 1 / factor)
    slope, intercept = (float(c) for c in np.polyfit(freq[mid], s, 1)) if mid.sum() >= 2 else (0, 0)
    if slope <= 0 or intercept >= 0:
        raise CheckpointError(
            f"{where}: these frequency factors are not Llama 3.1-style RoPE scaling "
            f"(fewer than two frequencies between the two regimes, or not monotone)"
        )
    old = round(2 * math.pi * slope / -intercept)  # old_context for low = 1
    span = old / (2 * math.pi * slope)  # high - low
    scaling = RopeScaling(
        factor=factor,
        low_freq_factor=-intercept * span,
        high_freq_factor=-intercept * span + span,
        original_max_position_embeddings=old,
    )
    got = freq / rope_inv_freq(dataclasses.replace(cfg, rope_scaling=scaling))
    if not np.allclose(got, stored, rtol=1e-4):
        raise CheckpointError(f"{where}: no Llama 3.1-style RoPE scaling reproduces the factors")
    return scaling


def _gguf_name(hf_name: str) -> str:
    if hf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)  # model.layers.N.<suffix>.weight (or .bias)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{_LAYER_NAMES[module]}.{kind}"


def _checked_tensor(path: Path, by_name: dict[str, Any], name: str, shape: tuple[int, ...]) -> Any:
    """One tensor's entry, checked for presence, type and shape (the data is not read)."""
    where = f"{path}: tensor {name!r}"
    tensor = by_name.get(name)
    if tensor is None:
        raise CheckpointError(f"{where} is missing; the file does not match its metadata")
    kind = tensor.tensor_type.name
    if kind not in SUPPORTED_TYPES:
        raise CheckpointError(
            f"{where}: tensor type {kind} is not supported; supported: {', '.join(SUPPORTED_TYPES)}"
        )
    got = tuple(int(d) for d in reversed(tensor.shape))  # GGUF lists dims innermost first
    if got != shape:
        raise CheckpointError(
            f"{where}: wrong shape, expected {shape} from its metadata, got {got}"
        )
    return tensor


def _dequantized(ckpt: GgufCheckpoint, name: str, tensor: Any) -> np.ndarray:
    """One tensor as a fresh float32 [out, in] array, Q and K rows in Hugging Face order."""
    from gguf.quants import dequantize

    shape = tuple(int(d) for d in reversed(tensor.shape))
    # np.array copies: the result must not keep the file's memmap alive.
    w = np.array(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32).reshape(shape)
    if heads := _permuted_heads(ckpt.config, name):
        w = _unpermute(w, heads)
    return np.ascontiguousarray(w)


# The block types a variant can keep as stored -> the q of a zero weight in a block that
# stores no minimum (Q4_0: w = d (q - 8); Q8_0: int8 q, kept as q + 128), None for one
# that does (Q4_1: w = d q + m). Sizes and bits come from the gguf package's own table.
_KEEPABLE: dict[str, int | None] = {"Q4_0": 8, "Q4_1": None, "Q8_0": 128}


@dataclasses.dataclass(frozen=True)
class BlockType:
    """A GGUF block type a variant can keep as stored (`Variant.blocks`)."""

    name: str
    block_size: int  # values per block, along the contraction dimension
    block_bytes: int
    zero: int | None  # the q of a zero weight; None: the block stores its minimum m

    @property
    def header_bytes(self) -> int:
        """d (float16), and m for a block that stores one: where q starts."""
        return 2 if self.zero is not None else 4

    @property
    def bits(self) -> int:
        return (self.block_bytes - self.header_bytes) * 8 // self.block_size


@functools.cache
def kept_block_types() -> dict[str, BlockType]:
    """The block types a variant can keep as stored, by name (`Q4_0`, `Q4_1`, `Q8_0`)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    sizes = {name: GGML_QUANT_SIZES[GGMLQuantizationType[name]] for name in _KEEPABLE}
    return {name: BlockType(name, *sizes[name], zero) for name, zero in _KEEPABLE.items()}


def _stored_blocks(ckpt: GgufCheckpoint, name: str, tensor: Any) -> StoredBlocks:
    """One linear's blocks as stored: q unpacked from the nibbles (or bytes), d and m kept.

    A Q4 block holds d (float16), for Q4_1 also m, then 16 bytes: element j in the low
    nibble of byte j, element j + 16 in its high nibble. Q8_0 holds d and 32 int8, kept
    as ui8 q + 128 (what the variant's unsigned integers hold), with m = -128 d.
    """
    kind = tensor.tensor_type.name
    block = kept_block_types()[kind]
    rows = int(tensor.shape[1])
    raw = np.asarray(tensor.data, dtype=np.uint8).reshape(rows, -1)
    if heads := _permuted_heads(ckpt.config, name):  # whole rows of blocks move
        raw = _unpermute(raw, heads)
    raw = raw.reshape(rows, -1, block.block_bytes)  # [rows, K / B, bytes]
    scale = _float16(raw[..., 0:2])
    packed = raw[..., block.header_bytes :]
    if block.bits == 8:
        q = packed ^ np.uint8(0x80)  # int8 bits -> q + 128
    else:
        q = np.concatenate([packed & np.uint8(0xF), packed >> np.uint8(4)], axis=-1)
    if block.zero is None:
        minimum = _float16(raw[..., 2:4])
    else:
        minimum = _exact_float16(scale, -block.zero, ckpt.path, name)
    return StoredBlocks(kind, np.ascontiguousarray(q.reshape(rows, -1)), scale, minimum)


# `Variant.blocks` of the variant that keeps every matrix in the type the file holds it
AS_STORED = "file"
_FLOAT_TYPES = ("F32", "F16", "BF16")


def stored_types(ckpt: GgufCheckpoint) -> dict[str, str]:
    """The matrices (linears, embedding, lm_head) the `gguf` variant keeps as stored, and
    their types: every block-quantized one. A block type it cannot run is refused, naming
    the tensors; float matrices stay float32 and are not listed."""
    from workers.checkpoints.ggml_types import unpackable

    kept, refused = {}, {}
    for name, tensor in ckpt.tensors.items():
        kind = tensor.tensor_type.name
        if len(tensor.shape) != 2 or kind in _FLOAT_TYPES:  # a norm, or a float matrix
            continue
        (kept if kind in unpackable() else refused)[name] = kind
    if refused:
        named = {_gguf_name(name): kind for name, kind in refused.items()}
        raise CheckpointError(
            f"{ckpt.path}: the gguf variant keeps every matrix as stored, but {_listed(named)} "
            f"are of types it cannot run as stored (it runs {', '.join(unpackable())}); pick "
            "a variant that quantizes (e.g. int4-fac-g32), which dequantizes them first"
        )
    return kept


def _listed(types: dict[str, str], shown: int = 4) -> str:
    """`name (TYPE), ...` for the first `shown` tensors, and how many more there are."""
    listed = ", ".join(f"{name} ({kind})" for name, kind in list(types.items())[:shown])
    return listed + (f" and {len(types) - shown} more" if len(types) > shown else "")


def _as_stored(ckpt: GgufCheckpoint, name: str, tensor: Any) -> StoredBlocks:
    """One matrix in the grouped affine form of its own type (the `gguf` variant), its
    rows un-permuted whole: q, float32 scale and minimum, and the offset."""
    from workers.checkpoints.ggml_types import unpack

    rows = int(tensor.shape[1])
    raw = np.asarray(tensor.data, dtype=np.uint8).reshape(rows, -1)
    cfg = ckpt.config
    if name.endswith("self_attn.q_proj.weight"):  # whole rows of blocks move
        raw = _unpermute(raw, cfg.num_attention_heads)
    elif name.endswith("self_attn.k_proj.weight"):
        raw = _unpermute(raw, cfg.num_key_value_heads)
    kind = tensor.tensor_type.name
    u = unpack(kind, raw)
    return StoredBlocks(kind, u.q, u.scale, u.minimum, u.offset)


def _float16(pairs: np.ndarray) -> np.ndarray:
    """[.., 2] little-endian bytes -> [..] float16, the bits unchanged."""
    return np.ascontiguousarray(pairs).view("<f2")[..., 0]


def _exact_float16(scale: np.ndarray, factor: int, path: Path, name: str) -> np.ndarray:
    """factor * scale in float16: exact (a power of two) unless it overflows."""
    out = (scale.astype(np.float32) * np.float32(factor)).astype(np.float16)
    if not np.isfinite(out).all():
        raise CheckpointError(
            f"{path}: tensor {_gguf_name(name)!r}: a block scale times {factor} overflows "
            "float16; keep its blocks with a variant that quantizes instead"
        )
    return out


def _permuted_heads(cfg: LlamaConfig, name: str) -> int | None:
    """The heads whose rows llama.cpp permutes in `name` (q or k of a `llama` file), or
    None: every other tensor, and every tensor of a NEOX-RoPE architecture (qwen2, qwen3)."""
    if cfg.architecture != PERMUTED_ARCHITECTURE:
        return None
    if name.endswith("self_attn.q_proj.weight"):
        return cfg.num_attention_heads
    if name.endswith("self_attn.k_proj.weight"):
        return cfg.num_key_value_heads
    return None


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undoes llama.cpp's converter: per head, rows (pairs of rotary halves interleaved)
    back to [first half; second half]."""
    rows, cols = w.shape
    return w.reshape(heads, rows // heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


# --- writing: a model llama.cpp can load ---------------------------------------------------


def write_gguf(path: str | Path, cfg: LlamaConfig, tensors: LazyTensors) -> None:
    """Writes the model as an F32 GGUF file llama.cpp loads, one tensor at a time.

    The inverse of reading: the config's architecture, GGUF names, a `llama` file's Q and
    K rows permuted as llama.cpp's converter permutes them, Llama 3.1 RoPE scaling as a
    `rope_freqs` tensor. The vocabulary is `tokenizer.ggml.model = none` with
    `<architecture>.vocab_size` dummy tokens: the sweep feeds
    llama.cpp token ids, never text, so the model needs no tokenizer of its own.
    Tensors are streamed (header first, then each one as it is made), so a 1B model
    never sits in memory whole; the file is written to a temporary name and renamed.
    """
    import gguf

    path = Path(path)
    shapes = expected_shapes(cfg)  # no lm_head when it is tied to the embedding
    names = list(shapes)
    rope = rope_factors(cfg)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), cfg.architecture)
    types = {f.name: f.type for f in dataclasses.fields(cfg)}
    for key, field in _METADATA.items():
        add = writer.add_float32 if types[field] == "float" else writer.add_uint32
        add(f"{cfg.architecture}.{key}", getattr(cfg, field))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("none")
    f32 = np.dtype(np.float32)
    for name in names:
        shape = shapes[name]
        writer.add_tensor_info(_gguf_name(name), shape, f32, math.prod(shape) * f32.itemsize)
    if rope is not None:
        writer.add_tensor_info("rope_freqs.weight", rope.shape, f32, rope.nbytes)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    try:
        for name in names:
            writer.write_tensor_data(_permuted(cfg, name, np.asarray(tensors[name], np.float32)))
        if rope is not None:
            writer.write_tensor_data(rope)
        writer.close()
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def rope_factors(cfg: LlamaConfig) -> np.ndarray | None:
    """llama.cpp's `rope_freqs` for Llama 3.1 RoPE scaling: each rotary frequency's
    divisor (what `_llama3_scaling` reads back); None without scaling."""
    if cfg.rope_scaling is None:
        return None
    plain = rope_inv_freq(dataclasses.replace(cfg, rope_scaling=None)).astype(np.float64)
    return (plain / rope_inv_freq(cfg).astype(np.float64)).astype(np.float32)


def _permuted(cfg: LlamaConfig, name: str, w: np.ndarray) -> np.ndarray:
    """A tensor as llama.cpp stores it: a `llama` file's Q and K rows interleaved per head
    (`_unpermute`'s inverse), C order."""
    if heads := _permuted_heads(cfg, name):
        w = _permute(w, heads)
    return np.ascontiguousarray(w)


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """Per head, [first half; second half] of the rotary rows -> pairs interleaved."""
    rows, cols = w.shape
    return w.reshape(heads, 2, rows // heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def tensor_types(path: str | Path) -> dict[str, int]:
    """How many of the file's per-layer linears each GGML type holds (`{"Q4_1": 210}`)."""
    ckpt = open_gguf(path)
    types: dict[str, int] = {}
    for name, tensor in ckpt.tensors.items():
        if is_linear(name):
            types[tensor.tensor_type.name] = types.get(tensor.tensor_type.name, 0) + 1
    return types
