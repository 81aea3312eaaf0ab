"""How far a variant's numbers are from fp32's: the quality columns of a quantized row.

A format can be fast and wrong. Its tokens are checked against its *own* XLA
reference (is the compiled graph right?), which says nothing about what the
quantization costs; this module answers that, teacher-forced against fp32 on the
same weights and prompt:

- `fp32_agreement`: the fraction of generated positions whose argmax equals fp32's
  when both models are fed fp32's greedy tokens (the prompt, then fp32's tokens one
  by one), so one early divergence does not decide the rest;
- `fp32_logit_error`: ||logits - fp32 logits|| / ||fp32 logits|| at the first
  generated position.

Both come from full-sequence forward passes through XLA on the CPU, off the timed
path, once per (weights, variant, layout, prompt, length), cached on disk like the
reference tokens. The fp32 side (its greedy tokens and first logits) is cached per
(weights, prompt, length), so the fp32 model is built once, not per variant.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from workers.core.config import LlamaConfig
from workers.core.files import atomic_write
from workers.core.kinds import Layout
from workers.formats.variant import Variant
from workers.formats.weights import VariantWeights, jax_arrays
from workers.measure.reference import GreedyRun, reference_tokens
from workers.model.graphs import LlamaGraphs

FP32 = Variant("fp32")


@dataclasses.dataclass(frozen=True)
class Quality:
    fp32_agreement: float
    fp32_logit_error: float


def is_fp32(variant: Variant) -> bool:
    return not variant.quantized and variant.dtype == "float32"


def quality(
    cfg: LlamaConfig,
    vw: VariantWeights,
    run: GreedyRun,
    *,
    fp32_weights: Callable[[], VariantWeights],
    weights_id: str,
    cache_dir: Path | None,
) -> Quality:
    """The variant's agreement with fp32 (see the module docstring), from the cache if there.

    `fp32_weights()` builds the fp32 weights; it is called only when fp32's side is
    not cached yet.
    """
    if is_fp32(vw.variant):
        return Quality(1.0, 0.0)
    key = _key(weights_id, run.prompt, run.num_tokens, vw.variant.fingerprint, vw.layout)
    path = cache_dir / "quality" / f"{key}.json" if cache_dir else None
    if path is not None and path.exists():
        return Quality(**json.loads(path.read_text()))
    tokens, fp32_first = fp32_side(cfg, run, fp32_weights, weights_id, cache_dir)
    logits = _logits(cfg, vw, run.prompt, tokens)
    first_error = np.linalg.norm(logits[0] - fp32_first) / np.linalg.norm(fp32_first)
    result = Quality(
        fp32_agreement=float(np.mean(logits.argmax(axis=-1) == np.asarray(tokens))),
        fp32_logit_error=float(first_error),
    )
    if path is not None:
        atomic_write(path, json.dumps(dataclasses.asdict(result)).encode())
    return result


def fp32_side(
    cfg: LlamaConfig,
    run: GreedyRun,
    fp32_weights: Callable[[], VariantWeights],
    weights_id: str,
    cache_dir: Path | None,
) -> tuple[tuple[int, ...], np.ndarray]:
    """fp32's greedy tokens (its XLA reference, as fp32 points have it) and its logits at
    the first generated position; the fp32 weights are built only when not cached."""
    key = _key(weights_id, run.prompt, run.num_tokens, FP32.fingerprint, Layout.IN_MAJOR)
    folder = cache_dir / "quality" / "fp32" if cache_dir else None
    if folder is not None and (folder / f"{key}.npy").exists():
        tokens = json.loads((folder / f"{key}.json").read_text())["tokens"]
        return tuple(tokens), np.load(folder / f"{key}.npy")
    vw = fp32_weights()
    tokens = reference_tokens(cfg, vw, run, weights_id=weights_id, cache_dir=cache_dir)
    first = _logits(cfg, vw, run.prompt, tokens[:1])[0]
    del vw
    if folder is not None:
        atomic_write(folder / f"{key}.npy", lambda f: np.save(f, first))
        atomic_write(folder / f"{key}.json", json.dumps({"tokens": list(tokens)}).encode())
    return tokens, first


def _logits(
    cfg: LlamaConfig, vw: VariantWeights, prompt: np.ndarray, tokens: tuple[int, ...]
) -> np.ndarray:
    """Logits [len(tokens), vocab] of the positions that predict `tokens`: the last prompt
    position, then each fed token but the last (teacher forcing)."""
    import jax
    import jax.numpy as jnp

    fed = np.concatenate([prompt, np.asarray(tokens[:-1], np.int32)])
    graphs = LlamaGraphs(cfg, vw.variant, len(fed), vw.layout)
    cpu = jax.devices("cpu")[0]
    weights = tuple(jax.device_put(a, cpu, may_alias=True) for a in jax_arrays(vw))
    logits = np.asarray(jax.jit(graphs.logits_all)(weights, jnp.asarray(fed, jnp.int32)))
    return logits[len(prompt) - 1 :]


def _key(weights_id: str, prompt: np.ndarray, num_tokens: int, variant: str, layout: str) -> str:
    import jax

    parts = [weights_id, hashlib.sha256(prompt.tobytes()).hexdigest(), str(num_tokens)]
    parts += [variant, layout, jax.__version__]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()
