"""The `per_token` dequant (W8A8): int8 weights per channel times int8 activations per token.

The one 8-bit contraction IREE's CPU micro-kernels pack (data tiling's s8s8s32 tile,
`vpdpwssd` on AVX-512 VNNI) is a plain [T, K] x [K, N] product of int8s. llama.cpp's
blocks of 32 give the contraction a second reduction dimension, which data tiling never
packs; so here the weight is one int8 row per output channel (scale and minimum per
row) and the activation is quantized to int8 once per token, in the graph:

    xs[t] = max_k |x[t, k]| / 127,   xq[t, k] = round(x[t, k] / xs[t])
    y[t, n] = scale[n] xs[t] sum_k (q[n, k] - 128) xq[t, k] + minimum[n] sum_k x[t, k]

`q - 128` is the integers centred in int8 (ui8 - 128 wraps to [-128, 127]); for a
weight held as a parameter IREE computes it, and packs the result, once at load
(`workers.model.parameters`). A token's activations share one scale, coarser than
llama.cpp's one per 32 values: on SmolLM2-135M that costs about ten times Q8_0's KLD
(brief: 0.0265 against 0.0039), which the quality columns measure. The activation's
rounding is not bit-exact between XLA and IREE, so its variants ask the first token to
match (`match: first`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from workers.core.kinds import Layout
from workers.formats.base import Array, Format
from workers.formats.factored import centred_minimum

if TYPE_CHECKING:
    from workers.formats.variant import Variant


def per_token_linear_jnp(
    x: Array, stored: Array, scale: Array, minimum: Array, out_major: bool
) -> Array:
    """x [T, K] times ui8 weights [N, K] (out_major) or [K, N], per-channel scale and
    minimum [N] (the value at q = 128) -> [T, N] in float32, in int8 x int8 -> int32."""
    import jax.numpy as jnp
    from jax import lax

    # The quantized product in dispatches of its own (both barriers): fused with the norm
    # before or after it, two row reductions in one dispatch fail IREE 3.13's CPU codegen
    # under data tiling at 512 rows ("operations with large vector sizes").
    x = lax.optimization_barrier(x.astype(jnp.float32))
    xs = jnp.max(jnp.abs(x), axis=-1) / np.float32(127)  # [T]
    safe = jnp.where(xs > 0, xs, np.float32(1))
    xq = jnp.round(x / safe[:, None]).astype(jnp.int8)
    q = stored.astype(jnp.int8) - jnp.int8(-128)  # ui8 - 128, wrapped into int8
    dims = (((1,), (1,)), ((), ())) if out_major else (((1,), (0,)), ((), ()))
    inner = lax.dot_general(xq, q, dims, preferred_element_type=jnp.int32)  # [T, N]
    scale, minimum = scale.astype(jnp.float32), minimum.astype(jnp.float32)
    y = inner.astype(jnp.float32) * xs[:, None] * scale[None]
    return lax.optimization_barrier(y + minimum[None] * x.sum(-1)[:, None])


class PerToken(Format):
    name = "per_token"
    per_channel = True

    def check(self, variant: Variant, where: str) -> None:
        if (
            variant.group_size is not None
            or variant.storage != "native"
            or variant.bits != 8
            or variant.quantize_embedding
        ):
            raise ValueError(
                f"{where}: dequant={self.name} needs bits=8, group_size=null (one scale per "
                "output channel: a second reduction dimension is never packed), "
                "storage=native (the integers as a ui8 tensor) and the embedding in float "
                "(quantize_embedding=false: its output-matrix product at prompt 512 gave "
                "wrong tokens in IREE 3.13, and no speed)"
            )

    def centre(self, variant: Variant, name: str) -> int:
        return 128

    def linear(
        self, x: Array, w: dict[str, Array], key: str, variant: Variant, layout: str
    ) -> Array:
        scale = w[f"{key}.scale"]
        minimum = centred_minimum(scale, w[f"{key}.minimum"], 128 - variant.offset_of(key))
        out = per_token_linear_jnp(
            x, w[f"{key}.qweight"], scale, minimum, out_major=layout == Layout.OUT_MAJOR
        )
        return out.astype(x.dtype)


PER_TOKEN = PerToken()
