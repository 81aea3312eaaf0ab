"""The `factored` dequant: a grouped matrix kept 3-D, each group contracted first and its
scale and minimum applied after, so IREE widens the integers inside the matvec.

The integers are [N, K/G, G] (out_major) or [K/G, G, N] (in_major), the same bytes as
the 2-D matrix:

    inner[n, g] = sum_j (q[n, g, j] - c) x[g, j]
    y[n] = sum_g scale[n, g] inner[n, g] + minimum[n, g] xsum[g],   xsum[g] = sum_j x[g, j]

`c` is half the integer range (8 for 4 bits, 128 for 8): the stored minimum is the
value at q = c (`Variant.offset_of`), which the host folds in when quantizing. The
`- c` in the graph is not cosmetic: IREE 3.13 reads a bare ui4 -> f32 convert that
feeds a contraction as signed (see `benchmarks/repro/`). IREE fuses the widening into
the matvec at O3 in both layouts; a matmul (prefill, batch > 1) keeps a dequant
dispatch of its own whatever the formulation (per channel too), so the gain is decode's.

It needs groups (a per-channel dequant already fuses) and native integers (ui4/ui8
tensors, not uint32 lanes). A tensor it does not group (a per-row embedding) is
multiplied the `direct` way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from workers.core.kinds import Layout
from workers.formats.base import Array, Format

if TYPE_CHECKING:
    from workers.formats.variant import Variant


def factored_linear_jnp(
    x: Any, stored: Any, scale: Any, minimum: Any, offset: int, out_major: bool
) -> Any:
    """x [T, K] times a grouped quantized matrix kept 3-D -> [T, N], scales after the
    per-group contraction (the `factored` dequant; see `workers/formats/variant.py`).

    `stored` is [N, K/G, G] (out_major; scale [N, K/G]) or [K/G, G, N] (in_major;
    scale [K/G, N]). The only op between the integers and the contraction is
    `q - offset` in float32: IREE clones it into the contraction's dispatch, and the
    subtraction keeps IREE 3.13 from reading the unsigned integers as signed.
    """
    import jax.numpy as jnp

    values = stored.astype(jnp.float32) - np.float32(offset)
    scale, minimum = scale.astype(jnp.float32), minimum.astype(jnp.float32)
    num_groups = stored.shape[1] if out_major else stored.shape[0]
    x3 = x.reshape(x.shape[0], num_groups, -1)  # [T, K/G, G]
    xsum = x3.sum(axis=-1)  # [T, K/G]
    # [T, N, K/G] (out_major) or [T, K/G, N]: the weight's own order, no transpose
    spec = "ngk,tgk->tng" if out_major else "gkn,tgk->tgn"
    inner = jnp.einsum(spec, values, x3)
    return _apply_scales(inner, scale, minimum, xsum, out_major)


def centred_minimum(scale: Any, minimum: Any, shift: int) -> Any:
    """The minimum as a factored graph takes it (the value at q = centre) from one stored
    as the value at q = centre - shift: minimum + shift * scale, in float32. A GGUF
    block's m is the value at q = 0 (shift = the centre); 0 leaves it as it is."""
    import jax.numpy as jnp

    if not shift:
        return minimum
    return minimum.astype(jnp.float32) + np.float32(shift) * scale.astype(jnp.float32)


def _apply_scales(inner: Any, scale: Any, minimum: Any, xsum: Any, out_major: bool) -> Any:
    """sum_g scale[n, g] inner[t, n, g] + minimum[n, g] xsum[t, g] -> [T, N], as one
    elementwise-then-reduce op: IREE makes it one small dispatch (two einsums would be two).
    `inner` and the scales are in the weight's order: [T, N, K/G] and [N, K/G], or
    [T, K/G, N] and [K/G, N]."""
    if out_major:
        return (scale[None] * inner + minimum[None] * xsum[:, None, :]).sum(axis=-1)
    return (scale[None] * inner + minimum[None] * xsum[:, :, None]).sum(axis=1)


class Factored(Format):
    name = "factored"

    def check(self, variant: Variant, where: str) -> None:
        if variant.group_size is None or variant.storage != "native":
            raise ValueError(
                f"{where}: dequant={self.name} needs group_size (a per-channel dequant already "
                "fuses) and storage=native (the integers as ui4/ui8 tensors)"
            )

    def expects_fused(self, variant: Variant) -> bool | None:
        return True

    def centre(self, variant: Variant, name: str) -> int:
        bits = variant.bits_of(name)
        assert bits is not None
        return 1 << (bits - 1)

    def qweight_shape(
        self, variant: Variant, name: str, stored: tuple[int, ...], axis: int, group: int | None
    ) -> tuple[int, ...]:
        assert group is not None
        split = list(stored)
        split[axis : axis + 1] = [stored[axis] // group, group]  # K -> [K/G, G]
        return tuple(split)

    def lay_out(
        self, variant: Variant, name: str, qweight: np.ndarray, axis: int, num_groups: int
    ) -> np.ndarray:
        rows, cols = qweight.shape  # uint4 is held packed: its last dimension is halved
        split = (rows, num_groups, -1) if axis == 1 else (num_groups, -1, cols)
        return qweight.reshape(split)

    def linear(
        self, x: Array, w: dict[str, Array], key: str, variant: Variant, layout: str
    ) -> Array:
        return self.grouped(x, w, key, variant, out_major=layout == Layout.OUT_MAJOR).astype(
            x.dtype
        )

    def grouped(
        self, x: Array, w: dict[str, Array], key: str, variant: Variant, out_major: bool
    ) -> Array:
        """x [T, K] times the grouped matrix `key` -> [T, N] in float32."""
        centre = self.centre(variant, key)
        scale = w[f"{key}.scale"]
        # a GGUF block's minimum is the value at q = 0: the centre is added back here
        minimum = centred_minimum(scale, w[f"{key}.minimum"], centre - variant.offset_of(key))
        return self.contract(x, w[f"{key}.qweight"], scale, minimum, centre, out_major)

    # the grouped product itself: x [T, K] and the stored integers -> [T, N], float32
    contract = staticmethod(factored_linear_jnp)


FACTORED = Factored()
