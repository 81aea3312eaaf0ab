"""Floating-point weights (`fp32`, `bf16`): no integers, the checkpoint's values in the
variant's dtype, multiplied as they are."""

from __future__ import annotations

from typing import TYPE_CHECKING

from workers.formats.base import Array, Format

if TYPE_CHECKING:
    from workers.formats.variant import Variant


class Floating(Format):
    name = "float"

    def llamacpp_type(self, variant: Variant) -> str:
        return {"float32": "F32", "bfloat16": "BF16"}[variant.dtype]

    def matrix(self, w: dict[str, Array], key: str, variant: Variant, axis: int) -> Array:
        return w[key]


FLOATING = Floating()
