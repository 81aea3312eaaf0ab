"""A GGUF file's own block-quantized linears, kept bit for bit (`Variant.blocks`).

`Q4_0`, `Q4_1` and `Q8_0` are llama.cpp's types with blocks of 32 along the
contraction dimension and a float16 scale `d` (and minimum `m`):

    Q4_1: w = d * q + m,      q in 0..15
    Q4_0: w = d * (q - 8),    q in 0..15    (stored: d, and m = -8 d)
    Q8_0: w = d * q,          q in -128..127 (stored: q + 128 as ui8, and m = -128 d)

That is the grouped affine format with groups of 32, float16 scales and the minimum
stored as the value at q = 0 (`Variant.offset_of` is 0), so the file's nibbles are
only repacked, its `d` and `m` kept as they are, and the host's `dequantize` gives
exactly the numbers `gguf.quants.dequantize` gives (m = -8 d and -128 d are exact in
float16, and so is the subtraction). A factored graph still subtracts the midpoint and
adds it back to the minimum in float32 (`centred_minimum`).

The block facts (size, bytes, bits) are the gguf package's own
(`workers.checkpoints.gguf.kept_block_types`), so a variant names only its type and
its `dequant`; the fields that type fixes (bits, group_size, storage, scale_dtype) are
filled in, and a variant that sets one otherwise is refused. The embedding, the output
matrix and the norms are the file's values in float32; a checkpoint that is not GGUF,
or whose linears are of another type, is refused by name
(`workers.checkpoints.source.check_blocks`).

`blocks: file` (the `gguf` variant) keeps every matrix in the type the file holds it,
each with its own group, bits and offset (`workers.checkpoints.ggml_types`: Q4_0 to
Q8_0, Q2_K to Q6_K), and the token embedding and output matrix as stored too, so a
Q4_K_M file runs with its own mix. The variant is made for one file
(`Variant.stored_as(file_blocks(path))`, in the driver;
`workers.checkpoints.source.file_blocks`), since the graph's arguments
follow the file's types.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from workers.checkpoints.gguf import AS_STORED, kept_block_types
from workers.checkpoints.tensors import StoredBlocks

if TYPE_CHECKING:
    from workers.formats.variant import Variant


def block_fields(blocks: str, where: str) -> dict[str, Any]:
    """The variant fields a block type fixes."""
    types = kept_block_types()
    if blocks == AS_STORED:
        # per tensor, its type's group, bits and offset (`Variant.tensor_blocks`); these
        # are the widest: ui8 integers, float32 scales (exact for every type)
        return {
            "bits": 8,
            "group_size": 32,
            "storage": "native",
            "scale_dtype": "float32",
            "quantize_embedding": False,
        }
    if blocks not in types:
        raise ValueError(f"{where}: blocks={blocks!r}; allowed: {[*types, AS_STORED]}")
    block = types[blocks]
    return {
        "bits": block.bits,
        "group_size": block.block_size,
        "storage": "native",
        "scale_dtype": "float16",
        "quantize_embedding": False,
    }


def stored_blocks(
    source: Any, name: str, variant: Variant
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A linear's integers, scales and minimums as the GGUF file stores them."""
    if not isinstance(source, StoredBlocks):
        raise ValueError(
            f"variant {variant.name!r} keeps a GGUF file's own {variant.blocks} blocks, but "
            f"{name} came as {type(source).__name__}: the checkpoint is not GGUF"
        )
    expected = variant.block_of(name)
    if source.kind != expected or source.offset != variant.offset_of(name):
        raise ValueError(
            f"variant {variant.name!r}: {name} is stored as {source.kind}, not {expected}"
        )
    return source.q, source.scale, source.minimum
