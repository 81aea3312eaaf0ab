"""Synthetic result rows, and the report readers' output read back, for the tests of
the results store, the reports and the host columns.

The rows are those of a phase 2b-like grid (fp32/int4 x cpu/cuda, flag sets, cache
sizes) with decode samples drawn from numpy, so a test computes every expected number
from the rows themselves.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np

from sweep.store.results import COLUMNS
from workers.records import decode_stats

T0 = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
BASE_MS = {
    ("fp32", "cpu"): 540.0,
    ("int4", "cpu"): 1274.0,
    ("fp32", "cuda"): 182.0,
    ("int4", "cuda"): 252.0,
}
BASE_DISPATCHES = {"fp32": 400, "int4": 520}
# flag set -> (ms factor, dispatch change): fuse is 20 % faster with 12 fewer dispatches
FLAG_SETS = {"default": (1.0, 0), "fuse": (0.8, -12), "O3": (1.0, 0)}
MAX_SEQS = {256: 1.0, 384: 1.05, 512: 1.1}
NUM_TOKENS = 8


def samples(rng: np.random.Generator, ms: float, n: int = 40) -> list[float]:
    """Decode steps around `ms`: 1.5 % noise and a slow step in ten (a realistic tail)."""
    steps = rng.normal(ms, 0.015 * ms, n)
    steps[rng.random(n) < 0.1] *= 1.3
    return steps.tolist()


def make_row(
    key: str,
    variant: str,
    decode: list[float],
    *,
    device: str = "cpu",
    flag_set: str = "default",
    prompt_length: int = 32,
    max_seq: int = 256,
    created_at: dt.datetime = T0,
    **extra: Any,
) -> dict[str, Any]:
    """A plausible ok row of a phase 2b-like grid (`decode`: its decode steps in ms);
    compile, dispatch and prefill columns follow the variant, device and flag set;
    `extra` overrides or adds columns."""
    ms_factor, change = FLAG_SETS.get(flag_set, (1.0, 0))
    return {
        "point_key": key,
        "grid": "phase2b",
        "model": "llama-3.2-1b",
        "variant": variant,
        "group_size": 64,
        "device": device,
        "driver": "local-task" if device == "cpu" else "cuda",
        "runtime": "iree",
        "prompt_length": prompt_length,
        "prompt_bucket": prompt_length,
        "max_seq": max_seq,
        "flag_set": flag_set,
        "flags": [] if flag_set == "default" else [f"--{flag_set}"],
        "status": "ok",
        "created_at": created_at,
        "compile_s": 4.0 + 0.5 * (flag_set != "default"),
        "vmfb_bytes": 2_000_000 - 1000 * change,
        "num_dispatches": BASE_DISPATCHES[variant] + change,
        "prefill_ms": BASE_MS[variant, device] * prompt_length / 64 * MAX_SEQS[max_seq],
        "decode_samples_ms": decode,
        **decode_stats(decode),
        "num_decode_steps": len(decode),
        "tokens": list(range(NUM_TOKENS)),
        "reference_tokens": list(range(NUM_TOKENS)),
        "num_tokens_matched": NUM_TOKENS,
        "disturbed": False,  # a quiet host (workers.core.host); null would read "not judged"
        **roofline(variant, device, decode),
        **extra,
    }


def roofline(variant: str, device: str, decode: list[float]) -> dict[str, Any]:
    """The roofline columns, once the schema has them: bytes over a 4.27 TB/s copy."""
    if "roofline_frac" not in COLUMNS:
        return {}
    num_bytes = 4_940_000_000 if variant == "fp32" else 1_660_000_000
    floor_ms = num_bytes / 4.27e12 * 1e3
    return {
        "bytes_per_token": num_bytes,
        "peak_gbps": 4270.0,
        "roofline_frac": floor_ms / float(np.median(decode)),
    }


def run_main(capsys, module, *argv: str) -> tuple[int, str, str]:
    code = module.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def md_table(text: str) -> tuple[list[str], list[list[str]], list[str]]:
    """(the lines above the table, header cells, body rows) of a markdown table."""
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = [line for line in lines[first:] if line.startswith("|")]

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip("|").split("|")]

    return lines[:first], cells(table[0]), [cells(line) for line in table[2:]]
