"""Weight variants: fp32, bf16, and int8/int4 dequantized inside the graph.

Every matrix reaches the graph input-major, [in, out] (the transpose of the Hugging
Face [out, in] layout), so each matmul is `x @ W` with the weight read once in
order. Given [out, in], IREE emits a transpose dispatch per weight per step, which
writes a copy of every weight each token and roughly doubles decode time. The
embedding is stored [hidden, vocab] for the same reason: it is the (tied) lm_head
of every step, while its lookup only gathers a few columns.

Quantized variants are affine and asymmetric, per group of `group_size` along the
contraction (input) dimension of each of the 7 per-layer linears:

    w[g*G + j, o] ~= q[g*G + j, o] * scale[g, o] + minimum[g, o],   q in [0, 2^bits)

The integers are packed little-end-first into uint32 lanes along the input
dimension (8 int4 or 4 int8 per lane), so the graph receives a uint32 array of
shape [in * bits / 32, out] plus two fp32 arrays of shape [in / G, out]. The
embedding and the norms stay fp32. `dequant_jnp` is what the graph runs right
before each matmul; `dequant_np` is the same arithmetic on the host, used to
check it.

A variant's weights are a flat tuple of arrays in a fixed order (`names`), which is
also the argument order of the exported graphs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from workers.llama_config import LINEARS, LlamaConfig, expected_shapes

VARIANTS: tuple[str, ...] = ("fp32", "bf16", "int8", "int4")
QUANT_BITS: dict[str, int] = {"int8": 8, "int4": 4}
DEFAULT_GROUP_SIZE = 64


@dataclasses.dataclass(frozen=True)
class VariantWeights:
    """One variant's weights as graph arguments: names and arrays in argument order."""

    variant: str
    group_size: int
    names: tuple[str, ...]
    arrays: tuple[np.ndarray, ...]
    # Relative Frobenius error ||W - dequant(quant(W))|| / ||W|| over all linears; 0 for fp32.
    quant_error: float

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; allowed: {list(VARIANTS)}")


def check_group_size(cfg: LlamaConfig, variant: str, group_size: int) -> None:
    """Every linear's input dimension must split into whole groups of whole uint32 lanes."""
    if variant not in QUANT_BITS:
        return
    per_lane = 32 // QUANT_BITS[variant]
    if group_size <= 0 or group_size % per_lane:
        raise ValueError(
            f"group_size={group_size}: must be a positive multiple of {per_lane} for {variant}"
        )
    for dim in {cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim, cfg.intermediate_size}:
        if dim % group_size:
            raise ValueError(
                f"group_size={group_size} does not divide the linear input dimension {dim}; "
                "pick a group size that divides hidden_size, intermediate_size and heads*head_dim"
            )


def is_linear(name: str) -> bool:
    return any(name.endswith(f"{linear}.weight") for linear in LINEARS)


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


ALIGNMENT = 64  # IREE's CPU buffers must start on a 64-byte boundary to be used in place


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
    variant: str,
    group_size: int = DEFAULT_GROUP_SIZE,
    *,
    consume: bool = False,
) -> VariantWeights:
    """fp32 checkpoint weights -> the variant's graph arguments (quantizing on the host).

    With `consume`, each checkpoint tensor is removed from `weights` once converted, so
    a 1B model is never held twice (checkpoint layout and graph layout) at once.
    """
    check_variant(variant)
    check_group_size(cfg, variant, group_size)
    names: list[str] = []
    arrays: list[np.ndarray] = []
    err_sq = ref_sq = 0.0
    for name in expected_shapes(cfg):
        source = weights.pop(name) if consume else weights[name]
        w = to_graph_layout(source.astype(np.float32, copy=False))
        del source
        if variant in QUANT_BITS and is_linear(name):
            bits = QUANT_BITS[variant]
            packed, scale, minimum = quantize(w, bits, group_size)
            diff = dequant_np(packed, scale, minimum, bits) - w
            err_sq += float(np.vdot(diff, diff))
            ref_sq += float(np.vdot(w, w))
            names += [f"{name}.qweight", f"{name}.scale", f"{name}.minimum"]
            arrays += [packed, scale, minimum]
        elif variant == "bf16":
            import ml_dtypes

            cast = w.astype(ml_dtypes.bfloat16)
            if is_linear(name):
                diff = cast.astype(np.float32) - w
                err_sq += float(np.vdot(diff, diff))
                ref_sq += float(np.vdot(w, w))
            names.append(name)
            arrays.append(cast)
        else:
            names.append(name)
            arrays.append(w)
        del w
    quant_error = float(np.sqrt(err_sq / ref_sq)) if ref_sq else 0.0
    return VariantWeights(variant, group_size, tuple(names), tuple(arrays), quant_error)


def host_dequantized(vw: VariantWeights) -> dict[str, np.ndarray]:
    """A variant dequantized on the host back to fp32 checkpoint tensors ([out, in])."""
    bits = QUANT_BITS.get(vw.variant)
    by_name = dict(zip(vw.names, vw.arrays, strict=True))
    out: dict[str, np.ndarray] = {}
    for name, array in by_name.items():
        if name.endswith(".qweight"):
            assert bits is not None
            base = name.removesuffix(".qweight")
            w = dequant_np(array, by_name[f"{base}.scale"], by_name[f"{base}.minimum"], bits)
            out[base] = to_graph_layout(w)
        elif not name.endswith((".scale", ".minimum")):
            out[name] = to_graph_layout(np.asarray(array, dtype=np.float32))
    return out


def variant_arg_specs(
    cfg: LlamaConfig, variant: str, group_size: int = DEFAULT_GROUP_SIZE
) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    """(name, shape, dtype) of each graph weight argument, without materializing any weight.

    Export needs only these, so a compile task never has to build the weights.
    """
    check_variant(variant)
    check_group_size(cfg, variant, group_size)
    specs: list[tuple[str, tuple[int, ...], str]] = []
    for name, hf_shape in expected_shapes(cfg).items():
        shape = hf_shape[::-1]  # input-major: see the module docstring
        if variant in QUANT_BITS and is_linear(name):
            in_dim, out_dim = shape
            lanes = in_dim * QUANT_BITS[variant] // 32
            specs += [
                (f"{name}.qweight", (lanes, out_dim), "uint32"),
                (f"{name}.scale", (in_dim // group_size, out_dim), "float32"),
                (f"{name}.minimum", (in_dim // group_size, out_dim), "float32"),
            ]
        else:
            specs.append((name, shape, "bfloat16" if variant == "bf16" else "float32"))
    return tuple(specs)
