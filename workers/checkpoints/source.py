"""Llama weights as float32 numpy arrays: read from a Hugging Face checkpoint, or synthesized.

Workers never import torch, so checkpoints are read by parsing safetensors directly:
an 8-byte little-endian header length, a JSON header mapping each tensor name to its
dtype, shape and byte range, then the raw little-endian data. numpy alone cannot
represent bfloat16 (the dtype most Llama checkpoints ship in), so `ml_dtypes` supplies
it; every tensor is widened to float32 so later stages see one dtype whatever the file
held. Sizes are checked against the file before any data is read, so a truncated
download fails with a message instead of a short read.

Synthetic weights give the default sweep real-model shapes without a download; they
are seeded per tensor, so the same seed yields the same bytes on every host.

A GGUF file (llama.cpp's format), or a directory holding one, is read by `workers.checkpoints.gguf`
behind the same functions: each one here dispatches on `gguf_file(path)`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import zlib
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from workers.checkpoints.tensors import CheckpointError, LazyTensors
from workers.core.config import LlamaConfig, expected_shapes
from workers.core.files import atomic_write

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"

# safetensors dtype names -> numpy dtypes; the format is little-endian by definition.
_DTYPES: dict[str, np.dtype] = {
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
}
_HEADER_LEN_BYTES = 8
_NORM_STD = 0.02  # std of the synthetic linears and embedding, as Llama's initializer_range


@dataclasses.dataclass(frozen=True)
class _Header:
    """A parsed safetensors header: where the data starts and each tensor's entry."""

    path: Path
    data_start: int  # byte offset of the data section in the file
    file_bytes: int
    entries: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class _TensorSpan:
    """A validated tensor location, ready to read without further checks."""

    path: Path
    dtype: np.dtype
    offset: int  # absolute byte offset in the file
    shape: tuple[int, ...]


def lazy_checkpoint(path: str | Path, blocks: str | None = None) -> LazyTensors:
    """A Hugging Face Llama checkpoint directory's tensors, read WITHOUT torch.

    The directory needs `config.json` and either `model.safetensors` or the shards named
    by `model.safetensors.index.json`. Every tensor is validated now, before any data is
    read, so a bad checkpoint fails before the slow part; each is then read and widened
    to a float32, C-contiguous array when asked for. Tensors the config does not need
    (a tied `lm_head.weight`, rotary buffers) are ignored. A GGUF file: `workers.checkpoints.gguf`;
    with `blocks` (`Variant.blocks`), its linears as the file's own blocks.
    """
    if (file := gguf_file(path)) is not None:
        from workers.checkpoints.gguf import lazy_gguf

        return lazy_gguf(file, blocks)
    if blocks is not None:
        check_blocks(path, blocks)  # raises: not a GGUF file
    _, spans = _validated_spans(Path(path))
    makers = {name: functools.partial(_read_tensor, span, name) for name, span in spans.items()}
    return LazyTensors(makers)


def lazy_synthetic_weights(cfg: LlamaConfig, seed: int = 0) -> LazyTensors:
    """Seeded random float32 weights of the config's shapes, each made when asked for.

    Each tensor has its own PCG64 generator seeded from (seed, crc32 of its name), so a
    tensor's bytes do not depend on the other tensors, on generation order or on the
    host (Python's hash() is salted per process, hence crc32). Matrices are
    normal(0, 1/sqrt(fan_in)): with Llama's own init (std 0.02) a random model's
    residual stream is the token embedding and greedy decode repeats one token, which
    would make token comparisons nearly vacuous; at unit gain every layer moves the
    output and the tokens vary. Norm weights are 1 + normal(0, 0.02), so a bug that
    ignores them still changes the output.
    """
    if seed < 0:
        raise ValueError(f"synthetic weights: seed must be >= 0, got {seed}")
    shapes = expected_shapes(cfg)
    return LazyTensors(
        {name: functools.partial(_synthetic_tensor, name, s, seed) for name, s in shapes.items()}
    )


def check_checkpoint(path: str | Path) -> LlamaConfig:
    """Everything `lazy_checkpoint` checks, without reading tensor data: cheap enough for
    the driver to run before any work starts."""
    if (file := gguf_file(path)) is not None:
        from workers.checkpoints.gguf import open_gguf

        return open_gguf(file).config
    return _validated_spans(Path(path))[0]


def check_blocks(path: str | Path | None, blocks: str) -> None:
    """A variant that keeps a file's own `blocks` needs a GGUF file whose linears are all
    of that type; anything else fails here, naming the file and tensors, before any work."""
    from workers.checkpoints.gguf import check_blocks as check_gguf_blocks
    from workers.checkpoints.gguf import open_gguf

    file = gguf_file(path) if path is not None else None
    if file is None:
        what = f"model.path={path} is not a GGUF file" if path else "the weights are seeded"
        raise CheckpointError(
            f"a variant with blocks={blocks} keeps a GGUF checkpoint's own {blocks} blocks, but "
            f"{what}; pass model.path=FILE.gguf, or pick a variant that quantizes"
        )
    check_gguf_blocks(open_gguf(file), blocks)


