"""Disturbance: does a row say when its host was busy, and does priority keep it honest?

Why: a benchmark shares its host. A build running politely at `nice -n 19` must not
change a measurement (the benchmark actor runs at niceness 0, so the scheduler gives
the build almost nothing while the actor's threads are runnable), while busy processes
at normal priority take their share of the CPUs, and the row must say so (`disturbed`,
`workers.core.host`) instead of passing a slower number off as the point's. Each row carries
two figures: `run_wait_frac`, the share of the benchmark threads' runnable time spent
waiting for a CPU (schedstat, nanoseconds: what the verdict uses), and `host_busy_frac`,
the share of the host's CPU ticks other processes took (10 ms ticks: the fallback).
Targets: the quiet and the nice-19 medians within 10 % of each other; every nice-0 row
marked `disturbed`, no quiet or nice-19 row; on `run_wait_frac`, the three conditions'
rounds apart (the largest quiet and nice-19 value below the smallest nice-0 value).

What it runs, per `--grid`: `mid`, one point (the mid model, fp32, CPU, prompt 32, 200
timed decode steps), or `smoke`, the smoke grid (`+grid=smoke`: the tiny model, 8 points,
16 timed steps each, tens of milliseconds per timed phase: where the tick figure cannot
tell). Each measurement is a whole `python -m sweep` in this process with `rerun=true`
on one compile cache. First a warm-up sweep that compiles (not reported), then
`--rounds` rounds of the three conditions interleaved (quiet, nice 19, nice 0, quiet,
...), so the VM's run-to-run drift (5-15 % here) lands in every condition alike: quiet
(after waiting for other processes to calm down, at most --quiet-wait-s), beside
`--busy` busy processes (Python spin loops; default: one per CPU) at niceness 19, and
beside as many at niceness 0. The busy processes run for the whole sweep and their CPU
share is reported. A condition's number is the median of its rounds' medians. Takes
about 5 minutes per grid with 3 rounds on the quiet 2-core VM.

Usage:
    python benchmarks/disturbance.py [--grid mid|smoke] [--rounds 3] [--busy N]
        [--work DIR] [--out PATH] [-- overrides]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _common as common  # noqa: E402
from sweep.readers.analysis import median  # noqa: E402
from workers.core.host import DISTURBED_FRAC, RUN_WAIT_DISTURBED  # noqa: E402
from workers.core.kinds import Status  # noqa: E402

SCRIPT = "disturbance"
GRIDS: dict[str, list[str]] = {}
GRIDS["mid"] = [
    "model=mid",
    "grid.variants=[fp32]",
    "grid.devices=[cpu]",
    "grid.prompt_lengths=[32]",
    "grid.max_seq=256",
    "bench.warmup_steps=5",
    "bench.decode_steps=200",
    "bench.prefill_runs=2",
    "bench.eval_chunks=0",
]
GRIDS["smoke"] = ["+grid=smoke", "bench.eval_chunks=0"]
CONDITIONS = (("quiet", None), ("busy nice 19", 19), ("busy nice 0", 0))
MAX_RATIO = 1.10  # the nice-19 median within 10 % of the quiet one
BUSY_LOOP = "while True: pass"
FIGURES = ("run_wait_frac", "host_busy_frac")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_sweep_args(p)
    p.add_argument("--grid", choices=sorted(GRIDS), default="mid", help="default: mid")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument(
        "--busy",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="busy processes (one per CPU)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    out = args.out or ROOT / common.default_report_path(SCRIPT, args.grid)
    report: dict[str, Any] = {
        "script": SCRIPT,
        "machine": common.machine_info(),
        "grid": args.grid,
        "overrides": GRIDS[args.grid],
        "run_wait_disturbed": RUN_WAIT_DISTURBED,
        "disturbed_frac": DISTURBED_FRAC,
        "rounds": args.rounds,
        "num_busy": args.busy,
        "runs": {name: [] for name, _ in CONDITIONS},
    }
    with tempfile.TemporaryDirectory(prefix="disturbance-") as tmp:
        work = args.work or Path(tmp)
        base = [*GRIDS[args.grid], f"cache_dir={work / 'cache'}", "rerun=true", *args.overrides]
        overrides = [*base, f"results_dir={work / 'results'}"]
        report["warmup"] = run("warm-up (compiles; not reported)", overrides, None, 0)
        for round_ in range(args.rounds):
            for name, nice in CONDITIONS:
                other_cpu = common.wait_for_quiet(args.quiet_wait_s)
                result = run(f"{name}, round {round_ + 1}", overrides, nice, args.busy)
                report["runs"][name].append({**result, "other_cpu_before": other_cpu})
                common.write_json(out, report)
    report["conditions"] = {name: summarize(runs) for name, runs in report["runs"].items()}
    report["verdict"] = verdict(report["conditions"])
    common.write_json(out, report)
    print()
    quiet_ms = report["conditions"][CONDITIONS[0][0]]["decode_ms_p50"]
    rows = [table_row(n, c, quiet_ms) for n, c in report["conditions"].items()]
    print(common.markdown_table(HEADER, rows))
    for line, ok in report["verdict"].items():
        print(f"{'PASS' if ok else 'FAIL'}: {line}")
    print(f"\nreport: {out}")
    return report


def run(name: str, overrides: list[str], nice: int | None, num_busy: int) -> dict[str, Any]:
    """One sweep beside `num_busy` spin loops at niceness `nice` (None: none); its ok rows'
    figures, and the median over its points of their ms/token."""
    loop = [sys.executable, "-c", BUSY_LOOP]
    count = 0 if nice is None else num_busy
    busy = [subprocess.Popen(["nice", "-n", str(nice), *loop]) for _ in range(count)]
    start = time.monotonic()
    try:
        _, outcome, wall_s, log = common.timed_sweep(name, overrides)
        busy_cpu_s = sum(common.process_cpu_s(b.pid) for b in busy)
    finally:
        for b in busy:
            b.kill()
            b.wait()
    rows = [r for r in outcome.rows if r["status"] == Status.OK]
    if not rows or len(rows) != len(outcome.rows):
        raise RuntimeError(f"{name}: not every point measured ok\n{log[-4000:]}")
    points = [
        {
            "point_key": r["point_key"],
            "decode_ms_p50": r["decode_ms_p50"],
            "timed_ms": (r["timed_finished_at"] - r["timed_started_at"]).total_seconds() * 1e3,
            "run_wait_ms": r["run_wait_ms"],
            "niceness": r["niceness"],
            "disturbed": r["disturbed"],
            **{figure: r[figure] for figure in FIGURES},
        }
        for r in rows
    ]
    result = {
        "busy_niceness": nice,
        "run_id": outcome.run_id,
        "decode_ms_p50": median(p["decode_ms_p50"] for p in points),
        "points": points,
        "wall_s": wall_s,
        "busy_cpu_share": busy_cpu_s / (time.monotonic() - start) if busy else None,
    }
    flagged = sum(bool(p["disturbed"]) for p in points)
    print(
        f"{name}: {result['decode_ms_p50']:.2f} ms/token (median of {len(points)} points), "
        f"run_wait_frac {_span(p['run_wait_frac'] for p in points)}, host_busy_frac "
        f"{_span(p['host_busy_frac'] for p in points)}, disturbed {flagged}/{len(points)}",
        flush=True,
    )
    return result


def _span(values: Any) -> str:
    kept = [v for v in values if v is not None]
    return f"{min(kept):.3f}-{max(kept):.3f}" if kept else "n/a"


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A condition over its rounds: medians of the rounds' numbers, every row's figures."""
    points = [p for r in runs for p in r["points"]]
    return {
        "decode_ms_p50": median(r["decode_ms_p50"] for r in runs),
        "round_p50s": [r["decode_ms_p50"] for r in runs],
        **{figure: [p[figure] for p in points] for figure in FIGURES},
        "disturbed": [p["disturbed"] for p in points],
        "niceness": sorted({p["niceness"] for p in points}),
        "busy_cpu_share": median(r["busy_cpu_share"] for r in runs),
        "timed_ms": median(p["timed_ms"] for p in points),
    }


