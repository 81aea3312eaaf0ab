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

`dequant` says how the graph applies a grouped scale. `direct` dequantizes the whole
matrix, then multiplies (one elementwise op between the integers and the dot). IREE
3.13 keeps that a dispatch of its own that writes the whole float32 weight: it clones
a widening op into a contraction's dispatch only without a reshape between them, and
groups need one. `factored` keeps the integers 3-D, [N, K/G, G] (out_major) or
[K/G, G, N] (in_major), contracts each group first and applies the scale after:

    inner[n, g] = sum_j (q[n, g, j] - c) x[g, j]
    y[n] = sum_g scale[n, g] inner[n, g] + minimum[n, g] xsum[g],   xsum[g] = sum_j x[g, j]

so the widening of the integers sits inside the matvec's dispatch. `c` is half the
integer range (8 for 4 bits, 128 for 8): the stored minimum is the value at q = c
(`offset_of`), which the host folds in when quantizing. The `- c` in the graph is
not cosmetic: IREE 3.13 reads a bare ui4 -> f32 convert that feeds a contraction as
signed (see `benchmarks/repro/`). IREE fuses the widening into the matvec at O3 in
both layouts; a matmul (prefill, batch > 1) keeps a dequant dispatch of its own
whatever the formulation (per channel too), so the gain is decode's.

`integer` stores the same 3-D integers and multiplies them as llama.cpp does: the
activation is quantized to int8 per group inside the graph (scale max|x|/127), each
group's dot product runs in integers (i8 x i8 -> i32), and the weight's and the
activation's scales are applied after it. It changes the numbers (the activation's
rounding), so its quality columns say what that costs; its XLA reference runs the
same integer arithmetic, but the rounding of a value that sits on a half step can go
either way between the two compilers, so its formats ask only the first token to match.

`blocks` keeps a GGUF checkpoint's own block-quantized linears bit for bit instead of
quantizing its float values again: `Q4_0`, `Q4_1` or `Q8_0`, llama.cpp's formats with
blocks of 32 along the contraction dimension and a float16 scale `d` (and minimum `m`):

    Q4_1: w = d * q + m,      q in 0..15
    Q4_0: w = d * (q - 8),    q in 0..15    (stored: d, and m = -8 d)
    Q8_0: w = d * q,          q in -128..127 (stored: q + 128 as ui8, and m = -128 d)

That is the grouped affine format above with groups of 32, float16 scales and the
minimum stored as the value at q = 0 (`offset_of` is 0), so the file's nibbles are
only repacked, its `d` and `m` kept as they are, and the host's `dequantize` gives
exactly the numbers `gguf.quants.dequantize` gives (m = -8 d and -128 d are exact in
float16, and so is the subtraction). A factored graph still subtracts the midpoint
(`centre_of`) and adds it back to the minimum in float32 (`centred_minimum` in
`workers/formats/quant.py`). A blocks variant spells out what its format is (bits 4 or 8,
group_size 32, storage native, scale_dtype float16), any `dequant`; the embedding,
the output matrix and the norms are the file's values in float32, and a checkpoint
that is not GGUF, or whose linears are of another type, is refused by name
(`workers.checkpoints.source.check_blocks`).

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

from workers.core.config import LlamaConfig, expected_shapes, is_linear
from workers.core.kinds import Dequant, Layout