def checkpoint_config(path: str | Path) -> LlamaConfig:
    """A checkpoint's model config: its config.json, or a GGUF file's metadata."""
    if (file := gguf_file(path)) is not None:
        return check_checkpoint(file)
    return LlamaConfig.from_json_file(Path(path) / CONFIG_FILE)


def gguf_file(path: str | Path) -> Path | None:
    """The GGUF file `path` names (a `.gguf` file, or a directory holding one), else None."""
    from workers.checkpoints.gguf import find_gguf

    return find_gguf(path)


def _validated_spans(root: Path) -> tuple[LlamaConfig, dict[str, _TensorSpan]]:
    if not root.is_dir():
        raise CheckpointError(
            f"{root}: checkpoint directory does not exist; pass a directory holding "
            f"{CONFIG_FILE} and {SINGLE_FILE} (or {INDEX_FILE} and its shards), or a .gguf file"
        )
    cfg = _read_config(root / CONFIG_FILE)
    shapes = expected_shapes(cfg)
    files = _tensor_files(root, list(shapes))
    headers = {file: _read_header(file) for file in dict.fromkeys(files.values())}
    spans = {name: _locate(headers[files[name]], name, shape) for name, shape in shapes.items()}
    return cfg, spans


def _read_config(config_path: Path) -> LlamaConfig:
    try:
        return LlamaConfig.from_json_file(config_path)
    except ValueError as e:  # already names the file
        raise CheckpointError(str(e)) from None


def _tensor_files(root: Path, names: list[str]) -> dict[str, Path]:
    """Which file holds each needed tensor: the single file, else the index's shards."""
    single = root / SINGLE_FILE
    if single.is_file():
        return dict.fromkeys(names, single)
    index = root / INDEX_FILE
    if not index.is_file():
        raise CheckpointError(
            f"{root}: neither {SINGLE_FILE} nor {INDEX_FILE} found; "
            "save the model with safe_serialization=True (pytorch_model.bin is not supported)"
        )
    weight_map = _read_weight_map(index)
    files: dict[str, Path] = {}
    for name in names:
        if name not in weight_map:
            raise CheckpointError(
                f"{index}: tensor {name!r} is missing from weight_map; the checkpoint does not "
                "match config.json"
            )
        files[name] = root / weight_map[name]
        if not files[name].is_file():
            raise CheckpointError(
                f"{index}: shard {weight_map[name]!r} (holding tensor {name!r}) not found in "
                f"{root}; the download is incomplete"
            )
    return files


def _read_weight_map(index: Path) -> dict[str, str]:
    """The index's tensor name -> shard file name map, checked for shape."""
    try:
        weight_map = json.loads(index.read_text()).get("weight_map")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index}: 'weight_map' must map tensor names to shard file names")
    return weight_map


