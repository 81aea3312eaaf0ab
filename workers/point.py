"""One benchmark worker: a device, its resident weights, and the measurement of a point.

`PointWorker` is the plain class the orchestrator wraps as a Ray actor. It builds a
variant's weights itself (from the checkpoint or the seed), so gigabytes of weights
never travel through Ray; it keeps them resident on its device across the points of
that variant, computes the XLA reference outside the timed path, and returns one
flat dict of measurements per point.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any

from workers.devices import DeviceSpec
from workers.llama_config import LlamaConfig, preset
from workers.quant import VariantWeights, prepare_variant


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where a model's weights come from: a Hugging Face checkpoint directory or a seed."""

    name: str
    preset: str | None = None
    path: str | None = None
    seed: int = 0

    def config(self) -> LlamaConfig:
        if self.path:
            return LlamaConfig.from_json_file(Path(self.path) / "config.json")
        assert self.preset is not None, "ModelSource needs a preset or a path"
        return preset(self.preset)

    @property
    def weights_id(self) -> str:
        """The identity of the weights: same id, same numbers, on every host."""
        if self.path:
            ident = {"path": str(Path(self.path).resolve()), "config": self.config().to_dict()}
        else:
            ident = {"preset": self.preset, "seed": self.seed, "config": self.config().to_dict()}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]

    def variant(self, variant: str, group_size: int) -> VariantWeights:
        """The variant's graph weights, made from one checkpoint tensor at a time."""
        from workers.checkpoint import lazy_checkpoint, lazy_synthetic_weights

        cfg = self.config()
        source = lazy_checkpoint(self.path) if self.path else lazy_synthetic_weights(cfg, self.seed)
        return prepare_variant(source, cfg, variant, group_size, consume=True)


@dataclasses.dataclass(frozen=True)
class BenchTask:
    """What a worker needs to measure one point, besides the two vmfbs (IREE only)."""

    variant: str
    group_size: int
    prompt_length: int
    prompt_bucket: int
    max_seq: int
    warmup_steps: int
    decode_steps: int
    prefill_runs: int
    runtime: str = "iree"  # or "xla": the same graphs through jax.jit on the same device


class PointWorker:
    """One device, two runtimes (IREE, and XLA as the baseline), one resident weight set."""

    def __init__(self, device: DeviceSpec, source: ModelSource, cache_dir: str | None) -> None:
        from workers.bench import BenchmarkRunner

        if device.needs_gpu:
            # JAX (the reference, the XLA baseline) shares this process and the GPU with
            # IREE: without this it would reserve 75% of the GPU's memory at its first use.
            os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        self.device = device
        self.source = source
        self.cfg = source.config()
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.runner = BenchmarkRunner(device.driver)
        self._xla: Any = None  # an XlaRunner, made on the first XLA point

    @property
    def num_uploads(self) -> int:
        return self.runner.num_uploads + (self._xla.num_uploads if self._xla else 0)

    def info(self) -> dict[str, Any]:
        return {"hostname": socket.gethostname(), "device_name": device_name(self.device)}

    def run(
        self, task: BenchTask, prefill_vmfb: bytes | None = None, decode_vmfb: bytes | None = None
    ) -> dict[str, Any]:
        from workers.bench import prompt_ids
        from workers.reference import num_matching, reference_tokens

        upload_s, vw = self._ensure_weights(task)
        prompt = prompt_ids(self.cfg.vocab_size, task.prompt_length)
        num_tokens = 1 + task.warmup_steps + task.decode_steps
        reference = reference_tokens(
            self.cfg,
            vw,
            prompt,
            task.prompt_bucket,
            task.max_seq,
            num_tokens,
            weights_id=self.source.weights_id,
            cache_dir=self.cache_dir,
        )
        steps = {
            "warmup_steps": task.warmup_steps,
            "decode_steps": task.decode_steps,
            "prefill_runs": task.prefill_runs,
            "upload_s": upload_s,
        }
        compile_s = None
        if task.runtime == "xla":
            result, compile_s = self._xla.run_point(
                self.cfg, vw, prompt, task.prompt_bucket, task.max_seq, **steps
            )
        else:
            assert prefill_vmfb is not None and decode_vmfb is not None, "IREE needs vmfbs"
            result = self.runner.run_point(
                prefill_vmfb, decode_vmfb, prompt, task.prompt_bucket, **steps
            )
        bytes_per_token = vw.nbytes + self._cache_bytes(task)
        return {
            **dataclasses.asdict(result),
            "xla_compile_s": compile_s,
            "quant_error": vw.quant_error,
            "reference_tokens": reference,
            "num_tokens_matched": num_matching(result.tokens, reference),
            "bytes_per_token": bytes_per_token,
            "peak_gbps": self.device.peak_gbps or self.runner.copy_gbps(bytes_per_token),
            **self.info(),
        }

    def _ensure_weights(self, task: BenchTask) -> tuple[float, VariantWeights]:
        """Makes the task's variant resident in its runtime, freeing the other runtime's."""
        key = f"{self.source.weights_id}/{task.variant}/{task.group_size}"
        make = lambda: self.source.variant(task.variant, task.group_size)  # noqa: E731
        if task.runtime == "xla":
            from workers.xla_bench import XlaRunner

            self.runner.release()
            self._xla = self._xla or XlaRunner(self.device.driver)
            upload_s = self._xla.ensure_weights(key, make)
            vw = self._xla.resident_variant
        else:
            if self._xla is not None:
                self._xla.release()
            upload_s = self.runner.ensure_weights(key, make)
            vw = self.runner.resident_variant
        assert vw is not None
        return upload_s, vw

    def _cache_bytes(self, task: BenchTask) -> int:
        """K and V caches: the graph attends over (so reads) the whole capacity each step."""
        c = self.cfg
        elem = 2 if task.variant == "bf16" else 4
        return 2 * c.num_hidden_layers * task.max_seq * c.num_key_value_heads * c.head_dim * elem


def device_name(device: DeviceSpec) -> str:
    """A human name for the device: the GPU's name from nvidia-smi, or the CPU model."""
    import subprocess

    if device.driver == "cuda":
        try:
            out = (
                subprocess.run(
                    ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                    check=True,
                )
                .stdout.strip()
                .splitlines()
            )
            return out[0] if out else "cuda"
        except (OSError, subprocess.SubprocessError):
            return "cuda"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return device.name
