"""The `integer` dequant: the factored layout multiplied as llama.cpp multiplies.

The activation is quantized to int8 per group inside the graph (scale max|x|/127),
each group's dot product runs in integers (i8 x i8 -> i32), and the weight's and the
activation's scales are applied after it. It changes the numbers (the activation's
rounding), so its quality columns say what that costs; its XLA reference runs the
same integer arithmetic, but the rounding of a value that sits on a half step can go
either way between the two compilers, so its formats ask only the first token to match.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from workers.formats.factored import Factored, _apply_scales


def integer_linear_jnp(
    x: Any, stored: Any, scale: Any, minimum: Any, offset: int, out_major: bool
) -> Any:
    """`factored_linear_jnp` with integer dot products, as llama.cpp multiplies: x is
    quantized to int8 per group (xs = max|x| / 127), each group's dot product is
    i8 x i8 -> i32, and scale * xs is applied after it. Same arguments and result.

    The weight becomes `q - offset` in int8 (ui4 - 8 in [-8, 7]; ui8 - 128 wraps to
    [-128, 127]), which keeps IREE 3.13 from reading a bare unsigned convert as signed.
    """
    import jax.numpy as jnp
    from jax import lax

    num_groups = stored.shape[1] if out_major else stored.shape[0]
    x3 = x.reshape(x.shape[0], num_groups, -1).astype(jnp.float32)  # [T, K/G, G]
    xs = jnp.max(jnp.abs(x3), axis=-1) / np.float32(127)  # [T, K/G]
    safe = jnp.where(xs > 0, xs, np.float32(1))
    xq = jnp.round(x3 / safe[..., None]).astype(jnp.int8)
    wrapped = offset - 256 if offset > 127 else offset  # 128 is -128: the same mod 256
    q = stored.astype(jnp.int8) - jnp.int8(wrapped)
    # [N, K/G, G] . [T, K/G, G] or [K/G, G, N] . [T, K/G, G] -> [K/G, N, T] in int32
    dims = (((2,), (2,)), ((1,), (1,))) if out_major else (((1,), (2,)), ((0,), (1,)))
    inner = lax.dot_general(q, xq, dims, preferred_element_type=jnp.int32).astype(jnp.float32)
    scale, minimum = scale.astype(jnp.float32), minimum.astype(jnp.float32)
    if out_major:  # [K/G, N, T] -> [T, N, K/G], times the activation's scale
        inner = inner.transpose(2, 1, 0) * xs[:, None, :]
    else:  # -> [T, K/G, N]
        inner = inner.transpose(2, 0, 1) * xs[:, :, None]
    return _apply_scales(inner, scale, minimum, x3.sum(-1), out_major)


class Integer(Factored):
    name = "integer"

    contract = staticmethod(integer_linear_jnp)


INTEGER = Integer()