def _read_header(path: Path) -> _Header:
    """Reads a safetensors header, checking its length against the file size first."""
    file_bytes = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(_HEADER_LEN_BYTES)
        if len(prefix) < _HEADER_LEN_BYTES:
            raise CheckpointError(
                f"{path}: truncated ({file_bytes} bytes, shorter than the 8-byte header "
                "length); re-download it"
            )
        header_bytes = int.from_bytes(prefix, "little")
        data_start = _HEADER_LEN_BYTES + header_bytes
        if data_start > file_bytes:
            raise CheckpointError(
                f"{path}: truncated: the header claims {header_bytes} bytes but the file has "
                f"{file_bytes}; re-download it"
            )
        raw = f.read(header_bytes)
    try:
        entries = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header, not JSON ({e})") from None
    if not isinstance(entries, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header, not a JSON object")
    entries.pop("__metadata__", None)
    return _Header(path=path, data_start=data_start, file_bytes=file_bytes, entries=entries)


def _locate(header: _Header, name: str, shape: tuple[int, ...]) -> _TensorSpan:
    """Validates one tensor's header entry (dtype, shape, byte range) without reading it."""
    where = f"{header.path}: tensor {name!r}"
    entry = header.entries.get(name)
    if entry is None:
        raise CheckpointError(f"{where} is missing; the checkpoint does not match config.json")
    try:
        dtype_name, got_shape = entry["dtype"], tuple(int(d) for d in entry["shape"])
        begin, end = (int(x) for x in entry["data_offsets"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: corrupt header entry {entry!r} ({e})") from None
    if dtype_name not in _DTYPES:
        raise CheckpointError(
            f"{where}: unsupported dtype {dtype_name!r}; supported: {', '.join(_DTYPES)}"
        )
    if got_shape != shape:
        raise CheckpointError(
            f"{where}: wrong shape, expected {shape} from config.json but got {got_shape}"
        )
    dtype = _DTYPES[dtype_name]
    if header.data_start + end > header.file_bytes:
        raise CheckpointError(
            f"{where}: truncated: data ends at byte {header.data_start + end} but the file has "
            f"{header.file_bytes}; re-download it"
        )
    if not 0 <= begin <= end or end - begin != _num_elements(shape) * dtype.itemsize:
        raise CheckpointError(
            f"{where}: corrupt header, data_offsets [{begin}, {end}] do not hold "
            f"{_num_elements(shape)} {dtype_name} values"
        )
    return _TensorSpan(path=header.path, dtype=dtype, offset=header.data_start + begin, shape=shape)


def _read_tensor(span: _TensorSpan, name: str) -> np.ndarray:
    """Reads one validated tensor and widens it to a C-contiguous float32 array."""
    count = _num_elements(span.shape)
    data = np.fromfile(span.path, dtype=span.dtype, count=count, offset=span.offset)
    if data.size != count:  # the file shrank after its header was checked
        raise CheckpointError(f"{span.path}: tensor {name!r}: short read; the file is truncated")
    # fromfile returns a fresh array, so the float32 case needs no second copy.
    return np.ascontiguousarray(data.reshape(span.shape).astype(np.float32, copy=False))


def _num_elements(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _synthetic_tensor(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """One tensor from its own generator, generated as float32 and scaled in place."""
    rng = np.random.Generator(np.random.PCG64([seed, zlib.crc32(name.encode())]))
    out = rng.standard_normal(shape, dtype=np.float32)
    if len(shape) == 1:  # RMSNorm weights
        out *= np.float32(_NORM_STD)
        out += np.float32(1.0)
    else:  # [out, in] linears and the [vocab, hidden] embedding: unit gain
        out *= np.float32(1.0 / np.sqrt(shape[-1]))
    return out


def fingerprint(path: str | Path, cache_dir: Path | None = None) -> str:
    """sha256 over a checkpoint's config.json and tensor files (or its one GGUF file): the
    identity of its weights.

    Hashing a 5 GB checkpoint takes seconds, so each file's digest is remembered in
    `cache_dir/fingerprints.json` under its path, size and modification time: a file
    replaced at the same path (new size or mtime) is hashed again, an unchanged one
    costs nothing the second time.
    """
    root = Path(path).resolve()
    if (file := gguf_file(root)) is not None:
        root, names = file.parent, [file.name]
    else:
        cfg = _read_config(root / CONFIG_FILE)
        tensor_files = _tensor_files(root, list(expected_shapes(cfg))).values()
        index = [INDEX_FILE] if (root / INDEX_FILE).is_file() else []
        names = [CONFIG_FILE, *index, *sorted({file.name for file in tensor_files})]
    memo_path = Path(cache_dir) / "fingerprints.json" if cache_dir else None
    memo = _read_memo(memo_path)
    digest = hashlib.sha256()
    for name in names:
        file = root / name
        stat = file.stat()
        entry = memo.get(str(file))
        if not entry or (entry["size"], entry["mtime_ns"]) != (stat.st_size, stat.st_mtime_ns):
            entry = {
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "sha256": _file_sha256(file),
            }
            memo[str(file)] = entry
        label = "model.gguf" if name.endswith(".gguf") else name  # a renamed copy is the same
        digest.update(f"{label}\0{entry['sha256']}\n".encode())
    if memo_path is not None:
        with contextlib.suppress(OSError):
            atomic_write(memo_path, json.dumps(memo, indent=1, sort_keys=True).encode())
    return digest.hexdigest()


def _read_memo(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        memo = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def _file_sha256(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def resolve_repo(repo: str) -> Path:
    """The snapshot folder of a Hugging Face repo in the local cache (HF_HOME), never
    downloading: `models--<org>--<name>/snapshots/<revision>/` as huggingface_hub keeps it."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError) as e:
        raise CheckpointError(
            f"model.repo={repo}: not in the Hugging Face cache {constants.HF_HUB_CACHE} "
            f"({type(e).__name__}); download it where there is a network "
            f"(`huggingface-cli download {repo}`), or set HF_HOME to the cache that holds it, "
            "or pass the checkpoint folder as model.path=DIR"
        ) from None


def load_tokenizer(path: str | Path) -> Any:
    """The checkpoint's `tokenizer.json` (the `tokenizers` library), or a GGUF file's own."""
    from tokenizers import Tokenizer

    if (gguf := gguf_file(path)) is not None:
        from workers.checkpoints.gguf import gguf_tokenizer

        return gguf_tokenizer(gguf)
    file = Path(path) / "tokenizer.json"
    if not file.is_file():
        raise CheckpointError(f"{file}: not found; a text prompt needs the checkpoint's tokenizer")
    return Tokenizer.from_file(str(file))
