"""A weight variant as one value: how the weights are stored, what the graph computes in,
and how closely its tokens must follow its XLA reference; and the weight layout.

A variant is data (`conf/variant/<name>.yaml`), so adding a quantization format is a
YAML file, as adding a device is. Code asks this object, never the variant's name:
the graph's weight arguments (`arg_specs`), the dtype of activations and KV cache,
and the token-match rule.

Quantized variants are affine and asymmetric. The 7 per-layer linears are quantized
per group of `group_size` inputs along the contraction dimension, or with one scale
and minimum per output row (`group_size: null`, "per channel"):

    w[o, g*G + j] ~= q[o, g*G + j] * scale[o, g] + minimum[o, g],   q in [0, 2^bits)

`storage` says how the integers reach the graph: `uint32` packs them little-end-first
into uint32 lanes along the contraction dimension (8 int4 or 4 int8 per lane) and the
graph unpacks them with shifts and masks (the seed's formulation); `native` passes
them as `ui4` or `ui8` tensors, which IREE stores packed itself. `scale_dtype` is
float32 or float16. With `quantize_embedding` the token embedding (the tied lm_head)
and an untied lm_head are quantized too, one scale per vocabulary row, or per group of
`embedding_group_size` along the hidden dimension (llama.cpp's Q8_0 output matrix:
blocks of 32), in which case a factored or integer variant multiplies the lm_head the
way it multiplies its linears, and in `embedding_bits` where those differ from the
linears' (8 beside 4-bit linears: llama.cpp's Q4 files keep their output matrix Q8_0);
otherwise they and the norms stay in float32.

`dequant` names the format: how the graph multiplies the integers. Each format is a
file of its own beside this one (`direct.py`, `factored.py`, `integer.py`; `floating.py`
for a variant that quantizes nothing) with its checks, its arguments' shapes, its
host layout, its in-graph linear, its nearest llama.cpp type and whether IREE fuses
its dequant; `registry.py` lists them. `blocks` keeps a GGUF file's own linears bit for
bit instead of quantizing its float values again (`gguf_blocks.py`). `smooth_alpha`
smooths the float weights before they are quantized (SmoothQuant, `smooth.py`): the
same graph, other numbers.

The layout is a grid axis of its own: `in_major` gives the graph every matrix as
[in, out] (`x @ W`), `out_major` as the checkpoint stores it, [out, in], multiplied
with the weight as the dot's left operand (`W . x`), which IREE lowers to a matvec
without a transpose. The quantized embedding table is [vocab, hidden] in either.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json

import numpy as np

from workers.checkpoints.ggml_types import TypeLayout, type_layout
from workers.checkpoints.gguf import AS_STORED
from workers.core.config import EMBEDDING, LM_HEAD, LlamaConfig, expected_shapes, is_linear
from workers.core.kinds import Dequant, Layout, check
from workers.formats.base import Format, contraction_axis
from workers.formats.direct import DIRECT
from workers.formats.factored import Factored
from workers.formats.floating import FLOATING
from workers.formats.gguf_blocks import block_fields
from workers.formats.registry import FORMATS

DTYPES: tuple[str, ...] = ("float32", "bfloat16")
STORAGES: tuple[str, ...] = ("uint32", "native")
SCALE_DTYPES: tuple[str, ...] = ("float32", "float16")
MATCH_RULES: tuple[str, ...] = ("all", "first")
DEQUANTS: tuple[Dequant, ...] = tuple(Dequant)
LAYOUTS: tuple[Layout, ...] = tuple(Layout)


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype of a dtype name; bfloat16 and uint4 come from ml_dtypes."""
    if name in ("bfloat16", "uint4"):
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name)


_MLIR_TYPES = {
    "float32": "f32",
    "bfloat16": "bf16",
    "float16": "f16",
    "uint32": "ui32",
    "int32": "i32",
    "uint8": "ui8",
    "uint4": "ui4",
}