def verdict(conditions: dict[str, dict[str, Any]]) -> dict[str, bool]:
    quiet, polite, rude = (conditions[name] for name, _ in CONDITIONS)
    ratio = polite["decode_ms_p50"] / quiet["decode_ms_p50"]
    calm = [v for c in (quiet, polite) for v in c["run_wait_frac"] if v is not None]
    loud = [v for v in rude["run_wait_frac"] if v is not None]
    apart = bool(calm and loud) and max(calm) < min(loud)
    return {
        f"nice-19 median / quiet median = {ratio:.3f}, within 10 %": abs(ratio - 1)
        <= MAX_RATIO - 1,
        "every nice-0 row marked disturbed": all(d is True for d in rude["disturbed"]),
        "no quiet row disturbed": all(d is False for d in quiet["disturbed"]),
        "no nice-19 row disturbed": all(d is False for d in polite["disturbed"]),
        "run_wait_frac: quiet and nice-19 rows all below every nice-0 row": apart,
    }


HEADER = (
    "condition",
    "ms/tok p50",
    "rounds' p50s",
    "vs quiet",
    "run_wait_frac",
    "host_busy_frac",
    "disturbed rows",
    "actor niceness",
    "busy processes' CPU share",
    "timed ms",
)


def table_row(name: str, c: dict[str, Any], quiet_ms: float) -> list[str]:
    flagged = sum(d is True for d in c["disturbed"])
    unknown = sum(d is None for d in c["disturbed"])
    return [
        name,
        f"{c['decode_ms_p50']:.2f}",
        " ".join(f"{v:.2f}" for v in c["round_p50s"]),
        f"{c['decode_ms_p50'] / quiet_ms:.3f}",
        _span(c["run_wait_frac"]),
        _span(c["host_busy_frac"]),
        f"{flagged}/{len(c['disturbed'])}" + (f" ({unknown} unknown)" if unknown else ""),
        ",".join(str(n) for n in c["niceness"]),
        "" if c["busy_cpu_share"] is None else f"{c['busy_cpu_share']:.2f}",
        f"{c['timed_ms']:.0f}",
    ]


if __name__ == "__main__":
    main()
