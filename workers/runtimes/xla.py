"""The XLA back end: the same JAX graphs compiled by XLA, for the baseline and the reference.

This is what a user would pick instead of IREE, so every device row can carry it,
and on the CPU it computes the reference tokens every point is checked against.
The protocol is the IREE back end's (`workers.runtimes.session.greedy_decode`): weights
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

from workers.formats.variant import numpy_dtype
from workers.formats.weights import VariantWeights, jax_arrays
from workers.model.export import GraphSpec


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
    """The XLA back end of `workers.runtimes.session.greedy_decode`, for one graph pair: the very
    functions IREE compiles (`GraphSpec.function`), compiled by XLA."""

    def __init__(
        self, device: Any, weights: tuple[Any, ...], prefill: GraphSpec, decode: GraphSpec
    ):
        import jax

        self.device, self._weights = device, list(weights)
        self._looped = decode.steps_per_call > 1

        def structs(spec: GraphSpec) -> list[Any]:
            dynamic = spec.args()[len(weights) :]
            return [jax.ShapeDtypeStruct(a.shape, numpy_dtype(a.dtype)) for a in dynamic]

        start = time.perf_counter()
        with jax.default_device(device):
            # keep_unused: the executables take exactly the flattened arguments, in order.
            lowered_prefill = jax.jit(prefill.function(), keep_unused=True).lower(
                weights, *structs(prefill)
            )
            lowered_decode = jax.jit(
                decode.function(), donate_argnums=(3, 4), keep_unused=True
            ).lower(weights, *structs(decode))
            self._prefill = lowered_prefill.compile().runtime_executable()
            self._decode = lowered_decode.compile().runtime_executable()
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

    def decode_call(self) -> Callable[..., tuple[Any, Any, Any]]:
        execute, args = self._decode.execute, [*self._weights, None, None, None, None]
        looped = self._looped

        def call(token: Any, pos: Any, caches: tuple[Any, Any]) -> tuple[Any, Any, Any]:
            args[-4], args[-3], args[-2], args[-1] = token, pos, *caches
            outputs = execute(args)
            args[-2] = args[-1] = None  # donated: the next step owns them
            tokens, last = (outputs[0], outputs[1]) if looped else (outputs[0], outputs[0])
            return tokens, last, (outputs[-2], outputs[-1])

        return call

    def read_tokens(self, tokens: Any) -> tuple[int, ...]:
        return tuple(int(t) for t in np.atleast_1d(np.asarray(tokens)))


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

    def session(self, prefill: GraphSpec, decode: GraphSpec) -> XlaSession:
        """The compiled graph pair (compiled once per resident variant)."""
        assert self.resident_variant is not None, "a session before ensure_weights"
        key = (prefill, decode)
        if key not in self._sessions:
            weights = self.resident_variant.arrays
            self._sessions[key] = XlaSession(self.device, weights, prefill, decode)
        return self._sessions[key]
