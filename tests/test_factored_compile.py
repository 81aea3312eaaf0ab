"""The factored grouped dequant through real iree-compile and a real sweep (slow).

1. One grouped int4 linear, compiled with `--compile-to=flow` at O3 (as the brief's
   probe): factored, its ui4 widening sits inside the matvec's dispatch (no
   `elementwise_*_i4*` dispatch, `dequant_fused` true); the direct grouped dequant
   of the same weight keeps a dispatch of its own. Both layouts.
2. The tiny model swept with a factored int4 format and an integer-dot int8 one whose
   output matrix is int8 blocks too (`-qe`), decode and prefill, batch 1 and 2, both
   layouts: every row ok, every token of the float format equal to its XLA reference,
   the first of the integer one (its activation's int8 rounding is not bit-exact between
   XLA and IREE; the arithmetic against the host's dequant is in tests/test_factored.py).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from tests.helpers import sweep, variant
from workers.compile.dispatches import dequant_fused, parse_name
from workers.core.config import preset
from workers.formats.direct import dequant_jnp
from workers.formats.factored import factored_linear_jnp

pytestmark = pytest.mark.slow  # real iree-compile, a real Ray cluster

N, K, G = 1024, 512, 64
FLAGS = ["--iree-llvmcpu-target-cpu=host", "--iree-opt-level=O3", "--compile-to=flow"]


def _flow_names(fn, q_shape: tuple[int, ...], s_shape: tuple[int, ...]) -> list[str]:
    """The flow dispatches IREE makes of `fn(q, scale, minimum, x)`: a linear on ui4 weights
    `q_shape`, float16 scales and minimums `s_shape`, and one float32 row `x` of K."""
    import jax
    import jax.numpy as jnp
    from iree.compiler import compile_str

    shapes = ((q_shape, jnp.uint4), (s_shape, jnp.float16), (s_shape, jnp.float16))
    args = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in (*shapes, ((1, K), jnp.float32))]
    text = jax.jit(fn).lower(*args).as_text()
    flow = compile_str(
        text, target_backends=["llvm-cpu"], input_type="stablehlo", extra_args=FLAGS
    ).decode()
    return re.findall(r"flow\.executable\.export\s+public\s+@(\S+)", flow)


@pytest.mark.parametrize("out_major", [True, False])
def test_the_factored_dequant_sits_inside_the_matvec(out_major: bool) -> None:

    v = variant("int4-fac-g64")
    q_shape, s_shape = ((N, K // G, G), (N, K // G)) if out_major else ((K // G, G, N), (K // G, N))

    def factored(q, s, m, x):
        return factored_linear_jnp(x, q, s, m, 8, out_major)

    names = _flow_names(factored, q_shape, s_shape)
    kinds = [parse_name(n) for n in names]
    assert not [n for n in names if "i4" in parse_name(n)[2]], f"a dequant of its own: {names}"
    # [N, K/G, G] out_major, [K/G, N, G] in_major: the weight read once, as ui4
    matvecs = [shape for k, shape, _ in kinds if k.startswith("matvec")]
    assert any(sorted(shape) == sorted((N, K // G, G)) for shape in matvecs), names
    assert len(names) <= 4, (
        f"the matvec plus three small ones (sum of x, scales, minimums): {names}"
    )

    # The same weight dequantized directly, then one dot: a separate i4 -> f32 dispatch.
    axis = 1 if out_major else 0
    d_shape = (N, K) if out_major else (K, N)
    sd_shape = (N, K // G) if out_major else (K // G, N)

    def direct(q, s, m, x):
        w = dequant_jnp(q, s, m, variant("int4-ui4-f16"), axis)
        return w @ x[0] if out_major else x[0] @ w

    direct_names = _flow_names(direct, d_shape, sd_shape)
    assert any("i4" in parse_name(n)[2] for n in direct_names), direct_names

    cfg = preset("tiny")  # dequant_fused's size threshold: any model's linears are larger
    layout = "out_major" if out_major else "in_major"
    # what each format says IREE does with its dequant, and what the names show
    grouped_direct = variant("int4-ui4-f16")
    assert v.format.expects_fused(v) is True and dequant_fused(tuple(names), v, cfg, layout)
    assert grouped_direct.format.expects_fused(grouped_direct) is False
    assert dequant_fused(tuple(direct_names), v, cfg, layout) is False


def test_factored_formats_match_their_reference_in_a_sweep(ray_cluster, tmp_path, shared_cache):
    """Decode, prefill and batch 2 of the factored formats (float and integer dot
    products, the latter with the tied lm_head in int8 blocks) in both layouts, at O3:
    every token equal to its XLA reference."""
    outcome, text = sweep(
        tmp_path,
        shared_cache,
        "+grid=smoke",
        "grid.variants=[int4-fac-g32,int8-idot-g32-qe]",
        "grid.layouts=[out_major,in_major]",
        "grid.batch_sizes=[1,2]",
        "~grid.flag_sets.default",
        "grid.prompt_lengths=[8]",
    )
    assert outcome.exit_code == 0, text
    rows = outcome.rows
    assert len(rows) == 2 * 2 * 2 and {r["status"] for r in rows} == {"ok"}, text
    for r in rows:
        if r["variant"] == "int4-fac-g32":
            assert r["tokens"] == r["reference_tokens"], r["point_key"]
            assert r["num_tokens_matched"] == len(r["tokens"]) > r["batch_size"]
        else:  # the int8 activation may round differently in IREE: its first token must match
            assert r["num_tokens_matched"] >= 1 and r["tokens"][0] == r["reference_tokens"][0]
        assert r["prefill_ms"] > 0 and r["dequant_fused"] is not None
        assert 0 < r["fp32_agreement"] <= 1
    decode_1 = [r for r in rows if r["batch_size"] == 1 and r["layout"] == "out_major"]
    assert all(
        r["dequant_fused"] is variant(r["variant"]).format.expects_fused(variant(r["variant"]))
        for r in decode_1
    ), [r["variant"] for r in decode_1]
    assert np.isfinite([r["decode_ms_p50"] for r in rows]).all()