@dataclasses.dataclass(frozen=True)
class ArgSpec:
    """One graph argument: its name, shape and dtype name (`uint4` included)."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def tool_type(self) -> str:
        """As IREE's tools take it: `2x3xf32`, `ui4` for a scalar."""
        return "x".join([*map(str, self.shape), _MLIR_TYPES[self.dtype]])


@dataclasses.dataclass(frozen=True)
class Variant:
    """One way of holding a model's weights for the graphs (see the module docstring)."""

    name: str
    bits: int | None = None  # 4 or 8: the per-layer linears are quantized; None: floating point
    dtype: str = "float32"  # activations and KV cache; also the float weights' dtype
    # Quantization group along the contraction dimension; None: one scale per output row.
    group_size: int | None = None
    storage: str = "uint32"  # "uint32": packed lanes, unpacked in the graph; "native": ui4/ui8
    scale_dtype: str = "float32"  # dtype of the scale and minimum
    quantize_embedding: bool = False  # also the embedding and lm_head, per vocabulary row
    # With quantize_embedding: their group along hidden; None: one scale per vocabulary row.
    embedding_group_size: int | None = None
    # With quantize_embedding and native storage: the embedding's bits; None: `bits`.
    embedding_bits: int | None = None
    # Greedy tokens against the XLA reference of the same graph: "all" must match;
    # "first" only the first, for a dtype whose rounding differs between XLA and IREE.
    match: str = "all"
    # The format (workers/formats/<dequant>.py): "direct" (dequantize, then the dot),
    # "factored" (per-group contraction first, scales after) or "integer" (the same with
    # the activation quantized to int8 and an integer contraction).
    dequant: str = Dequant.DIRECT
    # A GGUF checkpoint's own blocks for the linears ("Q4_0", "Q4_1", "Q8_0"), not
    # requantized (workers/formats/gguf_blocks.py; the type fixes bits, group_size,
    # storage and scale_dtype); "file": every matrix in the type the file holds it
    # (`tensor_blocks`); None: the linears are quantized here from float values.
    blocks: str | None = None
    # With blocks: file, the file's block-quantized matrices and their types, as
    # "name:TYPE" (`stored_as`, in the driver; plain strings, which OmegaConf takes): each
    # has its type's group, bits and offset (workers/checkpoints/ggml_types.py); the
    # others stay float32.
    tensor_blocks: tuple[str, ...] = ()
    # SmoothQuant's migration strength a (workers/formats/smooth.py): the linears' input
    # channels divided by s = max|x|^a / max|W|^(1-a), calibrated on the float model and
    # folded into the norms and the v and up rows; None: not smoothed.
    smooth_alpha: float | None = None

    def __post_init__(self) -> None:
        where = f"variant {self.name!r}"
        if self.bits not in (None, 4, 8):
            raise ValueError(f"{where}: bits={self.bits}; allowed: 4, 8 or null (not quantized)")
        for field, allowed in (
            ("dtype", DTYPES),
            ("storage", STORAGES),
            ("scale_dtype", SCALE_DTYPES),
            ("match", MATCH_RULES),
            ("dequant", DEQUANTS),
        ):
            if getattr(self, field) not in allowed:
                raise ValueError(
                    f"{where}: {field}={getattr(self, field)!r}; allowed: {list(allowed)}"
                )
        if self.blocks is not None:
            self._take_block_fields(where)
        if not self.quantized:
            if self.group_size is not None or self.quantize_embedding:
                raise ValueError(
                    f"{where}: group_size and quantize_embedding need a quantized variant (bits)"
                )
            if self.embedding_group_size is not None or self.embedding_bits is not None:
                raise ValueError(
                    f"{where}: embedding_group_size and embedding_bits need quantize_embedding: "
                    "true"
                )
            if self.dequant != Dequant.DIRECT:
                raise ValueError(
                    f"{where}: dequant={self.dequant} needs a quantized variant (bits)"
                )
            if self.smooth_alpha is not None:
                raise ValueError(f"{where}: smooth_alpha needs a quantized variant (bits)")
            return
        if self.dtype != "float32":
            raise ValueError(f"{where}: a quantized variant computes in float32")
        step = self.values_per_lane if self.storage == "uint32" else 2
        if self.group_size is not None and (self.group_size <= 0 or self.group_size % step):
            raise ValueError(
                f"{where}: group_size={self.group_size} must be a positive multiple of {step} "
                "(or null: one scale per output row)"
            )
        if self.embedding_bits is not None and (
            self.embedding_bits not in (4, 8)
            or not self.quantize_embedding
            or self.storage != "native"
        ):
            raise ValueError(
                f"{where}: embedding_bits={self.embedding_bits} must be 4 or 8, with "
                "quantize_embedding: true and storage: native"
            )
        if self.embedding_group_size is not None:
            if not self.quantize_embedding:
                raise ValueError(f"{where}: embedding_group_size needs quantize_embedding: true")
            if self.embedding_group_size <= 0 or self.embedding_group_size % step:
                raise ValueError(
                    f"{where}: embedding_group_size={self.embedding_group_size} must be a "
                    f"positive multiple of {step} (or null: one scale per vocabulary row)"
                )
        if self.smooth_alpha is not None and (
            self.blocks is not None or not 0 <= self.smooth_alpha <= 1
        ):
            raise ValueError(
                f"{where}: smooth_alpha={self.smooth_alpha} must be in [0, 1], on a variant "
                "that quantizes float weights itself (blocks: null)"
            )
        self.format.check(self, where)

    def _take_block_fields(self, where: str) -> None:
        """A blocks variant's format fields are its block type's: filled in where left at
        their defaults, refused where set otherwise."""
        fields = block_fields(self.blocks, where)  # type: ignore[arg-type]
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        wrong = {
            k: getattr(self, k)
            for k, v in fields.items()
            if getattr(self, k) not in (v, defaults[k])
        }
        if wrong:
            raise ValueError(
                f"{where}: blocks={self.blocks} stores {fields} (the embedding stays the "
                f"file's values in float32); got {wrong}"
            )
        for k, v in fields.items():
            object.__setattr__(self, k, v)

    def stored_as(self, types: dict[str, str]) -> Variant:
        """A `blocks: file` variant made for one file: its matrices' types (`file_blocks`)."""
        assert self.blocks == AS_STORED, "only the gguf variant takes a file's types"
        pairs = tuple(f"{name}:{kind}" for name, kind in sorted(types.items()))
        return dataclasses.replace(self, tensor_blocks=pairs)

    @property
    def as_stored(self) -> bool:
        """Every matrix in the type its file holds it (`blocks: file`)."""
        return self.blocks == AS_STORED

    def _tensor_types(self) -> dict[str, str]:
        if not self.tensor_blocks:
            raise ValueError(
                f"variant {self.name!r} keeps a GGUF file's matrices as stored, so its "
                "arguments follow the file: make it with `stored_as(file_blocks(path))`"
            )
        return _types_of(self.tensor_blocks)

    def block_of(self, name: str) -> str | None:
        """The GGUF type a tensor is kept in as stored: the variant's `blocks`, or for
        `blocks: file` the file's own type of that tensor; None: not kept as blocks."""
        if self.as_stored:
            return self._tensor_types().get(name)
        return self.blocks if self.blocks is not None and self.quantizes(name) else None

    def _layout_of(self, name: str) -> TypeLayout | None:
        kind = self.block_of(name) if self.as_stored else None
        return type_layout(kind) if kind is not None else None

    @property
    def fingerprint(self) -> str:
        """A short hash of the whole definition: two variants that hold different numbers
        differ here, whatever their names."""
        return _fingerprint(self)

    @property
    def quantized(self) -> bool:
        return self.bits is not None

    @property
    def format(self) -> Format:
        """The variant's format (`workers.formats.registry`): its dequant's, or `float`."""
        return FORMATS[self.dequant if self.quantized else FLOATING.name]

    @property
    def llamacpp_type(self) -> str:
        """The llama.cpp tensor type nearest to the variant's linears (its format's answer;
        a GGUF file's own blocks: that very type), for the llama.cpp baseline."""
        if self.as_stored:  # the file itself: its mix of types
            return "+".join(sorted(set(self._tensor_types().values())))
        return self.blocks or self.format.llamacpp_type(self)

    def format_of(self, name: str) -> Format:
        """The format a tensor is multiplied in: the variant's for a tensor it quantizes,
        except that a tensor without groups (a per-row embedding) is `direct` unless the
        format is a per-channel one (`Format.per_channel`)."""
        if not self.quantizes(name):
            return FLOATING
        if self.group_of(name) is None and not self.format.per_channel:
            return DIRECT
        return self.format

    @property
    def factored(self) -> bool:
        """The grouped linears kept 3-D and scaled after the contraction (float or integer)."""
        return isinstance(self.format, Factored)

    @property
    def values_per_lane(self) -> int:
        assert self.bits is not None, "only quantized variants pack into lanes"
        return 32 // self.bits

    @property
    def integer_dtype(self) -> str:
        """The dtype of the linears' stored integers: uint32 lanes, or native uint4 /
        uint8."""
        return self._integer_dtype(self.bits)

    def bits_of(self, name: str) -> int | None:
        """The bits a quantized tensor is stored in: `embedding_bits` for the embedding
        and lm_head where given, else `bits`."""
        if (stored := self._layout_of(name)) is not None:
            return stored.storage_bits
        if name in (EMBEDDING, LM_HEAD) and self.embedding_bits is not None:
            return self.embedding_bits
        return self.bits

    def integer_dtype_of(self, name: str) -> str:
        """The dtype of a quantized tensor's stored integers (see `integer_dtype`)."""
        return self._integer_dtype(self.bits_of(name))

    def _integer_dtype(self, bits: int | None) -> str:
        if self.storage == "uint32":
            return "uint32"
        return "uint4" if bits == 4 else "uint8"

    def min_tokens_matched(self, num_tokens: int) -> int:
        """How many leading tokens must equal the reference for the point to be ok."""
        return num_tokens if self.match == "all" else min(1, num_tokens)

    def quantizes(self, name: str) -> bool:
        """True for the checkpoint tensors this variant quantizes."""
        if not self.quantized:
            return False
        if self.as_stored:
            return name in self._tensor_types()
        return is_linear(name) or (self.quantize_embedding and name in (EMBEDDING, LM_HEAD))

    def group_of(self, name: str) -> int | None:
        """The quantization group of a tensor: the embedding's is `embedding_group_size`
        (None: per vocabulary row); a tensor kept as stored: its type's."""
        if (stored := self._layout_of(name)) is not None:
            return stored.group
        return self.embedding_group_size if name in (EMBEDDING, LM_HEAD) else self.group_size

    def factors(self, name: str) -> bool:
        """True for the tensors the graph multiplies in factored form: grouped linears."""
        return isinstance(self.format_of(name), Factored)

    def centre_of(self, name: str) -> int:
        """What the graph subtracts from a tensor's integers (its format's `centre`)."""
        return self.format_of(name).centre(self, name)

    def offset_of(self, name: str) -> int:
        """The integer whose value the stored minimum is: the centre for a factored tensor
        quantized here (folded in on the host), else 0 (the true minimum; a GGUF block's m);
        a tensor kept as stored: its type's (`workers.checkpoints.ggml_types`)."""
        if (stored := self._layout_of(name)) is not None:
            return stored.offset
        return 0 if self.blocks is not None else self.centre_of(name)

    def check_model(self, cfg: LlamaConfig) -> None:
        """Every linear's input dimension must split into whole groups (and lanes), and
        the hidden size into the embedding's groups."""
        if not self.quantized:
            return
        step = self.group_size or (self.values_per_lane if self.storage == "uint32" else 2)
        dims = {cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim, cfg.intermediate_size}
        for dim in sorted(dims):
            if dim % step:
                raise ValueError(
                    f"variant {self.name!r}: {step} does not divide the linear input dimension "
                    f"{dim}; pick a group_size that divides hidden_size, intermediate_size and "
                    "heads*head_dim"
                )
        if self.embedding_group_size and cfg.hidden_size % self.embedding_group_size:
            raise ValueError(
                f"variant {self.name!r}: embedding_group_size={self.embedding_group_size} does "
                f"not divide hidden_size {cfg.hidden_size}"
            )

    def arg_specs(self, cfg: LlamaConfig, layout: str = Layout.IN_MAJOR) -> tuple[ArgSpec, ...]:
        """The graph's weight arguments in order, without materializing any weight.

        Export needs only these, so a compile task never has to build the weights.
        """
        check_layout(layout)
        self.check_model(cfg)
        specs: list[ArgSpec] = []
        for name, hf_shape in expected_shapes(cfg).items():
            if len(hf_shape) == 1:  # a norm or a bias: float
                specs.append(ArgSpec(name, hf_shape, "float32" if self.quantized else self.dtype))
            elif self.quantizes(name):
                specs += self._quantized_specs(name, hf_shape, layout)
            else:
                shape = hf_shape if layout == Layout.OUT_MAJOR else hf_shape[::-1]
                specs.append(ArgSpec(name, shape, "float32" if self.quantized else self.dtype))
        return tuple(specs)

    def _quantized_specs(self, name: str, hf_shape: tuple[int, ...], layout: str) -> list[ArgSpec]:
        out_dim, in_dim = hf_shape
        axis = contraction_axis(name, layout)
        shape = (out_dim, in_dim) if axis == 1 else (in_dim, out_dim)
        group = self.group_of(name)
        if group is None:
            scale_shape: tuple[int, ...] = (out_dim,)
        else:
            scale_shape = (out_dim, in_dim // group) if axis == 1 else (in_dim // group, out_dim)
        stored = list(shape)
        if self.storage == "uint32":
            stored[axis] //= self.values_per_lane
        qshape = self.format_of(name).qweight_shape(self, name, tuple(stored), axis, group)
        specs = [ArgSpec(f"{name}.qweight", qshape, self.integer_dtype_of(name))]
        if name == EMBEDDING and self.integer_dtype_of(name) == "uint4":
            # IREE cannot gather rows of a ui4 tensor on CUDA: the lookup reads the same
            # bytes as uint8 pairs ([vocab, hidden / 2]) and unpacks them in the graph.
            specs.append(ArgSpec(f"{name}.qbytes", (out_dim, in_dim // 2), "uint8"))
        specs += [
            ArgSpec(f"{name}.scale", scale_shape, self.scale_dtype),
            ArgSpec(f"{name}.minimum", scale_shape, self.scale_dtype),
        ]
        return specs


@functools.cache  # hashed once per variant: the scheduler asks on every queue push
def _fingerprint(variant: Variant) -> str:
    fields = dataclasses.asdict(variant)
    if variant.dequant == Dequant.DIRECT:  # the default: fingerprints from before the field stay
        del fields["dequant"]
    if variant.blocks is None:  # likewise
        del fields["blocks"]
    if not variant.tensor_blocks:  # likewise
        del fields["tensor_blocks"]
    for field in ("embedding_group_size", "embedding_bits", "smooth_alpha"):  # likewise
        if fields[field] is None:
            del fields[field]
    blob = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@functools.cache  # asked once per tensor per question: parsed once
def _types_of(tensor_blocks: tuple[str, ...]) -> dict[str, str]:
    return dict(pair.rsplit(":", 1) for pair in tensor_blocks)


def check_layout(layout: str) -> None:
    check(Layout, layout, "layout")
