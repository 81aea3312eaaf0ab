"""The XLA baseline: the same JAX graphs run by `jax.jit` on the same device.

This is what a user would pick instead of IREE, so every device row can carry it.
The protocol is the IREE runner's: weights resident on the device (put once per
variant), the caches donated to each step so they stay in place, the argmax in the
graph, and each timed step bracketing the call and the 4-byte token readback.
Compilation is ahead of time (`lower(...).compile()`), outside any timed region.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from workers.bench import BenchResult
from workers.llama_config import LlamaConfig
from workers.model import LlamaGraphs
from workers.quant import VariantWeights


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


class XlaRunner:
    def __init__(self, driver: str) -> None:
        self.device = jax_device(driver)
        self._key: str | None = None
        self._weights: tuple[Any, ...] = ()
        self.resident_variant: VariantWeights | None = None  # arrays are the device arrays
        self._compiled: dict[tuple, tuple[Any, Any, float]] = {}
        self.num_uploads = 0

    def release(self) -> None:
        self._key, self._weights, self.resident_variant = None, (), None
        self._compiled.clear()
        gc.collect()  # see BenchmarkRunner.release: JAX's cycles reach the weights

    def ensure_weights(self, key: str, make_weights: Callable[[], VariantWeights]) -> float:
        if key == self._key:
            return 0.0
        import jax

        self.release()
        vw = make_weights()
        start = time.perf_counter()
        self._weights = tuple(jax.device_put(a, self.device, may_alias=True) for a in vw.arrays)
        jax.block_until_ready(self._weights)
        # The device arrays stand in for the host ones (the XLA reference takes them as
        # they are), so no host copy outlives the upload.
        self.resident_variant = dataclasses.replace(vw, arrays=self._weights)
        self._key = key
        self.num_uploads += 1
        return time.perf_counter() - start

    def _graphs(
        self, cfg: LlamaConfig, vw: VariantWeights, bucket: int, max_seq: int
    ) -> tuple[Any, Any, float]:
        """AOT-compiled (prefill, decode) for this shape; returns compile seconds too."""
        import jax
        import jax.numpy as jnp

        key = (vw.variant, vw.group_size, bucket, max_seq)
        if key not in self._compiled:
            graphs = LlamaGraphs.for_weights(cfg, vw, max_seq)
            start = time.perf_counter()
            i32 = jax.ShapeDtypeStruct((), jnp.int32)
            cache = jax.ShapeDtypeStruct(graphs.cache_shape, graphs.dtype)
            tokens = jax.ShapeDtypeStruct((bucket,), jnp.int32)
            with jax.default_device(self.device):
                prefill = jax.jit(graphs.prefill).lower(self._weights, tokens, i32).compile()
                decode = (
                    jax.jit(graphs.decode, donate_argnums=(3, 4))
                    .lower(self._weights, i32, i32, cache, cache)
                    .compile()
                )
            self._compiled[key] = (prefill, decode, time.perf_counter() - start)
        return self._compiled[key]

    def run_point(
        self,
        cfg: LlamaConfig,
        vw: VariantWeights,
        prompt: np.ndarray,
        bucket: int,
        max_seq: int,
        *,
        warmup_steps: int,
        decode_steps: int,
        prefill_runs: int,
        upload_s: float,
    ) -> tuple[BenchResult, float]:
        """Same protocol and result as `BenchmarkRunner.run_point`, plus compile seconds."""
        import jax

        prefill, decode, compile_s = self._graphs(cfg, vw, bucket, max_seq)
        length = int(prompt.shape[0])
        padded = np.zeros(bucket, np.int32)
        padded[:length] = prompt
        put = lambda x: jax.device_put(x, self.device)  # noqa: E731
        tokens_dev, real_len = put(padded), put(np.int32(length))
        bench_start = time.perf_counter()
        prefill_ms = []
        for _ in range(max(1, prefill_runs)):
            start = time.perf_counter_ns()
            token, kcache, vcache = prefill(self._weights, tokens_dev, real_len)
            first = int(token)
            prefill_ms.append((time.perf_counter_ns() - start) / 1e6)
        num_steps = warmup_steps + decode_steps
        positions = [put(np.int32(length + i)) for i in range(num_steps)]
        generated, samples = [first], []
        for i, pos in enumerate(positions):
            start = time.perf_counter_ns()
            token, kcache, vcache = decode(self._weights, token, pos, kcache, vcache)
            generated.append(int(token))
            if i >= warmup_steps:
                samples.append((time.perf_counter_ns() - start) / 1e6)
        result = BenchResult(
            prefill_ms=float(np.median(prefill_ms)),
            prefill_samples_ms=tuple(prefill_ms),
            decode_samples_ms=tuple(samples),
            prompt_ids=tuple(int(t) for t in prompt),
            tokens=tuple(generated),
            upload_s=upload_s,
            weight_bytes=vw.nbytes,
            bench_s=time.perf_counter() - bench_start,
        )
        return result, compile_s
