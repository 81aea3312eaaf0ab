"""Weight variants: fp32, bf16, and int8/int4 dequantized inside the graph.

Quantized variants are affine and asymmetric, per group of `group_size` along the
contraction (input) dimension of each of the 7 per-layer linears:

    w[o, g*G + j] ~= q[o, g*G + j] * scale[o, g] + minimum[o, g],   q in [0, 2^bits)

The integers are packed little-end-first into uint32 lanes along the input
dimension (8 int4 or 4 int8 per lane), so the graph receives a uint32 array of
shape [out, in * bits / 32] plus two fp32 arrays of shape [out, in / G]. The
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
    """[out, in] fp32 -> (packed uint32 [out, in*bits/32], scale and minimum [out, in/G])."""
    out_dim, in_dim = w.shape
    groups = w.reshape(out_dim, in_dim // group_size, group_size)
    lo = groups.min(axis=-1)
    hi = groups.max(axis=-1)
    levels = (1 << bits) - 1
    scale = ((hi - lo) / levels).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.rint((groups - lo[..., None]) / safe[..., None])
    q = np.clip(q, 0, levels).astype(np.uint32).reshape(out_dim, in_dim)
    return pack(q, bits), scale, lo.astype(np.float32)


def pack(q: np.ndarray, bits: int) -> np.ndarray:
    per_lane = 32 // bits
    lanes = q.reshape(q.shape[0], -1, per_lane).astype(np.uint32)
    shifts = (np.arange(per_lane, dtype=np.uint32) * bits)[None, None, :]
    return np.bitwise_or.reduce(lanes << shifts, axis=-1).astype(np.uint32)


def unpack_np(packed: np.ndarray, bits: int) -> np.ndarray:
    per_lane = 32 // bits
    shifts = (np.arange(per_lane, dtype=np.uint32) * bits)[None, None, :]
    q = (packed[..., None] >> shifts) & np.uint32((1 << bits) - 1)
    return q.reshape(packed.shape[0], -1)


def dequant_np(packed: np.ndarray, scale: np.ndarray, minimum: np.ndarray, bits: int) -> np.ndarray:
    q = unpack_np(packed, bits).astype(np.float32)
    out_dim, num_groups = scale.shape
    q = q.reshape(out_dim, num_groups, -1)
    return (q * scale[..., None] + minimum[..., None]).reshape(out_dim, -1).astype(np.float32)


def dequant_jnp(packed: Any, scale: Any, minimum: Any, bits: int) -> Any:
    """The in-graph dequant: same arithmetic as `dequant_np`, in jax.numpy."""
    import jax.numpy as jnp

    per_lane = 32 // bits
    shifts = jnp.arange(per_lane, dtype=jnp.uint32) * jnp.uint32(bits)
    q = (packed[..., None] >> shifts) & jnp.uint32((1 << bits) - 1)  # [out, lanes, per_lane]
    out_dim, num_groups = scale.shape
    q = q.reshape(out_dim, num_groups, -1).astype(jnp.float32)  # [out, groups, G]
    return (q * scale[..., None] + minimum[..., None]).reshape(out_dim, -1)


def prepare_variant(
    weights: dict[str, np.ndarray],
    cfg: LlamaConfig,
    variant: str,
    group_size: int = DEFAULT_GROUP_SIZE,
) -> VariantWeights:
    """fp32 checkpoint weights -> the variant's graph arguments (quantizing on the host)."""
    check_variant(variant)
    check_group_size(cfg, variant, group_size)
    names: list[str] = []
    arrays: list[np.ndarray] = []
    err_sq = ref_sq = 0.0
    for name in expected_shapes(cfg):
        w = weights[name]
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
            arrays.append(np.ascontiguousarray(w, dtype=np.float32))
    quant_error = float(np.sqrt(err_sq / ref_sq)) if ref_sq else 0.0
    return VariantWeights(variant, group_size, tuple(names), tuple(arrays), quant_error)


def host_dequantized(vw: VariantWeights) -> dict[str, np.ndarray]:
    """A quantized variant dequantized on the host back to fp32 checkpoint tensors."""
    bits = QUANT_BITS[vw.variant]
    by_name = dict(zip(vw.names, vw.arrays, strict=True))
    out: dict[str, np.ndarray] = {}
    for name, array in by_name.items():
        if name.endswith(".qweight"):
            base = name.removesuffix(".qweight")
            out[base] = dequant_np(
                array, by_name[f"{base}.scale"], by_name[f"{base}.minimum"], bits
            )
        elif not name.endswith((".scale", ".minimum")):
            out[name] = array
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
    for name, shape in expected_shapes(cfg).items():
        if variant in QUANT_BITS and is_linear(name):
            out_dim, in_dim = shape
            lanes = in_dim * QUANT_BITS[variant] // 32
            specs += [
                (f"{name}.qweight", (out_dim, lanes), "uint32"),
                (f"{name}.scale", (out_dim, in_dim // group_size), "float32"),
                (f"{name}.minimum", (out_dim, in_dim // group_size), "float32"),
            ]
        else:
            specs.append((name, shape, "bfloat16" if variant == "bf16" else "float32"))
    return tuple(specs)