DTYPES: tuple[str, ...] = ("float32", "bfloat16")
STORAGES: tuple[str, ...] = ("uint32", "native")
SCALE_DTYPES: tuple[str, ...] = ("float32", "float16")
MATCH_RULES: tuple[str, ...] = ("all", "first")
DEQUANTS: tuple[Dequant, ...] = tuple(Dequant)
LAYOUTS: tuple[Layout, ...] = tuple(Layout)
# GGUF block types a variant can keep as stored (`blocks`) -> their integer bits.
BLOCK_BITS: dict[str, int] = {"Q4_0": 4, "Q4_1": 4, "Q8_0": 8}
BLOCK_SIZE = 32  # values per GGUF block of these types, along the contraction dimension
EMBEDDING = "model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"


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
    # How the graph applies grouped scales: "direct" (dequantize, then the dot) or
    # "factored" (per-group contraction first, scales after) or "integer" (the same with
    # the activation quantized to int8 and an integer contraction; see the docstring).
    dequant: str = Dequant.DIRECT
    # A GGUF checkpoint's own blocks for the linears ("Q4_0", "Q4_1", "Q8_0"), not
    # requantized; None: the linears are quantized here from float values.
    blocks: str | None = None

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
            self._check_blocks(where)
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
            if self.factored:
                raise ValueError(
                    f"{where}: dequant={self.dequant} needs a quantized variant (bits)"
                )
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
        if self.factored and (self.group_size is None or self.storage != "native"):
            raise ValueError(
                f"{where}: dequant={self.dequant} needs group_size (a per-channel dequant already "
                "fuses) and storage=native (the integers as ui4/ui8 tensors)"
            )

    def _check_blocks(self, where: str) -> None:
        """A blocks variant must say what the file's format is: llama.cpp's blocks of 32."""
        if self.blocks not in BLOCK_BITS:
            raise ValueError(f"{where}: blocks={self.blocks!r}; allowed: {list(BLOCK_BITS)}")
        format_fields = {
            "bits": BLOCK_BITS[self.blocks],
            "group_size": BLOCK_SIZE,
            "storage": "native",
            "scale_dtype": "float16",
            "quantize_embedding": False,
        }
        wrong = {k: getattr(self, k) for k, v in format_fields.items() if getattr(self, k) != v}
        if wrong:
            raise ValueError(
                f"{where}: blocks={self.blocks} stores {format_fields} (the embedding stays the "
                f"file's values in float32); got {wrong}"
            )

    @property
    def fingerprint(self) -> str:
        """A short hash of the whole definition: two variants that hold different numbers
        differ here, whatever their names."""
        return _fingerprint(self)

    @property
    def quantized(self) -> bool:
        return self.bits is not None

    @property
    def factored(self) -> bool:
        """The grouped linears kept 3-D and scaled after the contraction (float or integer)."""
        return self.dequant in (Dequant.FACTORED, Dequant.INTEGER)

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
        return is_linear(name) or (self.quantize_embedding and name in (EMBEDDING, LM_HEAD))

    def group_of(self, name: str) -> int | None:
        """The quantization group of a tensor: the embedding's is `embedding_group_size`
        (None: per vocabulary row)."""
        return self.embedding_group_size if name in (EMBEDDING, LM_HEAD) else self.group_size

    def factors(self, name: str) -> bool:
        """True for the tensors the graph multiplies in factored form: grouped linears."""
        return self.factored and self.quantizes(name) and self.group_of(name) is not None

    def centre_of(self, name: str) -> int:
        """What a factored graph subtracts from the integers: half their range (q - c is
        centred on zero), for a factored tensor; else 0."""
        bits = self.bits_of(name)
        assert bits is not None or not self.factors(name)
        return 1 << (bits - 1) if self.factors(name) else 0  # type: ignore[operator]

    def offset_of(self, name: str) -> int:
        """The integer whose value the stored minimum is: the centre for a factored tensor
        quantized here (folded in on the host), else 0 (the true minimum; a GGUF block's m)."""
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

    def arg_specs(self, cfg: LlamaConfig, layout: str = "in_major") -> tuple[ArgSpec, ...]:
        """The graph's weight arguments in order, without materializing any weight.

        Export needs only these, so a compile task never has to build the weights.
        """
        check_layout(layout)
        self.check_model(cfg)
        specs: list[ArgSpec] = []
        for name, hf_shape in expected_shapes(cfg).items():
            if len(hf_shape) == 1:  # a norm
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
        if self.factors(name):  # the same bytes, K split into [K/G, G]
            assert group is not None
            k = stored[axis]
            stored[axis : axis + 1] = [k // group, group]
        specs = [ArgSpec(f"{name}.qweight", tuple(stored), self.integer_dtype_of(name))]
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
    for field in ("embedding_group_size", "embedding_bits"):  # likewise
        if fields[field] is None:
            del fields[field]
    blob = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}; allowed: {list(LAYOUTS)}")


def contraction_axis(name: str, layout: str) -> int:
    """The axis of a stored matrix that a matmul contracts: 0 for [in, out], 1 for [out, in]."""
    # the embedding and lm_head tables stay [vocab, hidden] whatever the layout
    return 1 if name in (EMBEDDING, LM_HEAD) or layout == Layout.OUT_MAJOR else 0
