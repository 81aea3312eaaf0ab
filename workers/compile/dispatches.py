"""What a compiled graph's dispatch names say about its quantized linears.

IREE names each dispatch after its root op, its iteration space and its element
types: `matvec_like_8192x32x64_f32`, `elementwise_262144x64_i4xf32`,
`batch_matmul_2x16x2x64_f32` (the names `--compile-to=flow` prints, and the ones the
compile step collects from its flow-phase dump). A dequant that IREE fused into the
contraction leaves no trace of its own; one that it did not is an elementwise
dispatch (IREE calls it `elementwise*`, `transpose*` or `generic*`) that reads the
weight's integer type and is as large as a weight matrix: the dispatch that writes
the whole float32 weight before the matvec reads it again. The size keeps out the
small integer work every graph has (positions, the token gather).

`dequant_fused` turns that into the row's boolean: True when no such dispatch exists
(every quantized linear's dequant sits inside a matvec or matmul dispatch), False
when one does, None for a variant that quantizes nothing or a compile that kept no
names. Pure: names in, a verdict out.
"""

from __future__ import annotations

import math
import re

from workers.core.config import LlamaConfig, is_linear
from workers.formats.variant import Variant

# Root-op kinds of a standalone dequant: an elementwise op, maybe with a transpose.
ELEMENTWISE_KINDS: tuple[str, ...] = ("elementwise", "transpose", "generic")
# The element type a stored weight reaches IREE as (IREE drops the signedness: ui4 -> i4).
_WEIGHT_TYPES = {"uint4": "i4", "uint8": "i8", "uint32": "i32"}
_SHAPE_RE = re.compile(r"^\d+(x\d+)*$")
_TYPE_RE = re.compile(r"^(i|f|bf|ui|si)\d+$")


def parse_name(name: str) -> tuple[str, tuple[int, ...], tuple[str, ...]]:
    """`main_dispatch_3_elementwise_262144x64_i4xf32` -> ("elementwise", (262144, 64),
    ("i4", "f32")). The prefix up to `dispatch_<n>_` is optional; shape and types may be
    missing (a name such as `slow_memcpy`)."""
    tail = re.sub(r"^.*?dispatch_\d+_", "", name)
    parts = tail.split("_")
    kind: list[str] = []
    shape: tuple[int, ...] = ()
    types: tuple[str, ...] = ()
    for part in parts:
        if not shape and _SHAPE_RE.match(part):
            shape = tuple(int(d) for d in part.split("x"))
        elif shape and not types and all(_TYPE_RE.match(t) for t in part.split("x")):
            types = tuple(part.split("x"))
        elif not shape:
            kind.append(part)
    return "_".join(kind), shape, types


def smallest_linear(cfg: LlamaConfig, variant: Variant, layout: str) -> int:
    """Stored elements of the smallest quantized linear weight (lanes for uint32)."""
    sizes = [
        math.prod(spec.shape)
        for spec in variant.arg_specs(cfg, layout)
        if spec.name.endswith(".qweight") and is_linear(spec.name.removesuffix(".qweight"))
    ]
    return min(sizes)


def dequant_fused(
    names: tuple[str, ...] | None, variant: Variant, cfg: LlamaConfig, layout: str
) -> bool | None:
    """True when every quantized linear's dequant is inside a contraction dispatch (see
    the module docstring); None when the variant quantizes nothing or `names` is None."""
    if not variant.quantized or names is None:
        return None
    weight_type = _WEIGHT_TYPES[variant.integer_dtype]
    threshold = smallest_linear(cfg, variant, layout)
    for name in names:
        kind, shape, types = parse_name(name)
        if not kind.startswith(ELEMENTWISE_KINDS) or weight_type not in types:
            continue
        if shape and math.prod(shape) >= threshold:
            return False
    return True
