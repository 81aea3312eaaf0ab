"""Quality per row, as llama.cpp's `llama-perplexity --kl-divergence` measures it.

A format is "good enough" when the model it makes still predicts text like the fp32
model does. The numbers local-inference users compare formats with are llama.cpp's,
so this module follows `tools/perplexity/perplexity.cpp` definition by definition:

- The text is tokenized once (with the tokenizer's special tokens, as llama.cpp's
  `common_tokenize(..., add_special=true)`) and cut into `num_chunks` windows of
  `ctx` tokens, `num_chunks = min(wanted, len(tokens) // ctx)`; a tokenizer that adds
  a BOS has each window's first token replaced by it. Each window is one forward pass
  from an empty cache.
- Only the second half of a window is scored (so every prediction has at least
  ctx/2 tokens of context): positions j in [ctx/2, ctx - 1), the logits of position j
  predicting token j + 1; `ctx - 1 - ctx/2` tokens per window.
- `ppl` = exp(mean over scored tokens of -log softmax(logits)[next token]).
- `kld` per token = sum_i p_i (log p_i - log q_i) over the vocabulary, p the fp32
  (base) distribution and q the format's, skipping the terms with log p_i <= -16 as
  llama.cpp does; `kld_mean` is its mean and `kld_p99` its 99th percentile with
  llama.cpp's interpolation (fraction * (n - 1), linear between neighbours: numpy's
  default "linear").
- `top1_agree` is llama.cpp's "same top p": the share of scored tokens whose argmax
  (the first maximum) equals the base's.

llama.cpp keeps the base log-probabilities quantized to 16 bits (a storage detail
that costs it ~1e-4 in each log p); here they are kept as float32, so a format
identical to fp32 gives exactly 0.

Where the numbers come from: the configuration's own compiled graph (the `score`
graph of `workers.model.export`: same variant, layout, flags and device as the timed
graphs), run by the benchmark actor after the timed phase. The base is fp32 through
XLA on the CPU (the same JAX graph and weights as every reference here), computed
once per (weights, text windows) and cached on disk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from workers.core.files import atomic_write
from workers.formats.variant import Variant
from workers.records import QualityStats
from workers.tasks import EvalSpec, score_graph

FP32_VARIANT = Variant("fp32")
LOG_P_FLOOR = -16.0  # llama.cpp leaves base log-probabilities at or below this out of the KLD
KLD_PERCENTILE = 0.99


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log softmax over the last axis, in float64 (llama.cpp sums its exponentials in double)."""
    x = np.asarray(logits, np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def token_stats(
    logits: np.ndarray, base_logp: np.ndarray, targets: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per scored token: (nll, kld, same top) for logits [n, vocab] against the base's log
    probabilities [n, vocab] (float32 as cached) and the next tokens [n]."""
    logq = log_softmax(logits)
    logp = np.asarray(base_logp, np.float64)
    rows = np.arange(len(targets))
    nll = -logq[rows, targets]
    kept = logp > LOG_P_FLOOR
    terms = np.where(kept, np.exp(logp) * (logp - logq), 0.0)
    kld = terms.sum(axis=-1)
    same = np.argmax(logits, axis=-1) == np.argmax(base_logp, axis=-1)
    return nll, kld, same


def summarize(per_chunk: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> QualityStats:
    """The row's columns from every window's `token_stats`."""
    nll, kld, same = (np.concatenate(parts) for parts in zip(*per_chunk, strict=True))
    return QualityStats(
        ppl=float(np.exp(nll.mean())),
        kld_mean=float(kld.mean()),
        kld_p99=percentile(kld, KLD_PERCENTILE),
        top1_agree=float(same.mean()),
        num_eval_tokens=int(nll.size),
    )


def percentile(values: np.ndarray, fraction: float) -> float:
    """llama.cpp's percentile of sorted values: index fraction * (n - 1), interpolated."""
    v = np.sort(np.asarray(values, np.float64))
    p = fraction * (v.size - 1)
    i = int(p)
    return float((1 - (p - i)) * v[i] + (p - i) * v[min(i + 1, v.size - 1)])


def quality_stats(
    spec: EvalSpec, chunk_logits: Callable[[np.ndarray], np.ndarray], base: np.ndarray
) -> QualityStats:
    """Runs every window through `chunk_logits` (tokens [ctx] -> logits of the scored
    positions [num_scored, vocab]) and scores it against the base log-probabilities
    [num_chunks, num_scored, vocab]."""
    windows, targets = spec.windows(), spec.targets()
    return summarize(
        token_stats(chunk_logits(window), base[i], targets[i]) for i, window in enumerate(windows)
    )


# --- the base: fp32 through XLA, cached ------------------------------------------------


def base_logprobs(
    cfg: Any,
    spec: EvalSpec,
    fp32_weights: Callable[[], Any],
    *,
    weights_id: str,
    cache_dir: Path | None,
) -> np.ndarray:
    """fp32's log-probabilities of every scored position [num_chunks, num_scored, vocab]
    (float32), from the disk cache if there; `fp32_weights()` is called only on a miss."""
    import jax

    key = hashlib.sha256(
        "\0".join([weights_id, spec.fingerprint, jax.__version__]).encode()
    ).hexdigest()
    path = cache_dir / "quality" / "kld-base" / f"{key}.npy" if cache_dir else None
    if path is not None and path.exists():
        return np.load(path, mmap_mode="r")
    vw = fp32_weights()
    score = xla_scorer(cfg, vw, spec.ctx, jax.devices("cpu")[0])
    base = np.stack([log_softmax(score(w)).astype(np.float32) for w in spec.windows()])
    del vw, score
    if path is not None:
        atomic_write(path, lambda f: np.save(f, base))
    return base


def xla_scorer(cfg: Any, vw: Any, ctx: int, device: Any) -> Callable[[np.ndarray], np.ndarray]:
    """The score graph through XLA on `device` with `vw`'s weights: a window's tokens in,
    its scored logits out."""
    import jax

    from workers.formats.weights import jax_arrays

    graph = score_graph(cfg, vw.variant, vw.layout, ctx)
    weights = tuple(jax.device_put(a, device, may_alias=True) for a in jax_arrays(vw))
    fn = jax.jit(graph.function())
    return lambda tokens: np.asarray(fn(weights, jax.device_put(tokens, device)))
