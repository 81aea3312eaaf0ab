"""What comes back from a benchmark worker: one point's measurement, and its statistics.

A `Measurement` crosses from the worker (a Ray actor) to the driver as itself; the
driver's `sweep.store.rows` turns it into result columns. Its parts (`QualityStats`,
`Profile`) are defined here too, so the driver reads a point's record without importing
the model stack that measured it (`workers.measure`). The statistics are defined here,
next to the samples they summarise, so every consumer computes them the same way.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from workers.core.host import HostWindow


def tok_s(decode_ms_p50: float, batch_size: float = 1) -> float:
    """Tokens per second of a decode step that makes `batch_size` tokens in `decode_ms_p50`."""
    return 1000.0 * batch_size / decode_ms_p50


def decode_stats(samples_ms: Sequence[float]) -> dict[str, float]:
    """Summary statistics of timed decode steps, named as the result columns.

    The median is the headline (robust to a stray slow step); p10/p90/p99 show the
    spread and the tail. Percentiles use numpy's default linear interpolation. The
    standard deviation is the *sample* one (ddof=1) since the steps are a sample of
    the decode-time distribution; it is 0 for a single sample. tok_s = 1000 / p50.
    """
    samples = np.asarray(samples_ms, dtype=np.float64)
    if samples.ndim != 1 or samples.size == 0:
        raise ValueError(
            f"decode_stats needs a non-empty 1-D sequence of ms per step, got shape "
            f"{samples.shape}; run at least one timed decode step (num_decode_steps >= 1)"
        )
    if not np.all(np.isfinite(samples)) or np.any(samples <= 0):
        raise ValueError(
            "decode_stats got a sample that is not a positive finite number of ms: "
            f"{samples.tolist()[:10]}...; check the timer around the decode step"
        )
    p10, p50, p90, p99 = np.percentile(samples, [10, 50, 90, 99])
    std = float(np.std(samples, ddof=1)) if samples.size > 1 else 0.0
    return {
        "decode_ms_p10": float(p10),
        "decode_ms_p50": float(p50),
        "decode_ms_p90": float(p90),
        "decode_ms_p99": float(p99),
        "decode_ms_mean": float(np.mean(samples)),
        "decode_ms_std": std,
        "tok_s": tok_s(float(p50)),
    }


def timed_window(window: HostWindow) -> dict[str, Any]:
    """A timed phase's window (workers.core.host) as Measurement's fields."""
    return {
        "timed_started_at": window.started_at,
        "timed_finished_at": window.finished_at,
        "host_busy_frac": window.busy_frac,
        "run_wait_frac": window.run_wait_frac,
        "run_wait_ms": window.run_wait_ms,
        "disturbed": window.disturbed,
    }


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One point as measured on its device, with its reference tokens."""

    prefill_samples_ms: tuple[float, ...]
    decode_samples_ms: tuple[float, ...]
    prompt_ids: tuple[int, ...]
    tokens: tuple[int, ...]  # the first from prefill, then one per decode step (warmup included)
    reference_tokens: tuple[int, ...]
    num_tokens_matched: int  # common prefix of tokens and reference_tokens
    bench_s: float  # wall seconds of prefill runs, warmup and timed steps
    upload_s: float  # seconds this point spent uploading weights; 0 when already resident
    weight_bytes: int
    quant_error: float | None  # our quantizer's error; None for llama.cpp's quantizer
    fp32_agreement: float  # workers.measure.quality: argmax agreement with fp32, teacher-forced
    fp32_logit_error: float  # relative logit error against fp32 at the first position
    bytes_per_token: int  # what a step reads (weights once, each sequence's cache) / batch
    peak_gbps: float | None  # the device's copy bandwidth, for the roofline
    hostname: str
    device_name: str
    started_at: float = 0.0  # wall clock (epoch seconds) when the worker began the point
    finished_at: float = 0.0  # ... and when it was done with it
    # The timed phase (prefill runs, warmup and timed decode steps): its wall-clock span,
    # the run-queue wait of the benchmark's threads and the share of host CPU time other
    # processes took meanwhile, the verdict from them (workers.core.host: None where the
    # window cannot tell), and the niceness the worker ran at.
    timed_started_at: float = 0.0
    timed_finished_at: float = 0.0
    host_busy_frac: float | None = None
    run_wait_frac: float | None = None
    run_wait_ms: float | None = None
    disturbed: bool | None = None
    niceness: int | None = None
    xla_compile_s: float | None = None  # the XLA baseline compiles in the worker
    node_id: str | None = None  # the cluster node (filled in by the actor)
    threads: int | None = None  # cores the point ran on (workers.core.threads)
    num_uploads: int = 0  # uploads the worker made so far, all points together
    profile: Profile | None = None  # IREE's per-dispatch profile of decode, when asked for
    prefill_profile: Profile | None = None  # ... and of prefill (a few calls of the prompt)
    batch: int = 1  # sequences per step: the prompts, tokens and references hold each in turn
    output_text: str | None = None  # the first sequence's tokens, decoded (a text prompt)
    quality: QualityStats | None = None  # ppl, KLD, top-1 on the eval text (a tokenizer)
    llamacpp_type: str | None = None  # llama.cpp points: the GGUF tensor type that ran
    # ... and the switches it ran with (workers.runtimes.llamacpp.LlamaCppSettings, as resolved)
    llamacpp_extra_bufts: bool | None = None
    llamacpp_flash_attn: str | None = None
    llamacpp_n_ubatch: int | None = None
    runtime_decode_ms: float | None = None  # the runtime's own ms/token (llama.cpp's counters)
    # IREE: loading the point's modules (zero when loaded by an earlier point): seconds, and
    # the process's growth (the packed weights on a CPU driver; None on a GPU: device memory)
    load_s: float | None = None
    load_bytes: int | None = None

    @property
    def prefill_ms(self) -> float:
        """Time to first token: the median of the prefill runs."""
        return float(np.median(self.prefill_samples_ms))

    def decode_stats(self) -> dict[str, float]:
        """The step statistics; tok/s counts every sequence of the batch."""
        return dict(self._decode_stats)

    @functools.cached_property
    def _decode_stats(self) -> dict[str, float]:
        # computed once: a row asks three times, and the driver builds a row per point
        stats = decode_stats(self.decode_samples_ms)
        return {**stats, "tok_s": tok_s(stats["decode_ms_p50"], self.batch)}

    @property
    def prefill_tok_s(self) -> float:
        """Prompt tokens (of every sequence) per second of the median prefill."""
        return len(self.prompt_ids) / (self.prefill_ms / 1e3)

    def roofline_frac(self) -> float | None:
        """Floor time (the step's bytes at the device's copy bandwidth) over the median step."""
        if not self.bytes_per_token or not self.peak_gbps:
            return None
        floor_ms = self.bytes_per_token * self.batch / (self.peak_gbps * 1e9) * 1e3
        return floor_ms / self.decode_stats()["decode_ms_p50"]


