"""Reference tokens: the same JAX graphs and weights run through XLA on the CPU.

A point's greedy tokens are compared with these. The reference is a pure function of
(weights, variant, prompt, bucket, cache capacity, number of tokens), so it is
computed once per key, cached on disk, and never runs inside a timed region. It runs
through the same loop as the measurements (`workers.runtimes.session.greedy_decode`) and
takes the resident weights as they are: on the CPU the XLA arrays alias them, so the
host does not keep a second copy.
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
from workers.core.kinds import GraphKind
from workers.formats.variant import Variant
from workers.formats.weights import VariantWeights, jax_arrays
from workers.model.export import GraphSpec
from workers.runtimes.session import greedy_decode
from workers.tasks import DecodeSteps


@dataclasses.dataclass(frozen=True, eq=False)
class GreedyRun:
    """One greedy decode that a reference or a quality check repeats on other weights."""

    prompt: np.ndarray  # [batch, length] or [length] token ids
    bucket: int  # the prefill graph's prompt bucket
    max_seq: int  # KV-cache capacity
    num_tokens: int  # the first from prefill, then decode steps


def reference_key(weights_id: str, variant: Variant, layout: str, run: GreedyRun) -> str:
    import jax

    parts = [
        weights_id,
        variant.fingerprint,
        layout,
        hashlib.sha256(run.prompt.tobytes()).hexdigest(),
        str(run.bucket),
        str(run.max_seq),
        str(run.num_tokens),
        jax.__version__,
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def reference_tokens(
    cfg: LlamaConfig,
    vw: VariantWeights | Callable[[], VariantWeights],
    run: GreedyRun,
    *,
    weights_id: str,
    cache_dir: Path | None = None,
    variant: Variant | None = None,
    layout: str | None = None,
) -> tuple[int, ...]:
    """Greedy tokens (the first from prefill, then decode steps), from the disk cache if present.

    `vw` may be a function that makes the weights (then `variant` and `layout` name
    them): it is called only when the cache lacks the tokens.
    """
    if isinstance(vw, VariantWeights):
        variant, layout = vw.variant, vw.layout
    assert variant is not None and layout is not None, "name the weights `vw()` makes"
    key = reference_key(weights_id, variant, layout, run)
    path = cache_dir / "reference" / f"{key}.json" if cache_dir else None
    if path is not None and path.exists():
        return tuple(json.loads(path.read_text())["tokens"])
    tokens = _run_xla(cfg, vw if isinstance(vw, VariantWeights) else vw(), run)
    if path is not None:
        atomic_write(path, json.dumps({"tokens": list(tokens)}).encode())
    return tokens


def _run_xla(cfg: LlamaConfig, vw: VariantWeights, run: GreedyRun) -> tuple[int, ...]:
    import jax

    from workers.runtimes.xla import XlaSession

    cpu = jax.devices("cpu")[0]
    # may_alias: aligned host arrays (the resident CPU weights) are used in place.
    weights = tuple(jax.device_put(a, cpu, may_alias=True) for a in jax_arrays(vw))
    prefill = GraphSpec(cfg, vw.variant, run.max_seq, GraphKind.PREFILL, run.bucket, vw.layout)
    decode = GraphSpec(cfg, vw.variant, run.max_seq, GraphKind.DECODE, 0, vw.layout)
    session = XlaSession(cpu, weights, prefill, decode)
    steps = DecodeSteps(warmup_steps=0, decode_steps=run.num_tokens - 1, prefill_runs=1)
    return greedy_decode(session, run.prompt, run.bucket, steps).tokens


def num_matching(tokens: tuple[int, ...], reference: tuple[int, ...]) -> int:
    """Length of the common prefix: after the first divergence the contexts differ."""
    n = 0
    for a, b in zip(tokens, reference, strict=False):
        if a != b:
            break
        n += 1
    return n
