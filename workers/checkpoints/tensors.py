"""What every checkpoint format gives the rest of the project: named tensors made one at a
time (`LazyTensors`), and the error a checkpoint that cannot be loaded raises.

`workers.checkpoints.source` (safetensors) and `workers.checkpoints.gguf` (llama.cpp's
files) both build on this module, so neither imports the other's internals.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file (and tensor)."""


@dataclasses.dataclass(frozen=True)
class StoredBlocks:
    """A matrix as a block-quantized file stores it, in the variant's terms:
    w[r, b*B + j] = q[r, b*B + j] * scale[r, b] + minimum[r, b], in float32.

    What a GGUF checkpoint gives for a variant that keeps its blocks (`Variant.blocks`):
    the integers unpacked from the file's bytes, its float16 scales as they are, and the
    minimum as the value at q = 0 (Q4_1's own m; -8 d or -128 d where the format has none).
    """

    kind: str  # the file's block type: "Q4_0", "Q4_1", "Q8_0" (the `gguf` variant: any)
    q: np.ndarray  # [rows, K] uint8
    scale: np.ndarray  # [rows, K / B] float16 (the `gguf` variant: float32)
    minimum: np.ndarray  # [rows, K / B] float16 (the `gguf` variant: float32)
    # the q whose value `minimum` is (the `gguf` variant's Q4_0, Q5_0, Q8_0, Q6_K: their
    # zero, with minimum 0; workers/checkpoints/ggml_types.py)
    offset: int = 0


class LazyTensors:
    """Named tensors, each made only when asked for: `pop` makes one and forgets it.

    A consumer that converts tensor by tensor (`prepare_variant(..., consume=True)`)
    then holds one fp32 checkpoint tensor at a time instead of the whole model: for the
    1B model in int4, 1.7 GB of weights plus one tensor, not 4.9 GB more beside them.
    """

    def __init__(self, makers: dict[str, Any]) -> None:
        self._makers = dict(makers)

    def __getitem__(self, name: str) -> np.ndarray:
        return self._makers[name]()

    def pop(self, name: str) -> np.ndarray:
        return self._makers.pop(name)()

    def __contains__(self, name: object) -> bool:
        return name in self._makers

    def __len__(self) -> int:
        return len(self._makers)

    def __iter__(self) -> Any:
        return iter(list(self._makers))

    def keys(self) -> Any:
        return self._makers.keys()
