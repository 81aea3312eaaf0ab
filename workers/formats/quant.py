"""Making a variant's weights: layout, quantization, packing, and the in-graph dequant.

What a variant stores is described in `workers/formats/variant.py`; this module does the
arithmetic. Quantization works on a matrix as rows of its contraction dimension,
[rows, K] (the checkpoint's own [out, in]); the layout then decides how the matrix
reaches the graph: transposed to [in, out] for `in_major`, as it is for
`out_major`. `dequant_jnp` is what the graph runs right before each matmul, in the
matrix's stored orientation; `dequantize` is the same arithmetic on the host, used to
measure the quantization error and to check the graph.

The dequant is one elementwise expression between the integer tensor and the
matmul, with the scale multiply between the integer-to-float convert and the dot:
IREE 3.13 reads unsigned integers as signed when a bare convert feeds a dot
(ui4 8..15 become -8..-1), so the scale must come first.
A `factored` (or `integer`) variant's grouped linears skip `dequant_jnp`:
`factored_linear_jnp` / `integer_linear_jnp` multiply the 3-D integers per group and
apply the scales after, with the midpoint subtracted in the graph and folded into
the stored minimum on the host (`quantize(..., offset=)`); see `workers/formats/variant.py`.
A variant that keeps a GGUF file's blocks takes the integers, scales and minimums from
the file (`StoredBlocks`) instead of `quantize`; its minimum is the value at q = 0, and
the factored graph adds the centre back to it (`centred_minimum`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from workers.checkpoints.tensors import StoredBlocks
from workers.core.config import LlamaConfig, expected_shapes, is_linear
from workers.core.kinds import Layout
from workers.formats.variant import (
    EMBEDDING,
    ArgSpec,
    Variant,
    check_layout,
    contraction_axis,
    numpy_dtype,
)

ALIGNMENT = 64  # IREE's CPU buffers must start on a 64-byte boundary to be used in place


@dataclasses.dataclass(frozen=True)
class VariantWeights:
    """One variant's weights as graph arguments, in `variant.arg_specs(cfg, layout)` order.

    `uint4` arguments are held packed, two per byte (low nibble first), as IREE takes
    them; the same array may stand behind two arguments (the quantized embedding's
    ui4 and uint8 views), and counts once.
    """

    variant: Variant
    layout: str
    specs: tuple[ArgSpec, ...]
    arrays: tuple[Any, ...]  # numpy arrays, or device arrays once resident
    # Relative Frobenius error ||W - dequant(quant(W))|| / ||W|| over all linears; 0 for fp32.
    quant_error: float

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.specs)

    @property
    def nbytes(self) -> int:
        unique = {id(a): a for a in self.arrays}
        return sum(a.nbytes for a in unique.values())


# --- quantization, on [rows, K] -----------------------------------------------------------


def quantize(
    w: np.ndarray,
    bits: int,
    group: int | None,
    scale_dtype: str = "float32",
    offset: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[rows, K] float -> (integers [rows, K] uint8, scale, minimum), affine and asymmetric.

    Per group of `group` along K (scale [rows, K/G]), or per row (scale [rows]). The
    integers are rounded against the scale and minimum as stored (float16 included),
    so the dequantized weights are the closest the format can hold. With `offset`, the
    stored "minimum" is the value at q = offset (lo + offset * scale), as a factored
    graph takes it (`w = (q - offset) * scale + minimum`); 0: the group's minimum.
    """
    rows, k = w.shape
    groups = w.reshape(rows, k // group, group) if group else w.reshape(rows, 1, k)
    lo = groups.min(axis=2)
    hi = groups.max(axis=2)
    levels = (1 << bits) - 1
    scale = ((hi - lo) / levels).astype(scale_dtype)
    minimum = (lo + offset * scale.astype(np.float32)).astype(scale_dtype)
    scale32, min32 = scale.astype(np.float32), minimum.astype(np.float32)
    safe = np.where(scale32 > 0, scale32, 1.0).astype(np.float32)
    q = np.rint((groups - min32[:, :, None]) / safe[:, :, None]) + offset
    q = np.clip(q, 0, levels).astype(np.uint8).reshape(rows, k)
    if not group:
        scale, minimum = scale[:, 0], minimum[:, 0]
    return q, np.ascontiguousarray(scale), np.ascontiguousarray(minimum)


def dequantize(
    q: np.ndarray, scale: np.ndarray, minimum: np.ndarray, offset: int = 0
) -> np.ndarray:
    """The inverse of `quantize` on the host: [rows, K] float32."""
    rows, k = q.shape
    scale32, min32 = scale.astype(np.float32), minimum.astype(np.float32)
    values = q.astype(np.float32) - np.float32(offset)
    if scale.ndim == 1:
        return values * scale32[:, None] + min32[:, None]
    groups = values.reshape(rows, scale.shape[1], -1)
    return (groups * scale32[:, :, None] + min32[:, :, None]).reshape(rows, k)


def _shifts(bits: int) -> np.ndarray:
    return np.arange(32 // bits, dtype=np.uint32) * bits


def pack_lanes(q: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """Integers -> uint32 lanes along `axis`, consecutive values little-end-first."""
    moved = np.moveaxis(q, axis, -1).astype(np.uint32)
    lanes = moved.reshape(*moved.shape[:-1], -1, 32 // bits) << _shifts(bits)
    return np.moveaxis(np.bitwise_or.reduce(lanes, axis=-1).astype(np.uint32), -1, axis)


def unpack_lanes(packed: np.ndarray, bits: int, axis: int) -> np.ndarray:
    moved = np.moveaxis(packed, axis, -1)
    values = (moved[..., None] >> _shifts(bits)) & np.uint32((1 << bits) - 1)
    return np.moveaxis(values.reshape(*moved.shape[:-1], -1), -1, axis)


def pack_uint4(q: np.ndarray) -> np.ndarray:
    """Values 0..15 -> bytes, two per byte in row-major order, low nibble first: how IREE
    lays out a ui4 tensor. Shape: the last dimension halved."""
    flat = q.astype(np.uint8).reshape(*q.shape[:-1], -1, 2)
    return np.ascontiguousarray((flat[..., 0] & 0xF) | ((flat[..., 1] & 0xF) << 4))


def unpack_uint4(packed: np.ndarray) -> np.ndarray:
    """The inverse of `pack_uint4`: bytes -> values 0..15 (uint8), last dimension doubled."""
    pairs = np.stack([packed & 0xF, packed >> 4], axis=-1)
    return pairs.reshape(*packed.shape[:-1], -1)


def jax_arrays(vw: VariantWeights) -> tuple[Any, ...]:
    """The weights as JAX takes them: packed ui4 arguments unpacked to one value per byte
    (numpy's uint4 from ml_dtypes); the others, and arrays JAX already holds, as they are."""
    out = []
    for spec, array in zip(vw.specs, vw.arrays, strict=True):
        if spec.dtype == "uint4" and array.dtype == np.uint8:
            values = unpack_uint4(np.asarray(array)).reshape(spec.shape)
            out.append(values.view(numpy_dtype("uint4")))
        else:
            out.append(array)
    return tuple(out)


# --- the in-graph dequant -----------------------------------------------------------------


def dequant_jnp(stored: Any, scale: Any, minimum: Any, variant: Variant, axis: int) -> Any:
    """A quantized matrix in its stored orientation -> float32, inside the graph.

    `axis` is the contraction axis (0: [K, N], 1: [N, K]); per-row scales are [N],
    group scales have K/G in place of K.
    """
    import jax.numpy as jnp

    values = unpack_lanes_jnp(stored, variant.bits, axis) if variant.storage == "uint32" else stored
    values = values.astype(jnp.float32)
    scale, minimum = scale.astype(jnp.float32), minimum.astype(jnp.float32)
    if scale.ndim == 1:  # one scale per output row: broadcast along the contraction axis
        shape = (1, -1) if axis == 0 else (-1, 1)
        return values * scale.reshape(shape) + minimum.reshape(shape)
    k = values.shape[axis]
    groups = scale.shape[axis]
    if axis == 0:
        grouped = values.reshape(groups, k // groups, values.shape[1])
        return (grouped * scale[:, None, :] + minimum[:, None, :]).reshape(values.shape)
    grouped = values.reshape(values.shape[0], groups, k // groups)
    return (grouped * scale[:, :, None] + minimum[:, :, None]).reshape(values.shape)


def factored_linear_jnp(
    x: Any, stored: Any, scale: Any, minimum: Any, offset: int, out_major: bool
) -> Any:
    """x [T, K] times a grouped quantized matrix kept 3-D -> [T, N], scales after the
    per-group contraction (the `factored` dequant; see `workers/formats/variant.py`).

    `stored` is [N, K/G, G] (out_major; scale [N, K/G]) or [K/G, G, N] (in_major;
    scale [K/G, N]). The only op between the integers and the contraction is
    `q - offset` in float32: IREE clones it into the contraction's dispatch, and the
    subtraction keeps IREE 3.13 from reading the unsigned integers as signed.
    """
    import jax.numpy as jnp

    values = stored.astype(jnp.float32) - np.float32(offset)
    scale, minimum = scale.astype(jnp.float32), minimum.astype(jnp.float32)
    num_groups = stored.shape[1] if out_major else stored.shape[0]
    x3 = x.reshape(x.shape[0], num_groups, -1)  # [T, K/G, G]
    xsum = x3.sum(axis=-1)  # [T, K/G]
    # [T, N, K/G] (out_major) or [T, K/G, N]: the weight's own order, no transpose
    spec = "ngk,tgk->tng" if out_major else "gkn,tgk->tgn"
    inner = jnp.einsum(spec, values, x3)
    return _apply_scales(inner, scale, minimum, xsum, out_major)


def centred_minimum(scale: Any, minimum: Any, shift: int) -> Any:
    """The minimum as a factored graph takes it (the value at q = centre) from one stored
    as the value at q = centre - shift: minimum + shift * scale, in float32. A GGUF
    block's m is the value at q = 0 (shift = the centre); 0 leaves it as it is."""
    import jax.numpy as jnp

    if not shift:
        return minimum
    return minimum.astype(jnp.float32) + np.float32(shift) * scale.astype(jnp.float32)


def _apply_scales(inner: Any, scale: Any, minimum: Any, xsum: Any, out_major: bool) -> Any:
    """sum_g scale[n, g] inner[t, n, g] + minimum[n, g] xsum[t, g] -> [T, N], as one
    elementwise-then-reduce op: IREE makes it one small dispatch (two einsums would be two).
    `inner` and the scales are in the weight's order: [T, N, K/G] and [N, K/G], or
    [T, K/G, N] and [K/G, N]."""
    if out_major:
        return (scale[None] * inner + minimum[None] * xsum[:, None, :]).sum(axis=-1)
    return (scale[None] * inner + minimum[None] * xsum[:, :, None]).sum(axis=1)


def integer_linear_jnp(
    x: Any, stored: Any, scale: Any, minimum: Any, offset: int, out_major: bool
) -> Any:
    """`factored_linear_jnp` with integer dot products, as llama.cpp multiplies: x is
    quantized to int8 per group (xs = max|x| / 127), each group's dot product is
    i8 x i8 -> i32, and scale * xs is applied after it. Same arguments and result.

    The weight becomes `q - offset` in int8 (ui4 - 8 in [-8, 7]; ui8 - 128 wraps to
    [-128, 127]), which keeps IREE 3.13 from reading a bare unsigned convert as signed.
    """
    import jax.numpy as jnp
    from jax import lax

    num_groups = stored.shape[1] if out_major else stored.shape[0]
    x3 = x.reshape(x.shape[0], num_groups, -1).astype(jnp.float32)  # [T, K/G, G]
    xs = jnp.max(jnp.abs(x3), axis=-1) / np.float32(127)  # [T, K/G]
    safe = jnp.where(xs > 0, xs, np.float32(1))
    xq = jnp.round(x3 / safe[..., None]).astype(jnp.int8)
    wrapped = offset - 256 if offset > 127 else offset  # 128 is -128: the same mod 256
    q = stored.astype(jnp.int8) - jnp.int8(wrapped)
    # [N, K/G, G] . [T, K/G, G] or [K/G, G, N] . [T, K/G, G] -> [K/G, N, T] in int32
    dims = (((2,), (2,)), ((1,), (1,))) if out_major else (((1,), (2,)), ((0,), (1,)))
    inner = lax.dot_general(q, xq, dims, preferred_element_type=jnp.int32).astype(jnp.float32)
    scale, minimum = scale.astype(jnp.float32), minimum.astype(jnp.float32)
    if out_major:  # [K/G, N, T] -> [T, N, K/G], times the activation's scale
        inner = inner.transpose(2, 1, 0) * xs[:, None, :]
    else:  # -> [T, K/G, N]
        inner = inner.transpose(2, 0, 1) * xs[:, :, None]
    return _apply_scales(inner, scale, minimum, x3.sum(-1), out_major)


def unpack_lanes_jnp(packed: Any, bits: int, axis: int) -> Any:
    """uint32 lanes -> integers along `axis`, with shifts and masks."""
    import jax.numpy as jnp

    shifts = jnp.asarray(_shifts(bits))
    mask = jnp.uint32((1 << bits) - 1)
    if axis == 0:  # [K / per_lane, N] -> [K, N]
        values = (packed[:, None, :] >> shifts[None, :, None]) & mask
        return values.reshape(-1, packed.shape[1])
    values = (packed[:, :, None] >> shifts[None, None, :]) & mask  # [N, K / per_lane, per]
    return values.reshape(packed.shape[0], -1)


def unpack_uint4_jnp(packed: Any) -> Any:
    """uint8 pairs -> ui4 values as uint8 (low nibble first), last dimension doubled."""
    import jax.numpy as jnp

    pairs = jnp.stack([packed & jnp.uint8(0xF), packed >> jnp.uint8(4)], axis=-1)
    return pairs.reshape(*packed.shape[:-1], -1)


# --- building a variant's weights -----------------------------------------------------------


def aligned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a 64-byte boundary.

    numpy's own allocations are only 16-byte aligned; the CPU runtime would copy such
    an array before using it, and for a 1 GB embedding that copy is 1 GB more at peak.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def aligned(array: np.ndarray, transpose: bool = False) -> np.ndarray:
    """A 64-byte aligned C-contiguous copy of `array` (or of its transpose)."""
    view = array.T if transpose else array
    out = aligned_empty(view.shape, view.dtype)
    np.copyto(out, view)
    return out


def prepare_variant(
    weights: Any,  # name -> fp32 checkpoint tensor: a dict, or a LazyTensors
    cfg: LlamaConfig,
    variant: Variant,
    layout: str = "in_major",
    *,
    consume: bool = False,
) -> VariantWeights:
    """fp32 checkpoint weights -> the variant's graph arguments (quantizing on the host).

    With `consume`, each checkpoint tensor is removed from `weights` once converted, so
    a 1B model is never held twice (checkpoint layout and graph layout) at once.
    """
    check_layout(layout)
    specs = variant.arg_specs(cfg, layout)
    arrays: list[np.ndarray] = []
    err_sq = ref_sq = 0.0
    for name in expected_shapes(cfg):
        source = weights.pop(name) if consume else weights[name]
        if variant.blocks is not None and variant.quantizes(name):
            # the file's own blocks: exact, so they add nothing to the error
            arrays += _laid_out(*_stored_blocks(source, name, variant), name, variant, layout)
            continue
        w = source.astype(np.float32, copy=False)
        del source
        if variant.quantizes(name):
            stored, error = _quantized(w, name, variant, layout)
            arrays += stored
            if is_linear(name):  # the error of the linears only
                err_sq += error
                ref_sq += float(np.vdot(w, w))
        else:
            dtype = numpy_dtype("float32" if variant.quantized else variant.dtype)
            cast = w.astype(dtype, copy=False)
            if is_linear(name) and dtype != np.float32:
                diff = cast.astype(np.float32) - w
                err_sq += float(np.vdot(diff, diff))
                ref_sq += float(np.vdot(w, w))
            arrays.append(aligned(cast, transpose=w.ndim == 2 and layout == Layout.IN_MAJOR))
        del w
    quant_error = float(np.sqrt(err_sq / ref_sq)) if ref_sq else 0.0
    return VariantWeights(variant, layout, specs, tuple(arrays), quant_error)


def _quantized(
    w: np.ndarray, name: str, variant: Variant, layout: str
) -> tuple[list[np.ndarray], float]:
    """A checkpoint matrix [out, in] -> its stored arrays (in arg_specs order) and the
    squared error of the dequantized matrix."""
    bits = variant.bits_of(name)
    assert bits is not None
    offset = variant.offset_of(name)
    group = variant.group_of(name)
    q, scale, minimum = quantize(w, bits, group, variant.scale_dtype, offset)
    diff = dequantize(q, scale, minimum, offset) - w
    error = float(np.vdot(diff, diff))
    return _laid_out(q, scale, minimum, name, variant, layout), error


def _stored_blocks(
    source: Any, name: str, variant: Variant
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A linear's integers, scales and minimums as a GGUF file stores them."""
    if not isinstance(source, StoredBlocks):
        raise ValueError(
            f"variant {variant.name!r} keeps a GGUF file's own {variant.blocks} blocks, but "
            f"{name} came as {type(source).__name__}: the checkpoint is not GGUF"
        )
    if source.kind != variant.blocks:
        raise ValueError(
            f"variant {variant.name!r}: {name} is stored as {source.kind}, not {variant.blocks}"
        )
    return source.q, source.scale, source.minimum


def _laid_out(
    q: np.ndarray, scale: np.ndarray, minimum: np.ndarray, name: str, variant: Variant, layout: str
) -> list[np.ndarray]:
    """Integers [out, in] and their scales -> the stored arrays, in arg_specs order."""
    axis = contraction_axis(name, layout)
    if axis == 0:  # [out, in] -> [in, out]; the scales follow (per row: 1-D)
        q, scale, minimum = q.T, scale.T, minimum.T
    if variant.storage == "uint32":
        assert variant.bits is not None
        stored = [aligned(pack_lanes(q, variant.bits, axis))]
    elif variant.bits_of(name) == 4:
        packed = aligned(pack_uint4(np.ascontiguousarray(q)))
        stored = [packed, packed] if name == EMBEDDING else [packed]  # the ui4 and uint8 views
    else:
        stored = [aligned(q)]
    if variant.factors(name):  # [N, K] -> [N, K/G, G]; [K, N] -> [K/G, G, N]: same bytes
        rows, cols = stored[0].shape  # uint4 is held packed: its last dimension is halved
        num_groups = scale.shape[axis]
        split = (rows, num_groups, -1) if axis == 1 else (num_groups, -1, cols)
        stored = [stored[0].reshape(split), *stored[1:]]  # an embedding's uint8 view stays 2-D
    return [*stored, aligned(scale), aligned(minimum)]
