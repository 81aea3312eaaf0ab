"""Making a variant's weights: layout, quantization, packing, and the in-graph dequant.

Every matrix reaches the graph input-major, [in, out] (the transpose of the Hugging
Face [out, in] layout), so each matmul is `x @ W` with the weight read once in
order. Given [out, in], IREE emits a transpose dispatch per weight per step, which
writes a copy of every weight each token. The embedding is stored [hidden, vocab]
for the same reason: it is the (tied) lm_head of every step, while its lookup only
gathers a few columns.

What a variant stores is described in `workers/variant.py`; this module does the
arithmetic. `dequant_jnp` is what the graph runs right before each matmul;
`dequant_np` is the same arithmetic on the host, used to measure the quantization
error and to check the graph.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from workers.llama_config import LlamaConfig, expected_shapes, is_linear
from workers.variant import Variant

ALIGNMENT = 64  # IREE's CPU buffers must start on a 64-byte boundary to be used in place


@dataclasses.dataclass(frozen=True)
class VariantWeights:
    """One variant's weights as graph arguments: arrays in `variant.arg_specs` order."""

    variant: Variant
    names: tuple[str, ...]
    arrays: tuple[Any, ...]  # numpy arrays, or device arrays once resident
    # Relative Frobenius error ||W - dequant(quant(W))|| / ||W|| over all linears; 0 for fp32.
    quant_error: float

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)


def quantize(
    w: np.ndarray, bits: int, group_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[in, out] fp32 -> (packed uint32 [in*bits/32, out], scale and minimum [in/G, out])."""
    in_dim, out_dim = w.shape
    groups = w.reshape(in_dim // group_size, group_size, out_dim)
    lo = groups.min(axis=1)
    hi = groups.max(axis=1)
    levels = (1 << bits) - 1
    scale = ((hi - lo) / levels).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.rint((groups - lo[:, None, :]) / safe[:, None, :])
    q = np.clip(q, 0, levels).astype(np.uint32).reshape(in_dim, out_dim)
    return pack(q, bits), scale, lo.astype(np.float32)


def _shifts(bits: int) -> np.ndarray:
    return (np.arange(32 // bits, dtype=np.uint32) * bits)[None, :, None]  # [1, per_lane, 1]


def pack(q: np.ndarray, bits: int) -> np.ndarray:
    """[in, out] integers -> [in*bits/32, out] uint32, consecutive inputs in one lane."""
    lanes = q.reshape(-1, 32 // bits, q.shape[1]).astype(np.uint32)
    return np.bitwise_or.reduce(lanes << _shifts(bits), axis=1).astype(np.uint32)


def unpack_np(packed: np.ndarray, bits: int) -> np.ndarray:
    q = (packed[:, None, :] >> _shifts(bits)) & np.uint32((1 << bits) - 1)
    return q.reshape(-1, packed.shape[1])


def dequant_np(packed: np.ndarray, scale: np.ndarray, minimum: np.ndarray, bits: int) -> np.ndarray:
    q = unpack_np(packed, bits).astype(np.float32)
    num_groups, out_dim = scale.shape
    q = q.reshape(num_groups, -1, out_dim)
    return (q * scale[:, None, :] + minimum[:, None, :]).reshape(-1, out_dim).astype(np.float32)


def dequant_jnp(packed: Any, scale: Any, minimum: Any, bits: int) -> Any:
    """The in-graph dequant: same arithmetic as `dequant_np`, in jax.numpy."""
    import jax.numpy as jnp

    shifts = jnp.asarray(_shifts(bits))
    q = (packed[:, None, :] >> shifts) & jnp.uint32((1 << bits) - 1)  # [lanes, per_lane, out]
    num_groups, out_dim = scale.shape
    q = q.reshape(num_groups, -1, out_dim).astype(jnp.float32)  # [groups, G, out]
    return (q * scale[:, None, :] + minimum[:, None, :]).reshape(-1, out_dim)


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


def to_graph_layout(w: np.ndarray) -> np.ndarray:
    """Checkpoint [out, in] (or [vocab, hidden]) -> the graph's input-major layout, aligned."""
    view = w.T if w.ndim == 2 else w
    out = aligned_empty(view.shape, view.dtype)
    np.copyto(out, view)
    return out


def prepare_variant(
    weights: Any,  # name -> fp32 checkpoint tensor: a dict, or a LazyTensors
    cfg: LlamaConfig,
    variant: Variant,
    *,
    consume: bool = False,
) -> VariantWeights:
    """fp32 checkpoint weights -> the variant's graph arguments (quantizing on the host).

    With `consume`, each checkpoint tensor is removed from `weights` once converted, so
    a 1B model is never held twice (checkpoint layout and graph layout) at once.
    """
    variant.check_model(cfg)
    arrays: list[np.ndarray] = []
    err_sq = ref_sq = 0.0
    for name in expected_shapes(cfg):
        source = weights.pop(name) if consume else weights[name]
        w = to_graph_layout(source.astype(np.float32, copy=False))
        del source
        if variant.is_quantized_tensor(name):
            assert variant.bits is not None and variant.group_size is not None
            packed, scale, minimum = quantize(w, variant.bits, variant.group_size)
            diff = dequant_np(packed, scale, minimum, variant.bits) - w
            arrays += [packed, scale, minimum]
        elif variant.dtype == "bfloat16":
            import ml_dtypes

            cast = w.astype(ml_dtypes.bfloat16)
            diff = cast.astype(np.float32) - w
            arrays.append(cast)
        else:
            diff = None
            arrays.append(w)
        if diff is not None and is_linear(name):  # the error of the linears only
            err_sq += float(np.vdot(diff, diff))
            ref_sq += float(np.vdot(w, w))
        del w, diff
    quant_error = float(np.sqrt(err_sq / ref_sq)) if ref_sq else 0.0
    names = tuple(spec.name for spec in variant.arg_specs(cfg))
    return VariantWeights(variant, names, tuple(arrays), quant_error)
