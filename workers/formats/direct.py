"""The `direct` dequant: the whole matrix dequantized in the graph, then the matmul (the
seed's formulation).

Quantized variants are affine and asymmetric: per group of `group_size` inputs along
the contraction dimension, or with one scale and minimum per output row (`group_size:
null`, "per channel"):

    w[o, g*G + j] ~= q[o, g*G + j] * scale[o, g] + minimum[o, g],   q in [0, 2^bits)

The dequant is one elementwise expression between the integer tensor and the matmul,
with the scale multiply between the integer-to-float convert and the dot: IREE 3.13
reads unsigned integers as signed when a bare convert feeds a dot (ui4 8..15 become
-8..-1), so the scale must come first. IREE 3.13 keeps a grouped dequant a dispatch of
its own that writes the whole float32 weight: it clones a widening op into a
contraction's dispatch only without a reshape between them, and groups (or uint32
lanes) need one; a per-channel dequant of native integers fuses.

This is also how every format multiplies the tensors it does not group (a per-row
embedding), and the arithmetic of a quantized embedding's gathered rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from workers.formats.base import Array, Format
from workers.formats.packing import lane_shifts

if TYPE_CHECKING:
    from workers.formats.variant import Variant


class Direct(Format):
    name = "direct"

    def expects_fused(self, variant: Variant) -> bool | None:
        return variant.group_size is None and variant.storage == "native"

    def matrix(self, w: dict[str, Array], key: str, variant: Variant, axis: int) -> Array:
        return dequant_jnp(
            w[f"{key}.qweight"], w[f"{key}.scale"], w[f"{key}.minimum"], variant, axis
        )


DIRECT = Direct()


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


def unpack_lanes_jnp(packed: Any, bits: int, axis: int) -> Any:
    """uint32 lanes -> integers along `axis`, with shifts and masks."""
    import jax.numpy as jnp

    shifts = jnp.asarray(lane_shifts(bits))
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
