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
import socket
from pathlib import Path
from typing import Any

import numpy as np

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

    def load_fp32(self) -> dict[str, np.ndarray]:
        from workers.checkpoint import load_checkpoint, synthetic_weights

        if self.path:
            return load_checkpoint(self.path)[1]
        return synthetic_weights(self.config(), self.seed)

    def variant(self, variant: str, group_size: int) -> VariantWeights:
        return prepare_variant(self.load_fp32(), self.config(), variant, group_size)


@dataclasses.dataclass(frozen=True)
class BenchTask:
    """What a worker needs to measure one point, besides the two vmfbs."""

    variant: str
    group_size: int
    prompt_length: int
    prompt_bucket: int
    max_seq: int
    warmup_steps: int
    decode_steps: int
    prefill_runs: int


class PointWorker:
    def __init__(self, device: DeviceSpec, source: ModelSource, cache_dir: str | None) -> None:
        from workers.bench import BenchmarkRunner

        self.device = device
        self.source = source
        self.cfg = source.config()
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.runner = BenchmarkRunner(device.driver)

    @property
    def resident_variant(self) -> tuple[str, int] | None:
        vw = self.runner.resident_variant
        return None if vw is None else (vw.variant, vw.group_size)

    @property
    def num_uploads(self) -> int:
        return self.runner.num_uploads

    def info(self) -> dict[str, Any]:
        return {"hostname": socket.gethostname(), "device_name": device_name(self.device)}

    def run(self, task: BenchTask, prefill_vmfb: bytes, decode_vmfb: bytes) -> dict[str, Any]:
        from workers.bench import prompt_ids
        from workers.reference import num_matching, reference_tokens

        key = f"{self.source.weights_id}/{task.variant}/{task.group_size}"
        upload_s = self.runner.ensure_weights(
            key, lambda: self.source.variant(task.variant, task.group_size)
        )
        vw = self.runner.resident_variant
        assert vw is not None
        prompt = prompt_ids(self.cfg.vocab_size, task.prompt_length)
        num_tokens = 1 + task.warmup_steps + task.decode_steps
        reference = reference_tokens(
            self.cfg, vw, prompt, task.prompt_bucket, task.max_seq, num_tokens,
            weights_id=self.source.weights_id, cache_dir=self.cache_dir,
        )
        result = self.runner.run_point(
            prefill_vmfb, decode_vmfb, prompt, task.prompt_bucket,
            warmup_steps=task.warmup_steps, decode_steps=task.decode_steps,
            prefill_runs=task.prefill_runs, upload_s=upload_s,
        )
        return {
            **dataclasses.asdict(result),
            "quant_error": vw.quant_error,
            "reference_tokens": reference,
            "num_tokens_matched": num_matching(result.tokens, reference),
            **self.info(),
        }


def device_name(device: DeviceSpec) -> str:
    """A human name for the device: the GPU's name from nvidia-smi, or the CPU model."""
    import subprocess

    if device.driver == "cuda":
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=10, check=True,
            ).stdout.strip().splitlines()
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
