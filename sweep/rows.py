"""One result row per point: point fields, compile statistics, measurements and a verdict.

Pure functions: the scheduler hands in what it learned, this module decides the
status and the columns. Every point ends with exactly one status.
"""

from __future__ import annotations

import dataclasses
import shlex
from datetime import UTC, datetime
from typing import Any

from sweep.grid import Point
from sweep.results import decode_stats

STATUSES: tuple[str, ...] = (
    "ok",
    "skipped",
    "compile_error",
    "compile_timeout",
    "runtime_error",
    "oom",
    "bench_timeout",
    "wrong_output",
    "worker_lost",
)
FAILED: frozenset[str] = frozenset(STATUSES) - {"ok", "skipped"}
DONE: tuple[str, ...] = ("ok", "wrong_output")  # measured: a resume does not redo these

MESSAGE_TAIL = 2000


@dataclasses.dataclass(frozen=True)
class RunContext:
    run_id: str
    grid: str
    versions: dict[str, str]  # iree_version, jax_version, ray_version


def point_columns(point: Point, ctx: RunContext) -> dict[str, Any]:
    return {
        "run_id": ctx.run_id,
        "point_key": point.key,
        "grid": ctx.grid,
        "model": point.model,
        "variant": point.variant,
        "group_size": point.group_size,
        "device": point.device,
        "runtime": point.runtime,
        "prompt_length": point.prompt_length,
        "prompt_bucket": point.prompt_bucket,
        "max_seq": point.max_seq,
        "flag_set": point.flag_set,
        "flags": list(point.flags),
        "num_warmup_steps": point.warmup_steps,
        "num_decode_steps": point.decode_steps,
        "created_at": datetime.now(UTC),
        **ctx.versions,
    }


def compile_columns(
    prefill: dict[str, Any] | None, decode: dict[str, Any] | None
) -> dict[str, Any]:
    """The decode graph's statistics are the headline: it is what runs per token."""
    if not prefill or not decode:
        return {}
    return {
        "compile_s": (prefill["compile_s"] or 0.0) + (decode["compile_s"] or 0.0),
        "decode_compile_s": decode["compile_s"],
        "prefill_compile_s": prefill["compile_s"],
        "vmfb_bytes": decode["vmfb_bytes"],
        "num_dispatches": decode["num_dispatches"],
        "compile_cache_hit": bool(prefill["cache_hit"] and decode["cache_hit"]),
    }


def failure_row(
    point: Point,
    ctx: RunContext,
    status: str,
    message: str,
    *,
    error_class: str | None = None,
    returncode: int | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    assert status in STATUSES and status != "ok", status
    return {
        **point_columns(point, ctx),
        **(extra or {}),
        "status": status,
        "error_class": error_class or status,
        "error_message": message[-MESSAGE_TAIL:],
        "returncode": returncode,
    }


def min_tokens_matched(variant: str, num_tokens: int) -> int:
    """fp32, int8 and int4 compute in fp32 and must match exactly; bf16 may drift after
    the first token, since its rounding differs between XLA and IREE."""
    return 1 if variant == "bf16" else num_tokens


def measured_row(
    point: Point,
    ctx: RunContext,
    compile_cols: dict[str, Any],
    measured: dict[str, Any],
    repro: str | None,
) -> dict[str, Any]:
    tokens = list(measured["tokens"])
    matched = measured["num_tokens_matched"]
    ok = matched >= min_tokens_matched(point.variant, len(tokens))
    row = {
        **point_columns(point, ctx),
        **compile_cols,
        "status": "ok" if ok else "wrong_output",
        "error_class": None if ok else "wrong_output",
        "error_message": None
        if ok
        else (
            f"{matched} of {len(tokens)} tokens match the XLA reference "
            f"(need {min_tokens_matched(point.variant, len(tokens))})"
        ),
        "weight_bytes": measured["weight_bytes"],
        "quant_error": measured["quant_error"],
        "upload_s": measured["upload_s"],
        "bench_s": measured["bench_s"],
        "prefill_ms": measured["prefill_ms"],
        "prefill_samples_ms": list(measured["prefill_samples_ms"]),
        "decode_samples_ms": list(measured["decode_samples_ms"]),
        **decode_stats(measured["decode_samples_ms"]),
        "prompt_ids": list(measured["prompt_ids"]),
        "tokens": tokens,
        "reference_tokens": list(measured["reference_tokens"]),
        "num_tokens_matched": matched,
        **roofline(measured),
        "node_id": measured.get("node_id"),
        "hostname": measured.get("hostname"),
        "device_name": measured.get("device_name"),
        "repro_command": repro,
    }
    return row


def roofline(measured: dict[str, Any]) -> dict[str, Any]:
    """Floor time (bytes per token at the device's copy bandwidth) over measured time."""
    bytes_per_token, peak_gbps = measured.get("bytes_per_token"), measured.get("peak_gbps")
    if not bytes_per_token or not peak_gbps:
        return {}
    floor_ms = bytes_per_token / (peak_gbps * 1e9) * 1e3
    p50 = decode_stats(measured["decode_samples_ms"])["decode_ms_p50"]
    return {
        "bytes_per_token": bytes_per_token,
        "peak_gbps": peak_gbps,
        "roofline_frac": floor_ms / p50,
    }


def repro_command(
    point: Point, decode_meta: dict[str, Any], driver: str, input_shapes: list[str]
) -> str:
    """The iree-compile line as it ran, then iree-benchmark-module on its output.

    The benchmark inputs are zero splats of the right shapes: dense kernels take the
    same time on any values.
    """
    compile_cmd = decode_meta.get("command") or ""
    vmfb = _output_path(compile_cmd)
    bench = [
        "iree-benchmark-module",
        f"--module={vmfb}",
        f"--device={driver}",
        "--function=main",
        *(f"--input={shape}=0" for shape in input_shapes),
    ]
    return f"{compile_cmd} && {shlex.join(bench)}"


def _output_path(command: str) -> str:
    parts = shlex.split(command) if command else []
    for i, part in enumerate(parts):
        if part == "-o" and i + 1 < len(parts):
            return parts[i + 1]
        if part.startswith("-o="):
            return part[3:]
    return "decode.vmfb"
