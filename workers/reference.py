"""Reference tokens: the same JAX graphs and weights run through XLA on the CPU.

A point's greedy tokens are compared with these. The reference is a pure function of
(weights, variant, prompt, bucket, cache capacity, number of tokens), so it is
computed once per key, cached on disk, and never runs inside a timed region. The
XLA arrays are dropped when it returns, so the host does not keep a second copy of
the weights.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from workers.llama_config import LlamaConfig
from workers.model import LlamaGraphs
from workers.quant import VariantWeights


def reference_key(
    weights_id: str,
    vw: VariantWeights,
    prompt: np.ndarray,
    bucket: int,
    max_seq: int,
    num_tokens: int,
) -> str:
    import jax

    parts = [
        weights_id,
        vw.variant,
        str(vw.group_size),
        hashlib.sha256(prompt.tobytes()).hexdigest(),
        str(bucket),
        str(max_seq),
        str(num_tokens),
        jax.__version__,
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def reference_tokens(
    cfg: LlamaConfig,
    vw: VariantWeights,
    prompt: np.ndarray,
    bucket: int,
    max_seq: int,
    num_tokens: int,
    *,
    weights_id: str,
    cache_dir: Path | None = None,
) -> tuple[int, ...]:
    """Greedy tokens (the first from prefill, then decode steps), from the disk cache if present."""
    key = reference_key(weights_id, vw, prompt, bucket, max_seq, num_tokens)
    path = cache_dir / "reference" / f"{key}.json" if cache_dir else None
    if path is not None and path.exists():
        return tuple(json.loads(path.read_text())["tokens"])
    tokens = _run_xla(cfg, vw, prompt, bucket, max_seq, num_tokens)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"tokens": list(tokens)}))
        os.replace(tmp, path)
    return tokens


def _run_xla(
    cfg: LlamaConfig,
    vw: VariantWeights,
    prompt: np.ndarray,
    bucket: int,
    max_seq: int,
    num_tokens: int,
) -> tuple[int, ...]:
    import jax
    import jax.numpy as jnp

    cpu = jax.devices("cpu")[0]
    graphs = LlamaGraphs.for_weights(cfg, vw, max_seq)
    # may_alias: aligned host arrays (the resident CPU weights) are used in place, so the
    # reference costs no second copy of the weights.
    weights = tuple(jax.device_put(a, cpu, may_alias=True) for a in vw.arrays)
    prefill, decode = jax.jit(graphs.prefill), jax.jit(graphs.decode, donate_argnums=(3, 4))
    padded = np.zeros(bucket, np.int32)
    padded[: len(prompt)] = prompt
    length = len(prompt)
    token, kcache, vcache = prefill(weights, jnp.asarray(padded), jnp.int32(length))
    tokens = [int(token)]
    for i in range(num_tokens - 1):
        token, kcache, vcache = decode(weights, token, jnp.int32(length + i), kcache, vcache)
        tokens.append(int(token))
    return tuple(tokens)


def num_matching(tokens: tuple[int, ...], reference: tuple[int, ...]) -> int:
    """Length of the common prefix: after the first divergence the contexts differ."""
    n = 0
    for a, b in zip(tokens, reference, strict=False):
        if a != b:
            break
        n += 1
    return n
