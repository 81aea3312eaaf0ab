"""Search efficiency: a search's wall time against the benchmark time of its trials, on a
warm compile cache.

Why: a search is a loop of trials, and everything between two trials' measurements
(proposing, compiling or fetching graphs, dispatching, telling the study, writing the
row) is time the search does not learn from. Target: wall / benchmark at most 1.10
on a warm cache. Before the export memo, every compile task exported its graph with
JAX just to compute the cache key, a second or more per graph of the mid model.

What it runs, in this process: `+search=flags` on `+grid=efficiency` narrowed to fp32
and one prompt length (the mid model on the CPU), with 1024 decode steps per point so
that a trial is measured for seconds, as a 1B model's is at 16-40 steps; twice into
fresh results folders on one compile cache: `warm-up` fills the cache, `warm` is
measured. The sampler stays in its seeded random phase for every trial
(`search.startup_trials` = `search.trials`), so both runs propose the same
configurations and the measured one compiles nothing it proposes; only the winner's
ablation, which depends on measured times, may meet a new graph (counted). A third
run, `warm, no memo`, removes the export memo first: the vmfbs are cached but every
compile task exports again to find its key, the cost the memo removes.

Wall time runs from composing the config to the sweep's return (Ray's start and stop
included); benchmark time is the sum of the rows' `bench_s` (trials, baselines and
ablation points alike: prefill runs, warmup and timed decode steps).

Usage:
    python benchmarks/search_efficiency.py [--trials 12] [--work DIR] [-- more overrides]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _common as common  # noqa: E402

SCRIPT = "search_efficiency"
TARGET = 1.10


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=12, help="distinct configurations per study")
    common.add_sweep_args(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    with common.workspace(args, SCRIPT, "mid") as (out, work):
        cache = work / "cache"
        base = [
            "+grid=efficiency",
            "grid.variants=[fp32]",
            "grid.prompt_lengths=[64]",
            "grid.max_seq=2048",
            "bench.decode_steps=1024",
            "+search=flags",
            f"search.trials={args.trials}",
            f"search.startup_trials={args.trials}",
            f"cache_dir={cache}",
            *args.overrides,
        ]
        report: dict[str, Any] = {"script": SCRIPT, "machine": common.machine_info(), "runs": {}}
        for name in ("warm-up", "warm", "warm, no memo"):
            if name == "warm, no memo":
                shutil.rmtree(cache / "export", ignore_errors=True)
            common.wait_for_quiet(args.quiet_wait_s)
            overrides = [*base, f"results_dir={work / name.replace(', ', '-')}"]
            report["runs"][name] = run(name, overrides)
            common.write_json(out, report)
    common.print_runs(TABLE_HEADER, [table_row(n, r) for n, r in report["runs"].items()], out)
    return report


TABLE_HEADER = (
    "run",
    "rows",
    *common.TIME_COLUMNS,
    "target",
    *common.PHASE_COLUMNS,
    "graphs (cached)",
)


def table_row(name: str, r: dict[str, Any]) -> list[str]:
    target = "" if name == "warm-up" else f"<= {TARGET} {'yes' if r['ratio'] <= TARGET else 'no'}"
    totals, phases = common.time_cells(r)
    return [name, str(r["num_rows"]), *totals, target, *phases, _graphs(r)]


def _graphs(r: dict[str, Any]) -> str:
    return f"{r['num_compiles']} ({r['num_compile_cache_hits']})"


def run(name: str, overrides: list[str]) -> dict[str, Any]:
    _, outcome, wall_s, log = common.timed_sweep(name, overrides)
    rows = outcome.rows
    bench_s = sum(r["bench_s"] for r in rows if r.get("bench_s") is not None)
    result = {
        "overrides": overrides,
        "run_id": outcome.run_id,
        "num_rows": len(rows),
        "statuses": sorted({r["status"] for r in rows}),
        **common.time_split(outcome, wall_s, bench_s),
        "upload_s": sum(r.get("upload_s") or 0.0 for r in rows),
        "log_tail": log[-3000:],
    }
    print(
        f"{name}: {wall_s:.1f} s wall, {bench_s:.1f} s benchmarking ({wall_s / bench_s:.3f}x); "
        f"{result['num_compiles']} graphs ({result['num_compile_cache_hits']} cached)",
        flush=True,
    )
    return result


if __name__ == "__main__":
    main()
