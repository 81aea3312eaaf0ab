"""Host buffers the IREE runtime can use in place: C-contiguous and 64-byte aligned."""

from __future__ import annotations

from typing import Any

import numpy as np

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


def aligned(array: np.ndarray, transpose: bool = False) -> np.ndarray:
    """A 64-byte aligned C-contiguous copy of `array` (or of its transpose)."""
    view = array.T if transpose else array
    out = aligned_empty(view.shape, view.dtype)
    np.copyto(out, view)
    return out
