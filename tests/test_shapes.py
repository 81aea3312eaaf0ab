"""Batch and context depth, on the graphs themselves: the tiny model through XLA (no IREE).

A batch of B sequences is one vmapped graph; each sequence must decode exactly as it
does alone. A decode graph that attends over a bucket of the filled slots (`filled`)
must give the tokens of the one that attends over every slot (`full`): the slots past
the position are masked either way. IREE runs the same graphs in tests/test_sweep.py;
one slow test here compiles a batched prefill graph to check its matmuls' form.
"""

from __future__ import annotations

import numpy as np
import pytest

from sweep.plan.config import ConfigError, load_config
from sweep.plan.grid import expand
from tests.helpers import variant
from workers.formats.weights import jax_arrays
from workers.model.export import GraphSpec
from workers.runtimes.session import greedy_decode, prompt_ids
from workers.tasks import DecodeSteps, ModelSource

MAX_SEQ, LENGTH, BUCKET = 64, 12, 16
STEPS = DecodeSteps(warmup_steps=1, decode_steps=6, prefill_runs=1)


@pytest.fixture(scope="module")
def weights():
    source = ModelSource(name="tiny", preset="tiny", seed=3)
    vw = source.variant(variant("int4"))
    return source.config(), vw


def decode(weights, prompts: np.ndarray, *, batch: int = 1, span: int | None = None):
    import jax

    from workers.runtimes.xla import XlaSession

    cfg, vw = weights
    cpu = jax.devices("cpu")[0]
    arrays = tuple(jax.device_put(a, cpu) for a in jax_arrays(vw))
    prefill = GraphSpec(cfg, vw.variant, MAX_SEQ, "prefill", BUCKET, batch=batch)
    step = GraphSpec(cfg, vw.variant, MAX_SEQ, "decode", batch=batch, attention_span=span)
    return greedy_decode(XlaSession(cpu, arrays, prefill, step), prompts, BUCKET, STEPS).tokens


@pytest.mark.slow  # XLA compiles of a batched and an unbatched prefill and decode
def test_each_sequence_of_a_batch_decodes_as_it_does_alone(weights):
    cfg, _ = weights
    prompts = np.stack([prompt_ids(cfg.vocab_size, LENGTH, seed=s) for s in range(4)])
    together = decode(weights, prompts, batch=4)
    n = len(together) // 4
    alone = [decode(weights, prompts[b]) for b in range(4)]
    assert [together[b * n : (b + 1) * n] for b in range(4)] == alone
    assert len({tuple(a) for a in alone}) > 1, "different prompts, different tokens"


def test_attending_over_the_filled_slots_gives_the_tokens_of_every_slot(weights):
    cfg, _ = weights
    prompt = prompt_ids(cfg.vocab_size, LENGTH, seed=7)
    span = 32  # the prompt and every generated token fit; the other 32 slots are unused
    assert decode(weights, prompt, span=span) == decode(weights, prompt)


def test_depth_and_batch_axes_make_distinct_points_with_the_spans_they_need():
    cfg, _ = load_config(
        [
            "+grid=smoke",
            "grid.batch_sizes=[1,4]",
            "grid.depths=[0,64]",
            "grid.attention=[full,filled]",
            "grid.prompt_lengths=[8]",
        ]
    )
    points = expand(cfg, "weights")
    assert len(points) == 2 * 2 * 2 * 2 * 2  # variants x flag sets x batch x depth x attention
    assert len({p.key for p in points}) == len(points)
    steps = cfg.bench.steps.num_tokens
    for p in points:
        assert p.prompt_bucket >= p.prompt_length + p.depth, "depth is prefilled with the prompt"
        if p.attention == "full":
            assert p.attention_span is None
        else:
            assert p.prompt_length + p.depth + steps <= p.attention_span <= cfg.grid.max_seq
    spans = {(p.depth, p.attention_span) for p in points if p.attention == "filled"}
    assert spans == {(0, 32), (64, 128)}, "a power-of-two bucket of what the point fills"


def test_a_depth_that_does_not_fit_the_cache_is_a_config_error():
    with pytest.raises(ConfigError, match=r"max\(grid.depths\)"):
        load_config(["+grid=smoke", "grid.depths=[0,120]"])


@pytest.mark.slow  # iree-compile
@pytest.mark.parametrize("batch", [1, 4])
def test_batched_prefill_keeps_the_matmul_form_of_one_sequence(batch: int) -> None:
    """Every out-major linear of a prefill graph is one matmul with both operands
    contiguous along the contraction (A.B^T), batched or not. Written as W . x, the
    vmapped batch made IREE 3.13 transpose the activations to [in, B x T] for a plain
    A.B matmul, 4-18x slower per FLOP on the CPU (docs/results.md, 2026-12-03)."""
    import re

    from iree.compiler import compile_str

    from workers.core.config import preset
    from workers.model.export import export_graph

    spec = GraphSpec(
        preset("tiny"), variant("fp32"), MAX_SEQ, "prefill", BUCKET, "out_major", batch=batch
    )
    flow = compile_str(
        export_graph(spec).stablehlo,
        target_backends=["llvm-cpu"],
        input_type="stablehlo",
        extra_args=["--iree-llvmcpu-target-cpu=host", "--compile-to=flow"],
    ).decode()
    matmuls = re.findall(r"linalg\.matmul(.*?)ins\((.*?)\) outs", flow, re.S)
    rows = [m for m in matmuls if f"x{BUCKET * batch}x" in m[1] or f"<{BUCKET * batch}x" in m[1]]
    assert len(rows) >= 4, f"the linears over the {BUCKET * batch} rows: {matmuls}"
    plain = [ins for maps, ins in rows if "affine_map" not in maps]
    assert not plain, f"A.B matmuls (activations transposed to [in, rows]): {plain}"
