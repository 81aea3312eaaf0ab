"""Efficiency: a sweep's wall time against the benchmark time inside it, cold and warm.

Why: a sweep is mostly waiting for benchmarks, which no orchestrator can shorten;
everything else (starting Ray, compiling, starting actors, building and uploading
weights, reference checks, dispatching points, writing Parquet) is overhead. Targets:
wall / benchmark time at most 1.25 on an empty compile cache (cold) and at most 1.05
on a full one (warm); compiles equal to the unique (graph, device, flags)
combinations; weight uploads equal to the unique (actor, variant) combinations.

What it runs: `+grid=efficiency` (conf/grid/efficiency.yaml: fp32 and int4 x 3 prompt
lengths x 3 flag sets of the mid-size model on the CPU), in this process, twice: on an
empty cache (cold: every graph compiles, every reference is computed), then with
`rerun=true` on the cache the first run filled (warm). Wall time runs from composing
the config to the sweep's return, so it holds Ray's start and stop; Python's own start
and imports are not in it. Benchmark time is the sum of the rows' `bench_s`: each
point's prefill runs, warmup and timed decode steps on its device.

The expected counts come from the grid, not from the scheduler: per variant, device
and flag set, one prefill graph per distinct prompt bucket and one decode graph (also
checked against the vmfb files the cold run left in the cache). An upload is a row
whose point found its variant not resident (`upload_s > 0`); there is one CPU actor
per node, so (node_id, variant) names an (actor, variant) pair.

Usage:
    python benchmarks/efficiency.py [--work DIR] [-- extra sweep overrides]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _common as common  # noqa: E402
from workers.core.kinds import Status  # noqa: E402

SCRIPT = "efficiency"
TARGETS = {"cold": 1.25, "warm": 1.05}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_sweep_args(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    with common.workspace(args, SCRIPT, "mid") as (out, work):
        cache = work / "cache"
        base = ["+grid=efficiency", f"cache_dir={cache}", *args.overrides]
        report: dict[str, Any] = {"script": SCRIPT, "machine": common.machine_info(), "runs": {}}
        for name, extra in (("cold", []), ("warm", ["rerun=true"])):
            common.wait_for_quiet(args.quiet_wait_s)
            overrides = [*base, f"results_dir={work / name}", *extra]
            report["runs"][name] = run(name, overrides, cache)
            common.write_json(out, report)
    common.print_runs(TABLE_HEADER, [table_row(n, r) for n, r in report["runs"].items()], out)
    return report


TABLE_HEADER = (
    "cache",
    "points",
    *common.TIME_COLUMNS,
    "target",
    *common.PHASE_COLUMNS,
    "compiles (expected)",
    "cache hits",
    "uploads (expected)",
)


def table_row(name: str, r: dict[str, Any]) -> list[str]:
    totals, phases = common.time_cells(r)
    return [
        name,
        str(r["num_points"]),
        *totals,
        f"<= {TARGETS[name]} {'yes' if r['within_target'] else 'no'}",
        *phases,
        f"{r['num_compiles']} ({r['expected_compiles']})",
        str(r["num_compile_cache_hits"]),
        f"{r['num_uploads']} ({r['expected_uploads']})",
    ]


def run(name: str, overrides: list[str], cache: Path) -> dict[str, Any]:
    cfg, outcome, wall_s, log = common.timed_sweep(name, overrides)
    rows = outcome.rows
    bad = [r for r in rows if r["status"] != Status.OK]
    if bad or len(rows) != outcome.num_points:
        raise RuntimeError(f"{name}: {len(bad)} points not ok\n{log[-4000:]}")
    bench_s = sum(r["bench_s"] for r in rows)
    uploads = [r for r in rows if r["upload_s"] > 0]
    result = {
        "overrides": overrides,
        "run_id": outcome.run_id,
        "num_points": outcome.num_points,
        **common.time_split(outcome, wall_s, bench_s),
        "target": TARGETS[name],
        "within_target": wall_s / bench_s <= TARGETS[name],
        "upload_s": sum(r["upload_s"] for r in uploads),
        "expected_compiles": expected_compiles(cfg),
        "vmfbs_in_cache": sum(1 for _ in (cache / "vmfb").rglob("*.vmfb")),
        "num_uploads": len(uploads),
        "uploads": sorted((r["node_id"][:8], r["variant"]) for r in uploads),
        "expected_uploads": len({(r["node_id"], r["variant"]) for r in rows}),
        "points": [
            {k: r[k] for k in ("variant", "prompt_length", "flag_set", "bench_s", "upload_s")}
            for r in rows
        ],
    }
    result["counts_ok"] = (
        result["num_compiles"] == result["expected_compiles"]
        and result["num_uploads"] == result["expected_uploads"]
        and result["num_compile_cache_hits"] == (0 if name == "cold" else result["num_compiles"])
    )
    print(
        f"{name}: {wall_s:.1f} s wall, {bench_s:.1f} s benchmarking ({wall_s / bench_s:.3f}x); "
        f"{result['num_compiles']} compiles ({result['num_compile_cache_hits']} cached), "
        f"{result['num_uploads']} uploads",
        flush=True,
    )
    return result


def expected_compiles(cfg: Any) -> int:
    """Unique (graph, device, flags): per variant, device and flag set, one prefill graph
    per distinct prompt bucket and one decode graph (IREE runtime only)."""
    from workers.model.export import prompt_bucket

    grid = cfg.grid
    if "iree" not in grid.runtimes:
        return 0
    buckets = {prompt_bucket(n, grid.max_seq) for n in grid.prompt_lengths}
    return len(grid.variants) * len(grid.devices) * len(grid.flag_sets) * (len(buckets) + 1)


if __name__ == "__main__":
    main()
