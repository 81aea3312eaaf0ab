"""The XLA back end: the same JAX graphs compiled by XLA, for the baseline and the reference.

This is what a user would pick instead of IREE, so every device row can carry it,
and on the CPU it computes the reference tokens every point is checked against.
The protocol is the IREE back end's (`workers.runtime.greedy_decode`): weights
resident on the device (put once per variant), the caches donated to each step so
they stay in place, the argmax in the graph, and the argument list, with the
weights already in it, built before the clock starts. Compilation is ahead of time
(`lower(...).compile()`), outside any timed region, and a call goes straight to the
loaded executable with that flat list, so no pytree of a few hundred weights is
flattened per step.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from workers.llama_config import LlamaConfig
from workers.model import LlamaGraphs
from workers.quant import VariantWeights, jax_arrays


def jax_device(driver: str) -> Any:
    """The JAX device that runs what the IREE `driver` runs."""
    import jax

    platform = (
        "cpu" if driver.startswith("local-") else "gpu" if driver in ("cuda", "hip") else None
    )
    if platform is None:
        raise ValueError(f"no XLA runtime for IREE driver {driver!r}; use runtime iree")
    try:
        return jax.devices(platform)[0]
    except RuntimeError as e:
        raise RuntimeError(f"XLA has no {platform} device here ({e}); install jax for it") from None


class XlaSession:
    """The XLA back end of `workers.runtime.greedy_decode`, for one graph pair."""

    def __init__(self, device: Any, weights: tuple[Any, ...], graphs: LlamaGraphs, bucket: int):
        import jax
        import jax.numpy as jnp

        self.device, self._weights = device, list(weights)
        i32 = jax.ShapeDtypeStruct((), jnp.int32)
        cache = jax.ShapeDtypeStruct(graphs.cache_shape, graphs.dtype)
        tokens = jax.ShapeDtypeStruct((bucket,), jnp.int32)
        start = time.perf_counter()
        with jax.default_device(device):
            prefill = jax.jit(graphs.prefill, keep_unused=True).lower(weights, tokens, i32)
            decode = jax.jit(graphs.decode, donate_argnums=(3, 4), keep_unused=True).lower(
                weights, i32, i32, cache, cache
            )
            # keep_unused: the executables take exactly the flattened arguments, in order.
            self._prefill = prefill.compile().runtime_executable()
            self._decode = decode.compile().runtime_executable()
        self.compile_s = time.perf_counter() - start

    def _put(self, value: Any) -> Any:
        import jax

        return jax.device_put(value, self.device)

    def prompt_inputs(self, padded: np.ndarray, length: int) -> tuple[Any, ...]:
        return self._put(padded), self._put(np.int32(length))

    def position(self, pos: int) -> Any:
        return self._put(np.int32(pos))

    def prefill_call(self) -> Callable[..., tuple[Any, Any]]:
        execute, args = self._prefill.execute, [*self._weights, None, None]

        def call(tokens: Any, real_len: Any) -> tuple[Any, Any]:
            args[-2], args[-1] = tokens, real_len
            token, kcache, vcache = execute(args)
            return token, (kcache, vcache)

        return call

    def decode_call(self) -> Callable[..., tuple[Any, Any]]:
        execute, args = self._decode.execute, [*self._weights, None, None, None, None]

        def call(token: Any, pos: Any, caches: tuple[Any, Any]) -> tuple[Any, Any]:
            args[-4], args[-3], args[-2], args[-1] = token, pos, *caches
            token, kcache, vcache = execute(args)
            args[-2] = args[-1] = None  # donated: the next step owns them
            return token, (kcache, vcache)

        return call

    def read_token(self, token: Any) -> int:
        return int(np.asarray(token))


class XlaRunner:
    """Holds one JAX device and one variant's weights resident on it."""

    def __init__(self, driver: str) -> None:
        self.device = jax_device(driver)
        self._key: str | None = None
        self.resident_variant: VariantWeights | None = None  # arrays are the device arrays
        self._sessions: dict[tuple, XlaSession] = {}
        self.num_uploads = 0

    def release(self) -> None:
        self._key, self.resident_variant = None, None
        self._sessions.clear()
        gc.collect()  # see IreeRunner.release: JAX's cycles reach the weights

    def ensure_weights(self, key: str, make_weights: Callable[[], VariantWeights]) -> float:
        if key == self._key:
            return 0.0
        import jax

        self.release()
        vw = make_weights()
        start = time.perf_counter()
        weights = tuple(jax.device_put(a, self.device, may_alias=True) for a in jax_arrays(vw))
        jax.block_until_ready(weights)
        # The device arrays stand in for the host ones (the XLA reference takes them as
        # they are), so no host copy outlives the upload.
        self.resident_variant = dataclasses.replace(vw, arrays=weights)
        self._key = key
        self.num_uploads += 1
        return time.perf_counter() - start

    def session(self, cfg: LlamaConfig, bucket: int, max_seq: int) -> XlaSession:
        """The compiled graph pair for this shape (compiled once per resident variant)."""
        vw = self.resident_variant
        assert vw is not None, "a session before ensure_weights"
        key = (bucket, max_seq)
        if key not in self._sessions:
            graphs = LlamaGraphs(cfg, vw.variant, max_seq, vw.layout)
            self._sessions[key] = XlaSession(
                self.device, self.resident_variant.arrays, graphs, bucket
            )
        return self._sessions[key]
