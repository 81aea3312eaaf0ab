"""Disturbance: does a row say when its host was busy, and does priority keep it honest?

Why: a benchmark shares its host. A build running politely at `nice -n 19` must not
change a measurement (the benchmark actor runs at niceness 0, so the scheduler gives
the build almost nothing while the actor's threads are runnable), while a busy process
at normal priority takes its share of the CPUs, and the row must say so (`disturbed`,
from `host_busy_frac`, `workers.host`) instead of passing a slower number off as the
point's. Targets: the quiet and the nice-19 medians within 10 % of each other; the
nice-0 row marked `disturbed` (and the quiet one not).

What it runs: one point (the mid model, fp32, CPU, prompt 32, 200 timed decode steps
by default), each measurement a whole `python -m sweep` in this process with
`rerun=true` on one compile cache. First a warm-up sweep that compiles (not reported:
its compile workers are still winding down when its timed phase starts), then
`--rounds` rounds of the three conditions interleaved (quiet, nice 19, nice 0, quiet,
...), so the VM's run-to-run drift (5-15 % here) lands in every condition alike:
quiet (after waiting for other processes to calm down, at most --quiet-wait-s), beside
one busy process (a Python spin loop) at niceness 19, and beside one at niceness 0.
The busy process runs for the whole sweep and its CPU seconds are reported. A
condition's number is the median of its rounds' medians. Takes about 5 minutes with
3 rounds on the quiet 2-core VM (ten Ray starts, one compile, 9 x 200 steps of ~30 ms).

Usage:
    python benchmarks/disturbance.py [--rounds 3] [--work DIR] [--out PATH] [-- overrides]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import (  # noqa: E402
    add_sweep_args,
    default_report_path,
    machine_info,
    markdown_table,
    process_cpu_s,
    timed_sweep,
    wait_for_quiet,
    write_json,
)
from sweep.readers.analysis import median  # noqa: E402
from workers.host import DISTURBED_FRAC  # noqa: E402
from workers.kinds import Status  # noqa: E402

SCRIPT = "disturbance"
POINT = [
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
CONDITIONS = (("quiet", None), ("busy nice 19", 19), ("busy nice 0", 0))
MAX_RATIO = 1.10  # the nice-19 median within 10 % of the quiet one
BUSY_LOOP = "while True: pass"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_sweep_args(p)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    out = args.out or ROOT / default_report_path(SCRIPT, "mid")
    report: dict[str, Any] = {
        "script": SCRIPT,
        "machine": machine_info(),
        "point": POINT,
        "disturbed_frac": DISTURBED_FRAC,
        "rounds": args.rounds,
        "runs": {name: [] for name, _ in CONDITIONS},
    }
    with tempfile.TemporaryDirectory(prefix="disturbance-") as tmp:
        work = args.work or Path(tmp)
        base = [*POINT, f"cache_dir={work / 'cache'}", "rerun=true", *args.overrides]
        overrides = [*base, f"results_dir={work / 'results'}"]
        report["warmup"] = run("warm-up (compiles; not reported)", overrides, None)
        for round_ in range(args.rounds):
            for name, nice in CONDITIONS:
                other_cpu = wait_for_quiet(args.quiet_wait_s)
                result = run(f"{name}, round {round_ + 1}", overrides, nice)
                report["runs"][name].append({**result, "other_cpu_before": other_cpu})
                write_json(out, report)
    report["conditions"] = {name: summarize(runs) for name, runs in report["runs"].items()}
    report["verdict"] = verdict(report["conditions"])
    write_json(out, report)
    print()
    quiet_ms = report["conditions"][CONDITIONS[0][0]]["decode_ms_p50"]
    rows = [table_row(n, c, quiet_ms) for n, c in report["conditions"].items()]
    print(markdown_table(HEADER, rows))
    for line, ok in report["verdict"].items():
        print(f"{'PASS' if ok else 'FAIL'}: {line}")
    print(f"\nreport: {out}")
    return report


def run(name: str, overrides: list[str], nice: int | None) -> dict[str, Any]:
    busy = None
    if nice is not None:
        busy = subprocess.Popen(["nice", "-n", str(nice), sys.executable, "-c", BUSY_LOOP])
    start = time.monotonic()
    try:
        _, outcome, wall_s, log = timed_sweep(name, overrides)
        busy_cpu_s = process_cpu_s(busy.pid) if busy else None
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    (row,) = outcome.rows or [None]
    if row is None or row["status"] != Status.OK:
        raise RuntimeError(f"{name}: the point did not measure ok\n{log[-4000:]}")
    keys = (
        "decode_ms_p50",
        "decode_ms_p10",
        "decode_ms_p90",
        "prefill_ms",
        "host_busy_frac",
        "disturbed",
        "niceness",
    )
    timed_s = (row["timed_finished_at"] - row["timed_started_at"]).total_seconds()
    result = {
        "busy_niceness": nice,
        "run_id": outcome.run_id,
        **{k: row[k] for k in keys},
        "timed_s": timed_s,
        "wall_s": wall_s,
        "busy_cpu_share": busy_cpu_s / (time.monotonic() - start) if busy_cpu_s else None,
    }
    print(
        f"{name}: {row['decode_ms_p50']:.2f} ms/token, host_busy_frac "
        f"{row['host_busy_frac']:.3f}, disturbed {row['disturbed']}",
        flush=True,
    )
    return result


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A condition over its rounds: medians of the rounds' numbers, every round's flag."""
    return {
        "decode_ms_p50": median(r["decode_ms_p50"] for r in runs),
        "round_p50s": [r["decode_ms_p50"] for r in runs],
        "host_busy_frac": median(r["host_busy_frac"] for r in runs),
        "busy_fracs": [r["host_busy_frac"] for r in runs],
        "disturbed": [bool(r["disturbed"]) for r in runs],
        "niceness": sorted({r["niceness"] for r in runs}),
        "busy_cpu_share": median(r["busy_cpu_share"] for r in runs),
        "timed_s": median(r["timed_s"] for r in runs),
    }


def verdict(conditions: dict[str, dict[str, Any]]) -> dict[str, bool]:
    quiet, polite, rude = (conditions[name] for name, _ in CONDITIONS)
    ratio = polite["decode_ms_p50"] / quiet["decode_ms_p50"]
    return {
        f"nice-19 median / quiet median = {ratio:.3f}, within 10 %": abs(ratio - 1)
        <= MAX_RATIO - 1,
        "every nice-0 row marked disturbed": all(rude["disturbed"]),
        "no quiet row disturbed": not any(quiet["disturbed"]),
    }


HEADER = (
    "condition",
    "ms/tok p50",
    "rounds' p50s",
    "vs quiet",
    "host_busy_frac",
    "disturbed rounds",
    "actor niceness",
    "busy process CPU share",
    "timed s",
)


def table_row(name: str, c: dict[str, Any], quiet_ms: float) -> list[str]:
    return [
        name,
        f"{c['decode_ms_p50']:.2f}",
        " ".join(f"{v:.1f}" for v in c["round_p50s"]),
        f"{c['decode_ms_p50'] / quiet_ms:.3f}",
        " ".join(f"{v:.3f}" for v in c["busy_fracs"]),
        f"{sum(c['disturbed'])}/{len(c['disturbed'])}",
        ",".join(str(n) for n in c["niceness"]),
        "" if c["busy_cpu_share"] is None else f"{c['busy_cpu_share']:.2f}",
        f"{c['timed_s']:.1f}",
    ]


if __name__ == "__main__":
    main()
