"""A variant's weights as the graphs take them, made on the host from a checkpoint.

`prepare_variant` turns float checkpoint tensors (or a GGUF file's own blocks) into
the graph arguments of `Variant.arg_specs`, in order: quantized with
`workers.formats.packing.quantize`, laid out (transposed to [in, out] for `in_major`,
as stored for `out_major`), packed for the variant's storage and reshaped by the
tensor's format (`Format.lay_out`), each array 64-byte aligned so the IREE runtime
uses it in place. `jax_arrays` is the same weights as JAX takes them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from workers.core.buffers import aligned
from workers.core.config import EMBEDDING, LlamaConfig, expected_shapes, is_linear
from workers.core.kinds import Layout
from workers.formats.base import contraction_axis
from workers.formats.gguf_blocks import stored_blocks
from workers.formats.packing import dequantize, pack_lanes, pack_uint4, quantize, unpack_uint4
from workers.formats.variant import ArgSpec, Variant, check_layout, numpy_dtype


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


# --- building a variant's weights -----------------------------------------------------------


def prepare_variant(
    weights: Any,  # name -> fp32 checkpoint tensor: a dict, or a LazyTensors
    cfg: LlamaConfig,
    variant: Variant,
    layout: str = Layout.IN_MAJOR,
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
            arrays += _laid_out(*stored_blocks(source, name, variant), name, variant, layout)
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
    fmt = variant.format_of(name)
    num_groups = scale.shape[axis] if scale.ndim == 2 else 1
    # the format's shape for the same bytes; an embedding's uint8 view stays 2-D
    stored[0] = fmt.lay_out(variant, name, stored[0], axis, num_groups)
    return [*stored, aligned(scale), aligned(minimum)]
