"""The quality columns' arithmetic (workers/measure/perplexity.py) against torch and llama.cpp.

Two references nobody here wrote: torch's cross entropy and KL divergence (the plain
definitions), and a line-by-line transcription of llama.cpp's
`tools/perplexity/perplexity.cpp` (`log_softmax` with a base, the percentile lambda,
the window loop of `perplexity`), which the module claims to match.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from workers.measure.perplexity import (
    log_softmax,
    percentile,
    quality_stats,
    summarize,
    token_stats,
)
from workers.tasks import EvalSpec, eval_windows


def llama_cpp_token(
    logits: np.ndarray, base_logp: np.ndarray, tok: int
) -> tuple[float, float, bool]:
    """perplexity.cpp's `log_softmax(n_vocab, logits, base_log_prob, tok, kld)` for one
    token, base log-probs given unquantized: (nll, kld, same top)."""
    logits = logits.astype(np.float32)
    imax = int(np.argmax(logits))  # the first maximum, as its `>` loop
    max_logit = np.float32(logits[imax])
    sum_exp = sum(float(np.exp(np.float32(v - max_logit))) for v in logits)
    log_sum_exp = np.float32(math.log(sum_exp))
    nll = float(max_logit + log_sum_exp - logits[tok])
    max_logit = max_logit + log_sum_exp
    total, imax_base, p_log_base_max = 0.0, -1, 0.0
    for i, p_log_base in enumerate(base_logp.astype(np.float32)):
        if i == 0 or p_log_base > p_log_base_max:
            p_log_base_max, imax_base = p_log_base, i
        if p_log_base > -16.0:
            total += float(np.exp(p_log_base)) * float(p_log_base - logits[i] + max_logit)
    return nll, total, imax == imax_base


def llama_cpp_percentile(values: list[float], fraction: float) -> float:
    values = sorted(values)
    if fraction <= 0:
        return values[0]
    if fraction >= 1:
        return values[-1]
    p = fraction * (len(values) - 1)
    ip = int(p)
    p -= ip
    return (1 - p) * values[ip] + p * values[min(ip + 1, len(values) - 1)]


def random_logits(rng: np.random.Generator, n: int, vocab: int, scale: float) -> np.ndarray:
    return (scale * rng.standard_normal((n, vocab))).astype(np.float32)


def test_ppl_and_kld_equal_torchs_definitions():
    import torch

    F = torch.nn.functional
    rng = np.random.default_rng(0)
    base_logits = random_logits(rng, 64, 50, 1.5)  # no probability below e^-16: no floor
    logits = base_logits + random_logits(rng, 64, 50, 0.3)
    targets = rng.integers(0, 50, 64)
    base = log_softmax(base_logits).astype(np.float32)
    assert base.min() > -16
    stats = summarize([token_stats(logits, base, targets)])

    q = F.log_softmax(torch.tensor(logits, dtype=torch.float64), dim=-1)
    p = torch.tensor(base, dtype=torch.float64)
    ppl = math.exp(F.nll_loss(q, torch.tensor(targets)).item())
    kld = F.kl_div(q, p, log_target=True, reduction="none").sum(-1).numpy()
    same = (torch.tensor(logits).argmax(-1) == torch.tensor(base_logits).argmax(-1)).double()
    assert stats.ppl == pytest.approx(ppl, rel=1e-9)
    assert stats.kld_mean == pytest.approx(kld.mean(), rel=1e-6)
    assert stats.kld_p99 == pytest.approx(np.percentile(kld, 99), rel=1e-6)
    assert stats.top1_agree == pytest.approx(same.mean().item())
    assert stats.num_eval_tokens == 64


def test_token_stats_equal_llama_cpps_including_the_minus_16_floor():
    rng = np.random.default_rng(1)
    base_logits = random_logits(rng, 12, 300, 5.0)  # a peaked base: many log p below -16
    logits = base_logits + random_logits(rng, 12, 300, 1.0)
    base = log_softmax(base_logits).astype(np.float32)
    assert (base <= -16).any(), "the case must exercise llama.cpp's floor"
    targets = rng.integers(0, 300, 12)
    nll, kld, same = token_stats(logits, base, targets)
    for i in range(12):
        ref_nll, ref_kld, ref_same = llama_cpp_token(logits[i], base[i], int(targets[i]))
        assert nll[i] == pytest.approx(ref_nll, rel=1e-5, abs=1e-5)
        assert kld[i] == pytest.approx(ref_kld, rel=1e-4, abs=1e-6)
        assert bool(same[i]) == ref_same


def test_the_99th_percentile_is_llama_cpps_and_numpys():
    values = list(np.random.default_rng(2).exponential(size=765))
    ours = percentile(np.asarray(values), 0.99)
    assert ours == pytest.approx(llama_cpp_percentile(values, 0.99), rel=1e-12)
    assert ours == pytest.approx(np.percentile(values, 99), rel=1e-12)


def test_a_format_equal_to_the_base_has_zero_kld_and_full_agreement():
    rng = np.random.default_rng(3)
    logits = random_logits(rng, 20, 40, 2.0)
    stats = summarize(
        [token_stats(logits, log_softmax(logits).astype(np.float32), np.zeros(20, int))]
    )
    assert abs(stats.kld_mean) < 1e-6 and abs(stats.kld_p99) < 1e-6
    assert stats.top1_agree == 1.0


def test_top1_ties_take_the_first_maximum_as_llama_cpp():
    logits = np.array([[1.0, 3.0, 3.0, 0.0]], np.float32)
    base = log_softmax(np.array([[0.0, 5.0, 5.0, 0.0]])).astype(np.float32)
    assert token_stats(logits, base, np.array([1]))[2].tolist() == [True]
    swapped = np.array([[1.0, 3.0, 3.5, 0.0]], np.float32)
    assert token_stats(swapped, base, np.array([1]))[2].tolist() == [False]


def test_windows_are_llama_cpps_chunks():
    ids = list(range(100, 100 + 1100))
    spec = eval_windows(ids, ctx=256, max_chunks=8, bos=1)
    assert spec.num_chunks == 4, "len(tokens) // n_ctx windows at most"
    w = spec.windows()
    assert w[:, 0].tolist() == [1, 1, 1, 1], "each window starts with the BOS"
    assert w[1, 1:].tolist() == ids[257:512]
    assert spec.first == 128 and spec.num_scored == 127, "scored: [n_ctx/2, n_ctx - 1)"
    assert spec.num_eval_tokens == 4 * 127
    assert spec.targets()[0].tolist() == ids[129:256]
    assert eval_windows(ids, 256, 2, None).windows()[0].tolist() == ids[:256], "no BOS: as is"
    with pytest.raises(ValueError, match="fewer than one window"):
        eval_windows(ids[:100], 256, 3, None)


def test_quality_stats_score_the_second_half_of_each_window():
    """Through `quality_stats`, with a 'model' whose logits are a function of the position's
    token: the scored targets are the tokens after positions ctx/2 .. ctx-2 of each window."""
    vocab, ctx = 16, 8
    rng = np.random.default_rng(4)
    table = random_logits(rng, vocab, vocab, 2.0)  # logits of the token after token t
    ids = rng.integers(0, vocab, 3 * ctx).tolist()
    spec = EvalSpec(tuple(ids), ctx)

    def chunk_logits(window: np.ndarray) -> np.ndarray:
        return table[window[ctx // 2 : ctx - 1]]

    base = np.stack([log_softmax(chunk_logits(w)).astype(np.float32) for w in spec.windows()])
    stats = quality_stats(spec, chunk_logits, base)
    nll = [
        -log_softmax(table[ids[c * ctx + j]])[ids[c * ctx + j + 1]]
        for c in range(3)
        for j in range(ctx // 2, ctx - 1)
    ]
    assert stats.num_eval_tokens == len(nll) == 9
    assert stats.ppl == pytest.approx(math.exp(np.mean(nll)), rel=1e-9)
    assert abs(stats.kld_mean) < 1e-7 and stats.top1_agree == 1.0


def test_the_score_graph_is_the_scored_half_of_every_positions_logits():
    """The graph the configurations compile (`LlamaGraphs.score_logits`) gives the logits
    of positions ctx/2 .. ctx-2 of a full forward pass."""
    import jax
    import jax.numpy as jnp

    from workers.core.config import preset
    from workers.formats.variant import Variant
    from workers.formats.weights import jax_arrays
    from workers.model.graphs import LlamaGraphs
    from workers.tasks import ModelSource, score_graph

    cfg = preset("tiny")
    vw = ModelSource(name="tiny", preset="tiny").variant(Variant("fp32"))
    weights = tuple(jnp.asarray(a) for a in jax_arrays(vw))
    tokens = jnp.asarray(np.random.default_rng(5).integers(0, cfg.vocab_size, 32), jnp.int32)
    every = LlamaGraphs(cfg, vw.variant, 32).logits_all(weights, tokens)
    scored = jax.jit(score_graph(cfg, vw.variant, "in_major", 32).function())(weights, tokens)
    assert scored.shape == (15, cfg.vocab_size)
    np.testing.assert_allclose(np.asarray(scored), np.asarray(every)[16:31], rtol=1e-5, atol=1e-5)