@dataclasses.dataclass(frozen=True)
class QualityStats:
    """The quality columns of a row (see the module docstring)."""

    ppl: float
    kld_mean: float
    kld_p99: float
    top1_agree: float
    num_eval_tokens: int


@dataclasses.dataclass(frozen=True)
class DispatchTime:
    name: str  # the compiled dispatch function
    kind: str
    calls_per_step: float
    ms_per_step: float  # its spans' total per decode step (overlapping ones each count)


@dataclasses.dataclass(frozen=True)
class Profile:
    dispatches: tuple[DispatchTime, ...]
    device_ms: float  # per call: time during which some dispatch ran
    num_calls: int  # graph calls profiled
    mode: str  # the HAL profiling mode used
    raw: bytes = dataclasses.field(repr=False, default=b"")  # the .ireeprof file
    command: str = ""  # the tool's command line
    call_ms: float | None = None  # the tool's wall time per profiled call

    @property
    def device_share(self) -> float | None:
        """The share of a profiled call during which some dispatch ran; the rest is the
        runtime's and the tool's own work per call."""
        if not self.call_ms:
            return None
        return min(self.device_ms / self.call_ms, 1.0)


class NotRunnable(RuntimeError):
    """This runtime cannot run the point here (its extra is not installed on the host,
    or the point asks for what it does not do): recorded as `skipped`, with the reason."""


class DispatchKind(enum.StrEnum):
    """What a dispatch does, in the order tables list kinds."""

    MATMUL = "matmul"
    ELEMENTWISE = "elementwise"
    TRANSPOSE = "transpose"
    REDUCTION = "reduction"
    ATTENTION = "attention"
    PACK = "pack"  # data tiling's packing of a weight or activation into a tiled layout
    COPY = "copy"
    OTHER = "other"
