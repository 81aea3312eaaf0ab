"""Scale: planning 10,000 points, and the results as sweeps really write them.

The driver must stay out of the way at thousands of points and many hosts: expanding
and planning a grid (`dry_run=true`: no compile, no benchmark) must take seconds, and
the results must stay queryable interactively as they grow. A sweep writes one file
per finished point (nothing is lost if it dies) and compacts its run into one file
when it ends (`sweep.store.compaction`); this benchmark writes one run that way, point by
point, times its compaction, adds nine more runs of the same size, and times DuckDB
queries and `sweep.report` over the lot. Targets: the plan of 10,000 points in under
10 s; each query and a report over 100,000 rows from ten 10,000-point runs in under 1 s.

    python benchmarks/scale.py [--points 10000] [--runs 10] [--points-per-run 10000]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import default_report_path, machine_info, markdown_table, write_json  # noqa: E402
from workers.core.kinds import Status
from workers.records import tok_s  # noqa: E402

QUERIES = {
    "seed table": """SELECT variant, device, median(tok_s), median(decode_ms_p50),
                     median(prefill_ms)
                     FROM results WHERE status = 'ok' GROUP BY variant, device""",
    "flag study": """SELECT flag_set, variant, avg(decode_ms_p50), avg(num_dispatches)
                     FROM results GROUP BY flag_set, variant ORDER BY 3""",
    "failures": "SELECT status, count(*) FROM results GROUP BY status",
    "newest per point": """SELECT count(*) FROM (SELECT point_key, max(created_at)
                           FROM results GROUP BY point_key)""",
}


def plan_overrides(num_points: int) -> list[str]:
    """A grid of about `num_points`: 4 variants x 2 devices x 25 flag sets x N prompt lengths."""
    lengths = max(1, num_points // (4 * 2 * 25))
    flag_sets = [f"+grid.flag_sets.f{i}=['--iree-opt-level=O{i % 4}']" for i in range(24)]
    return [
        "+grid=phase2b",
        "grid.variants=[fp32,bf16,int8,int4]",
        "grid.max_seq=4096",
        f"grid.prompt_lengths=[{','.join(str(8 + i) for i in range(lengths))}]",
        *flag_sets,
        "dry_run=true",
    ]


def time_plan(num_points: int, results_dir: Path) -> tuple[int, float]:
    from sweep.plan.config import load_config
    from sweep.run import run_sweep

    start = time.perf_counter()
    cfg, resolved = load_config([*plan_overrides(num_points), f"results_dir={results_dir}"])
    outcome = run_sweep(cfg, resolved, out=io.StringIO())
    return outcome.num_points, time.perf_counter() - start


def synthetic_rows(n: int, rng: np.random.Generator, start: datetime) -> list[dict]:
    """Rows shaped like a sweep's: 40 decode samples, 44 tokens and their reference."""
    variants, devices = ["fp32", "bf16", "int8", "int4"], ["cpu", "cuda"]
    tokens = list(range(44))
    rows = []
    for i in range(n):
        samples = rng.lognormal(np.log(20.0), 0.1, 40)
        p10, p50, p90 = (float(q) for q in np.percentile(samples, [10, 50, 90]))
        rows.append(
            {
                "run_id": "scale",
                "point_key": f"p{i:07d}",
                "grid": "scale",
                "model": "m",
                "variant": variants[i % 4],
                "device": devices[(i // 4) % 2],
                "runtime": "iree",
                "prompt_length": 8 + i % 100,
                "max_seq": 256,
                "flag_set": f"f{i % 25}" if i % 25 else "default",
                "status": Status.OK if i % 50 != 1 else Status.COMPILE_ERROR,
                "num_dispatches": 100 + i % 25,
                "decode_ms_p10": p10,
                "decode_ms_p50": p50,
                "decode_ms_p90": p90,
                "roofline_frac": 0.3,
                "prompt_ids": tokens[:32],
                "tokens": tokens,
                "reference_tokens": tokens,
                "num_tokens_matched": 44,
                "tok_s": tok_s(p50),
                "prefill_ms": 3 * p50,
                "decode_samples_ms": samples.tolist(),
                "created_at": start + timedelta(seconds=i),
            }
        )
    return rows


def write_runs(results_dir: Path, num_runs: int, per_run: int) -> dict[str, float]:
    """The first run point by point and compacted, as a sweep does; the others compacted."""
    from sweep.store.compaction import compact_run
    from sweep.store.results import ResultsWriter

    rng, now = np.random.default_rng(0), datetime.now(UTC)
    timings = {}
    for run in range(num_runs):
        rows = synthetic_rows(per_run, rng, now + timedelta(hours=run))
        writer = ResultsWriter(results_dir, f"run{run:02d}")
        for i, row in enumerate(rows):
            row.update(run_id=writer.run_id, point_key=f"r{run}p{i:06d}")
        if run == 0:
            start = time.perf_counter()
            for row in rows:
                writer.write([row])
            timings["write one file per point"] = time.perf_counter() - start
            files = len(list(writer.run_dir.glob("*.parquet")))
            start = time.perf_counter()
            compact_run(results_dir, writer.run_id)
            timings[f"compact {files} files"] = time.perf_counter() - start
        else:
            writer.write(rows)
    return timings


def time_queries(results_dir: Path) -> dict[str, float]:
    from sweep.store.results import duckdb_connect

    con = duckdb_connect(results_dir)
    return {
        f"query: {name}": best_of(lambda sql=sql: con.execute(sql).fetchall())
        for name, sql in QUERIES.items()
    }


def time_reports(results_dir: Path) -> dict[str, float]:
    from sweep.readers import report

    def run(*args: str) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            assert report.main(["--results", str(results_dir), *args]) == 0

    return {
        "report: newest run": best_of(lambda: run()),
        "report: every run (--run all)": best_of(lambda: run("--run", "all")),
        "report: flag study, every run": best_of(lambda: run("--run", "all", "--by", "flag_set")),
    }


def best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=10_000, help="points to plan")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--points-per-run", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sweep-scale-"))
    num_points, plan_s = time_plan(args.points, work / "plan")
    results = work / "results"
    writes = write_runs(results, args.runs, args.points_per_run)
    reads = {**time_queries(results), **time_reports(results)}
    num_rows = args.runs * args.points_per_run
    rows = [["plan (dry_run)", f"{num_points} points", f"{plan_s:.2f}", "< 10", _ok(plan_s < 10)]]
    rows += [
        [name, f"{args.points_per_run} rows", f"{s:.2f}", "-", ""] for name, s in writes.items()
    ]
    rows += [[name, f"{num_rows} rows", f"{s:.3f}", "< 1", _ok(s < 1)] for name, s in reads.items()]
    print(markdown_table(["what", "size", "seconds", "target", "met"], rows))
    report = {
        "num_points": num_points,
        "plan_s": plan_s,
        "num_runs": args.runs,
        "points_per_run": args.points_per_run,
        "num_rows": num_rows,
        "num_result_files": len(list(results.glob("run_id=*/*.parquet"))),
        "result_bytes": sum(p.stat().st_size for p in results.glob("run_id=*/*.parquet")),
        "write_s": writes,
        "read_s": reads,
        "machine": machine_info(),
    }
    out = args.out or default_report_path("scale", "synthetic")
    write_json(out, report)
    print(f"wrote {out}")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if plan_s < 10 and all(s < 1 for s in reads.values()) else 1


def _ok(met: bool) -> str:
    return "yes" if met else "NO"


if __name__ == "__main__":
    sys.exit(main())
