"""Each GGML block type a GGUF file may hold a matrix in, unpacked into the grouped affine
form the graphs multiply, bit for bit (the `gguf` variant: every tensor as stored).

    w[r, g*G + j] = (q[r, g*G + j] - offset) * scale[r, g] + minimum[r, g]

in float32, with q unsigned (ui4 up to 4 bits, ui8 for 5, 6 and 8). For each type the
host's `workers.formats.packing.dequantize` of that form does the same float32
operations, in the same order, as `gguf.quants.dequantize` does on the file's bytes,
so the two agree exactly (tests/test_gguf_types.py):

    type   group  bits  offset  scale, minimum               gguf.quants computes
    Q4_0    32     4      8     d, 0                          d * (q - 8)
    Q4_1    32     4      0     d, m                          d * q + m
    Q5_0    32     5     16     d, 0                          d * (q - 16)
    Q5_1    32     5      0     d, m                          d * q + m
    Q8_0    32     8    128     d, 0  (int8 kept as q + 128)  q * d
    Q4_K    32     4      0     d sc_j, -(dmin m_j)           (d sc_j) q - dmin m_j
    Q5_K    32     5      0     d sc_j, -(dmin m_j)           (d sc_j) q - dmin m_j
    Q6_K    16     6     32     d sc_g, 0                     (d sc_g) (q - 32)
    Q2_K    16     2      0     d sc_g, -(dmin m_g)           (d sc_g) q - dmin m_g
    Q3_K    16     3      4     d (sc_g - 32), 0              (d (sc_g - 32)) (q - 4)

The K-quants' products `d * sc` are float32 (`d` is float16, `sc` 4 to 8 bits: the
product is exact in float32, not in float16), so every scale and minimum here is
float32. The IQ and TQ types are not affine in this form: `unpackable` says which
types are, and the caller refuses the others by name.
Block sizes and bytes are the gguf package's (`gguf.GGML_QUANT_SIZES`); the K-quants'
6-bit scale packing is its `Q4_K.get_scale_min`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Unpacked:
    """One matrix's blocks in the grouped affine form (see the module docstring)."""

    q: np.ndarray  # [rows, K] uint8, values in 0 .. 2^bits - 1
    scale: np.ndarray  # [rows, K / group] float32
    minimum: np.ndarray  # [rows, K / group] float32
    offset: int  # subtracted from q before the scale


@dataclasses.dataclass(frozen=True)
class TypeLayout:
    """How the graph holds a type: its group along the contraction, its integers' bits
    and the q of the stored minimum."""

    group: int
    bits: int
    offset: int

    @property
    def storage_bits(self) -> int:
        """The integers' width in the graph: ui4 (up to 4 bits) or ui8."""
        return 4 if self.bits <= 4 else 8


def _f32(pairs: np.ndarray) -> np.ndarray:
    """[.., 2] little-endian float16 bytes -> [..] float32 (exact)."""
    return np.ascontiguousarray(pairs).view("<f2")[..., 0].astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """[n, 16] bytes -> [n, 32]: element j the low nibble of byte j, j + 16 its high."""
    return np.concatenate([qs & np.uint8(0xF), qs >> np.uint8(4)], axis=-1)


def _fifth_bits(qh: np.ndarray) -> np.ndarray:
    """[n, 4] bytes (a little-endian uint32) -> [n, 32] bit j, shifted to 16."""
    bits = np.unpackbits(np.ascontiguousarray(qh), axis=-1, bitorder="little")
    return bits << np.uint8(4)


def _q4_0(b: np.ndarray) -> tuple[np.ndarray, ...]:
    return _nibbles(b[:, 2:]), _f32(b[:, 0:2])[:, None], None


def _q4_1(b: np.ndarray) -> tuple[np.ndarray, ...]:
    return _nibbles(b[:, 4:]), _f32(b[:, 0:2])[:, None], _f32(b[:, 2:4])[:, None]


def _q5_0(b: np.ndarray) -> tuple[np.ndarray, ...]:
    return _nibbles(b[:, 6:]) | _fifth_bits(b[:, 2:6]), _f32(b[:, 0:2])[:, None], None


def _q5_1(b: np.ndarray) -> tuple[np.ndarray, ...]:
    q = _nibbles(b[:, 8:]) | _fifth_bits(b[:, 4:8])
    return q, _f32(b[:, 0:2])[:, None], _f32(b[:, 2:4])[:, None]


def _q8_0(b: np.ndarray) -> tuple[np.ndarray, ...]:
    return b[:, 2:] ^ np.uint8(0x80), _f32(b[:, 0:2])[:, None], None


