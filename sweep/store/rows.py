"""One result row per point: point fields, compile statistics, measurements and a verdict.

Every column of a row is built here, from typed values: the `Point`, the run's
context, the `CompileResult`s of its graphs and the worker's `Measurement`. The
scheduler decides what happened; this module decides the status and the columns.
Every point ends with exactly one status.
"""

from __future__ import annotations

import dataclasses
import functools
import shlex
from datetime import UTC, datetime
from typing import Any

from sweep.plan.grid import Point
from workers.compile.iree import CompileResult, clip_message
from workers.core.kinds import GraphKind, Runtime, Status
from workers.model.export import GraphSpec
from workers.records import Measurement, Profile, QualityStats

STATUSES: tuple[Status, ...] = tuple(Status)
FAILED: frozenset[Status] = frozenset(Status) - {Status.OK, Status.SKIPPED}
DONE: tuple[Status, ...] = (Status.OK, Status.WRONG_OUTPUT)  # measured: a resume keeps these

MESSAGE_TAIL = 2000
Row = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What every row of one run shares."""

    run_id: str
    grid: str
    versions: dict[str, str]  # iree_version, jax_version, ray_version
    architecture: str = "llama"  # the model's (LlamaConfig.architecture)


def point_columns(point: Point, ctx: RunContext) -> Row:
    return {
        "run_id": ctx.run_id,
        "point_key": point.key,
        "grid": ctx.grid,
        "model": point.model,
        "architecture": ctx.architecture,
        "variant": point.variant.name,
        "layout": point.layout,
        "weights": point.weights,
        "group_size": point.variant.group_size,
        "bits": point.variant.bits,
        "device": point.device.name,
        "driver": point.device.driver,
        "runtime": point.runtime,
        "prompt_length": point.prompt_length,
        "prompt_bucket": point.prompt_bucket,
        "max_seq": point.max_seq,
        "flag_set": point.flag_set,
        "flags": list(point.flags),
        "num_warmup_steps": point.steps.num_warmup_tokens,
        "num_decode_steps": point.steps.decode_steps,
        "steps_per_call": point.steps.steps_per_call,
        "batch_size": point.batch,
        "depth": point.depth,
        "attention_span": point.attention_span,
        "replica": point.replica,
        "threads": point.threads or None,  # the measured row says how many ran (Measurement)
        "repeat": point.repeat if point.num_repeats > 1 else None,
        "repeat_of": point.repeat_of,
        "prompt_text": point.prompt_text,
        "created_at": datetime.now(UTC),
        **ctx.versions,
    }


def failure_row(
    point: Point,
    ctx: RunContext,
    status: str,
    message: str,
    *,
    error_class: str | None = None,
    returncode: int | None = None,
    repro: str | None = None,
    attempt: int | None = None,
) -> Row:
    assert status in STATUSES and status != Status.OK, status
    return {
        **point_columns(point, ctx),
        "status": status,
        "error_class": error_class or status,
        "error_message": clip_message(message, MESSAGE_TAIL),
        "returncode": returncode,
        "repro_command": repro,
        "attempt": attempt,
    }


def compile_failure_row(point: Point, ctx: RunContext, failed: CompileResult) -> Row:
    """The row of a point one of whose graphs did not compile."""
    status = failed.error_class or Status.COMPILE_ERROR
    return failure_row(
        point,
        ctx,
        status if status in STATUSES else Status.COMPILE_ERROR,
        failed.error_message or "compile failed",
        returncode=failed.returncode,
        repro=failed.command or None,
    )


def compile_columns(*compiled: CompileResult) -> Row:
    """`compiled`: the prefill and the decode graph's compiles, or the one compile of a
    module of the point's graphs (weights as parameters, `workers.model.export.ModuleSpec`).
    The decode graph's statistics are the headline: it is what runs per token. One module
    fills the decode columns (its `num_dispatches` and `packed_per_call` are its decode
    entry point's) and leaves the prefill ones null.
    """
    *prefill, decode = compiled
    first = prefill[0] if prefill else None
    return {
        "compile_s": sum(c.compile_s or 0.0 for c in compiled),
        "decode_compile_s": decode.compile_s,
        "prefill_compile_s": first.compile_s if first else None,
        "vmfb_bytes": decode.vmfb_bytes,
        "num_dispatches": decode.num_dispatches,
        "dequant_fused": decode.dequant_fused,
        "packed_at_load": _sum_known(*(c.num_packed_at_load for c in compiled)),
        "packed_per_call": decode.num_packed_per_call,
        "compile_cache_hit": all(c.cache_hit for c in compiled),
        "prefill_compile_started_at": _utc(first.started_at) if first else None,
        "prefill_compile_finished_at": _utc(first.finished_at) if first else None,
        "decode_compile_started_at": _utc(decode.started_at),
        "decode_compile_finished_at": _utc(decode.finished_at),
    }


def _sum_known(*counts: int | None) -> int | None:
    return None if None in counts else sum(c for c in counts if c is not None)


def _utc(epoch_s: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch_s, UTC) if epoch_s else None


def measured_row(
    point: Point,
    ctx: RunContext,
    m: Measurement,
    *,
    attempt: int,
    compiled: tuple[CompileResult, ...] | None = None,
    decode_graph: GraphSpec | None = None,
) -> Row:
    """The row of a measured point: ok, or wrong_output when its tokens drift too early.

    `compiled` is an IREE point's (prefill, decode) compiles, or its one module's; None
    for XLA.
    """
    shortfall = _token_shortfall(point, m)
    ok = shortfall is None
    if compiled is not None:
        assert decode_graph is not None
        compile_cols = compile_columns(*compiled)
        repro = repro_command(compiled[-1], decode_graph, point.device.driver)
    else:
        compile_cols, repro = {"compile_s": m.xla_compile_s}, None
    return {
        **point_columns(point, ctx),
        **compile_cols,
        "status": Status.OK if ok else Status.WRONG_OUTPUT,
        "error_class": None if ok else Status.WRONG_OUTPUT,
        "error_message": shortfall,
        "weight_bytes": m.weight_bytes,
        "quant_error": m.quant_error,
        "fp32_agreement": m.fp32_agreement,
        "fp32_logit_error": m.fp32_logit_error,
        **quality_columns(m.quality),
        "upload_s": m.upload_s,
        "load_s": m.load_s,
        "load_bytes": m.load_bytes,
        "resident_bytes": m.weight_bytes + m.load_bytes if m.load_bytes is not None else None,
        "bench_s": m.bench_s,
        "prefill_ms": m.prefill_ms,
        "prefill_tok_s": m.prefill_tok_s,
        "output_text": m.output_text,
        "prefill_samples_ms": list(m.prefill_samples_ms),
        "decode_samples_ms": list(m.decode_samples_ms),
        **m.decode_stats(),
        **_time_split(m, point.steps.steps_per_call),
        "prompt_ids": list(m.prompt_ids),
        "tokens": list(m.tokens),
        "reference_tokens": list(m.reference_tokens),
        "llamacpp_type": m.llamacpp_type,
        "llamacpp_extra_bufts": m.llamacpp_extra_bufts,
        "llamacpp_flash_attn": m.llamacpp_flash_attn,
        "llamacpp_n_ubatch": m.llamacpp_n_ubatch,
        "runtime_decode_ms": m.runtime_decode_ms,
        "num_tokens_matched": m.num_tokens_matched,
        "bytes_per_token": m.bytes_per_token,
        "peak_gbps": m.peak_gbps,
        "roofline_frac": m.roofline_frac(),
        "node_id": m.node_id,
        "started_at": _utc(m.started_at),
        "finished_at": _utc(m.finished_at),
        "timed_started_at": _utc(m.timed_started_at),
        "timed_finished_at": _utc(m.timed_finished_at),
        "host_busy_frac": m.host_busy_frac,
        "run_wait_frac": m.run_wait_frac,
        "run_wait_ms": m.run_wait_ms,
        "disturbed": m.disturbed,
        "niceness": m.niceness,
        "hostname": m.hostname,
        "device_name": m.device_name,
        "threads": m.threads,
        "repro_command": repro,
        "attempt": attempt,
    }


def quality_columns(stats: QualityStats | None) -> Row:
    """ppl, kld_mean, kld_p99, top1_agree, num_eval_tokens (`workers.measure.perplexity`); null
    without a text (seeded weights, a checkpoint without a tokenizer)."""
    names = [f.name for f in dataclasses.fields(QualityStats)]
    if stats is None:
        return dict.fromkeys(names)
    return dataclasses.asdict(stats)


def _token_shortfall(point: Point, m: Measurement) -> str | None:
    """None when every sequence's tokens follow its XLA reference as the variant's rule
    asks (all of them, or the first); else what fell short.

    A llama.cpp row's reference is the GGUF file it ran through our XLA graph (the same
    bits); its kernels round differently (8-bit activations, a float16 KV cache), so,
    as for bf16, only the first token must match: a run diverging from the first token
    computed something else."""
    n = len(m.tokens) // m.batch
    need = min(1, n) if point.runtime == Runtime.LLAMACPP else point.variant.min_tokens_matched(n)
    for b in range(m.batch):
        tokens, reference = m.tokens[b * n : (b + 1) * n], m.reference_tokens[b * n : (b + 1) * n]
        pairs = zip(tokens, reference, strict=False)
        matched = next((i for i, (x, y) in enumerate(pairs) if x != y), min(n, len(reference)))
        if matched < need:
            which = f"sequence {b}: " if m.batch > 1 else ""
            return f"{which}{matched} of {n} tokens match the XLA reference (need {need})"
    return None


def _time_split(m: Measurement, steps_per_call: int) -> Row:
    """The median step split in two: device_ms, the time some dispatch runs, and host_ms,
    the rest (runtime, harness, whatever the device waits for).

    Profiling slows a call down (see `workers.measure.profile`), so the profile gives the
    share, and the unprofiled median the time; a tool that did not report its call
    time leaves the profile's own dispatch time, capped at the median.
    """
    if m.profile is None:
        return {}
    step_ms = m.decode_stats()["decode_ms_p50"]
    share = m.profile.device_share
    if share is None:
        device_ms = min(m.profile.device_ms / steps_per_call, step_ms)
    else:
        device_ms = step_ms * share
    return {"device_ms": device_ms, "host_ms": step_ms - device_ms}


def dispatch_rows(point: Point, ctx: RunContext, m: Measurement) -> list[Row]:
    """One row per dispatch function of each of the point's profiles (the `dispatches`
    dataset): decode's per generated token, prefill's per prompt token."""
    per_call = point.steps.steps_per_call
    prompt_tokens = point.prompt_length * point.batch
    return [
        *_profile_rows(point, ctx, m.profile, GraphKind.DECODE, per_call),
        *_profile_rows(point, ctx, m.prefill_profile, GraphKind.PREFILL, prompt_tokens),
    ]


def _profile_rows(
    point: Point, ctx: RunContext, profile: Profile | None, graph: GraphKind, tokens: int
) -> list[Row]:
    """`profile`'s dispatches, each call's `tokens` tokens apart."""
    if profile is None:
        return []
    total = sum(d.ms_per_step for d in profile.dispatches) or 1.0
    common = {
        "run_id": ctx.run_id,
        "point_key": point.key,
        "variant": point.variant.name,
        "layout": point.layout,
        "device": point.device.name,
        "runtime": point.runtime,
        "flag_set": point.flag_set,
        "prompt_length": point.prompt_length,
        "steps_per_call": point.steps.steps_per_call,
        "graph": graph,
        "num_calls_profiled": profile.num_calls,
        "profile_mode": profile.mode,
    }
    return [
        {
            **common,
            "name": d.name,
            "kind": d.kind,
            "calls_per_token": d.calls_per_step / tokens,
            "ms_per_token": d.ms_per_step / tokens,
            "share": d.ms_per_step / total,
        }
        for d in profile.dispatches
    ]


def repro_command(decode: CompileResult, graph: GraphSpec, driver: str) -> str:
    """The iree-compile line as it ran, then iree-benchmark-module on its output.

    The benchmark inputs are zero splats of the right shapes: dense kernels take the
    same time on any values.
    """
    return _repro_command(decode.command, graph, driver)


# Where a repro's weights come from when they are parameters: an archive of the point's
# weights (`workers.measure.profile.weight_archive` writes one when the point is profiled).
REPRO_WEIGHTS = "WEIGHTS.irpa"


@functools.lru_cache(maxsize=4096)  # the points of one decode graph share it
def _repro_command(command: str, graph: GraphSpec, driver: str) -> str:
    bench = [
        "iree-benchmark-module",
        f"--module={_output_path(command)}",
        f"--device={driver}",
        *graph.entry_flags(REPRO_WEIGHTS),
        *(f"--input={a.tool_type}=0" for a in graph.call_args()),
    ]
    return f"{command} && {shlex.join(bench)}"


def _output_path(command: str) -> str:
    parts = shlex.split(command) if command else []
    for i, part in enumerate(parts):
        if part == "-o" and i + 1 < len(parts):
            return parts[i + 1]
        if part.startswith("-o="):
            return part[3:]
    return "decode.vmfb"
