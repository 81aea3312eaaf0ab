"""The integers' arithmetic on the host, and their unpacking in the graph.

Quantization works on a matrix as rows of its contraction dimension, [rows, K] (the
checkpoint's own [out, in]): `quantize` makes the integers, scale and minimum of the
affine format (workers/formats/variant.py), `dequantize` inverts it (to measure the
quantization error and to check the graphs). The integers reach the graph either as
uint32 lanes (`pack_lanes`, unpacked in the graph with shifts and masks) or natively:
uint8, or uint4 two to a byte (`pack_uint4`), as IREE lays out a ui4 tensor.
"""

from __future__ import annotations

import numpy as np


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


def lane_shifts(bits: int) -> np.ndarray:
    return np.arange(32 // bits, dtype=np.uint32) * bits


def pack_lanes(q: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """Integers -> uint32 lanes along `axis`, consecutive values little-end-first."""
    moved = np.moveaxis(q, axis, -1).astype(np.uint32)
    lanes = moved.reshape(*moved.shape[:-1], -1, 32 // bits) << lane_shifts(bits)
    return np.moveaxis(np.bitwise_or.reduce(lanes, axis=-1).astype(np.uint32), -1, axis)


def unpack_lanes(packed: np.ndarray, bits: int, axis: int) -> np.ndarray:
    moved = np.moveaxis(packed, axis, -1)
    values = (moved[..., None] >> lane_shifts(bits)) & np.uint32((1 << bits) - 1)
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