def _k_scales(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K / Q5_K: the 8 sub-blocks' float32 scales d sc_j and minimums -(dmin m_j)."""
    from gguf.quants import Q4_K

    sc, m = Q4_K.get_scale_min(np.ascontiguousarray(b[:, 4:16]))
    scale = _f32(b[:, 0:2])[:, None] * sc.astype(np.float32)
    minimum = -(_f32(b[:, 2:4])[:, None] * m.astype(np.float32))
    return scale, minimum


def _k_nibbles(qs: np.ndarray) -> np.ndarray:
    """[n, 128] -> [n, 256]: sub-block 2i the low nibbles of qs[32 i : 32 i + 32], 2i + 1
    the high ones."""
    n = qs.shape[0]
    pairs = qs.reshape(n, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    return (pairs & np.uint8(0xF)).reshape(n, 256)


def _q4_k(b: np.ndarray) -> tuple[np.ndarray, ...]:
    scale, minimum = _k_scales(b)
    return _k_nibbles(b[:, 16:]), scale, minimum


def _q5_k(b: np.ndarray) -> tuple[np.ndarray, ...]:
    n = b.shape[0]
    scale, minimum = _k_scales(b)
    qh = b[:, 16:48].reshape(n, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
    high = ((qh & np.uint8(1)) << np.uint8(4)).reshape(n, 256)
    return _k_nibbles(b[:, 48:]) | high, scale, minimum


def _q6_k(b: np.ndarray) -> tuple[np.ndarray, ...]:
    n = b.shape[0]
    ql = b[:, :128].reshape(n, 2, 1, 64) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    ql = (ql & np.uint8(0xF)).reshape(n, 256)
    qh = b[:, 128:192].reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(
        1, 1, 4, 1
    )
    qh = (qh & np.uint8(3)).reshape(n, 256)
    sc = b[:, 192:208].view(np.int8).astype(np.float32)  # [n, 16]
    return ql | (qh << np.uint8(4)), _f32(b[:, 208:210])[:, None] * sc, None


def _q2_k(b: np.ndarray) -> tuple[np.ndarray, ...]:
    n = b.shape[0]
    sc = b[:, :16]
    shift = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    q = ((b[:, 16:80].reshape(n, 2, 1, 32) >> shift) & np.uint8(3)).reshape(n, 256)
    scale = _f32(b[:, 80:82])[:, None] * (sc & np.uint8(0xF)).astype(np.float32)
    minimum = -(_f32(b[:, 82:84])[:, None] * (sc >> np.uint8(4)).astype(np.float32))
    return q, scale, minimum


def _q3_k(b: np.ndarray) -> tuple[np.ndarray, ...]:
    """Q3_K's q is its two low bits plus 4 where the high-bit mask is set, offset 4."""
    n = b.shape[0]
    low, high = b[:, 96:104], b[:, 104:108]  # the 6-bit scales: 4 low bits, 2 high bits
    low = (low.reshape(n, 1, 8) >> np.array([0, 4], dtype=np.uint8).reshape(1, 2, 1)).reshape(n, 16)
    high = high.reshape(n, 1, 4) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 4, 1)
    sc = (low & np.uint8(0xF)) | ((high.reshape(n, 16) & np.uint8(3)) << np.uint8(4))
    sc = (sc.astype(np.int8) - np.int8(32)).astype(np.float32)
    shift = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    ql = ((b[:, 32:96].reshape(n, 2, 1, 32) >> shift) & np.uint8(3)).reshape(n, 256)
    bits = np.arange(8, dtype=np.uint8).reshape(1, 1, 8, 1)
    qh = ((b[:, :32].reshape(n, 1, 1, 32) >> bits) & np.uint8(1)).reshape(n, 256)
    return ql | (qh << np.uint8(2)), _f32(b[:, 108:110])[:, None] * sc, None


# type -> (its layout in the graph, the unpacker of [blocks, bytes] -> q, scale, minimum)
_TYPES: dict[str, tuple[TypeLayout, Callable[[np.ndarray], tuple[np.ndarray, ...]]]] = {
    "Q4_0": (TypeLayout(32, 4, 8), _q4_0),
    "Q4_1": (TypeLayout(32, 4, 0), _q4_1),
    "Q5_0": (TypeLayout(32, 5, 16), _q5_0),
    "Q5_1": (TypeLayout(32, 5, 0), _q5_1),
    "Q8_0": (TypeLayout(32, 8, 128), _q8_0),
    "Q4_K": (TypeLayout(32, 4, 0), _q4_k),
    "Q5_K": (TypeLayout(32, 5, 0), _q5_k),
    "Q6_K": (TypeLayout(16, 6, 32), _q6_k),
    "Q2_K": (TypeLayout(16, 2, 0), _q2_k),
    "Q3_K": (TypeLayout(16, 3, 4), _q3_k),
}


def unpackable() -> tuple[str, ...]:
    """The GGML types a matrix can be kept in as stored."""
    return tuple(_TYPES)


def type_layout(kind: str) -> TypeLayout:
    """The group, bits and offset the graph holds a `kind` matrix in."""
    return _TYPES[kind][0]


def unpack(kind: str, raw: np.ndarray) -> Unpacked:
    """A matrix's bytes [rows, bytes per row] of type `kind` -> its grouped affine form."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    layout, unpacker = _TYPES[kind]
    block_size, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[kind]]
    rows = raw.shape[0]
    blocks = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1, block_bytes)
    q, scale, minimum = unpacker(blocks)
    scale = np.ascontiguousarray(scale, dtype=np.float32).reshape(rows, -1)
    if minimum is None:
        minimum = np.zeros_like(scale)
    minimum = np.ascontiguousarray(minimum, dtype=np.float32).reshape(rows, -1)
    q = np.ascontiguousarray(q, dtype=np.uint8).reshape(rows, -1)
    assert q.shape[1] == scale.shape[1] * layout.group, (kind, q.shape, scale.shape)
    assert q.shape[1] % block_size == 0
    return Unpacked(q, scale, minimum, layout.offset)
