"""Scale: planning 10,000 points, and querying a 100,000-row results dataset.

The driver must stay out of the way at thousands of points and many hosts: expanding
and planning a grid (`dry_run=true`: no compile, no benchmark) must take seconds, and
the results must stay queryable interactively as they grow. Targets: the plan of
10,000 points in under 10 s; each DuckDB query over 100,000 rows in under 1 s.

    python benchmarks/scale.py [--points 10000] [--rows 100000] [--rows-per-file 2000]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import default_report_path, machine_info, markdown_table, write_json  # noqa: E402

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
    from sweep.config import load_config
    from sweep.run import run_sweep

    start = time.perf_counter()
    cfg, resolved = load_config([*plan_overrides(num_points), f"results_dir={results_dir}"])
    outcome = run_sweep(cfg, resolved, out=io.StringIO())
    return outcome.num_points, time.perf_counter() - start


def synthetic_rows(n: int, rng: np.random.Generator, start: datetime) -> list[dict]:
    variants, devices = ["fp32", "bf16", "int8", "int4"], ["cpu", "cuda"]
    rows = []
    for i in range(n):
        samples = rng.lognormal(np.log(20.0), 0.1, 40)
        p50 = float(np.median(samples))
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
                "flag_set": f"f{i % 25}",
                "status": "ok" if i % 50 else "compile_error",
                "num_dispatches": 100 + i % 25,
                "decode_ms_p50": p50,
                "tok_s": 1000 / p50,
                "prefill_ms": 3 * p50,
                "decode_samples_ms": samples.tolist(),
                "created_at": start + timedelta(seconds=i),
            }
        )
    return rows


def time_queries(num_rows: int, rows_per_file: int, results_dir: Path) -> tuple[float, dict]:
    from sweep.results import ResultsWriter, duckdb_connect

    writer, rng = ResultsWriter(results_dir, "scale"), np.random.default_rng(0)
    start, now = time.perf_counter(), datetime.now(UTC)
    for offset in range(0, num_rows, rows_per_file):
        batch = synthetic_rows(min(rows_per_file, num_rows - offset), rng, now)
        for j, row in enumerate(batch):
            row["point_key"] = f"p{offset + j:07d}"
        writer.write(batch)
    write_s = time.perf_counter() - start
    con = duckdb_connect(results_dir)
    timings = {}
    for name, sql in QUERIES.items():
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            con.execute(sql).fetchall()
            best = min(best, time.perf_counter() - t)
        timings[name] = best
    return write_s, timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rows-per-file", type=int, default=2_000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sweep-scale-"))
    num_points, plan_s = time_plan(args.points, work / "plan")
    write_s, queries = time_queries(args.rows, args.rows_per_file, work / "results")
    rows = [
        ["plan (dry_run)", f"{num_points} points", f"{plan_s:.2f}", "< 10", _ok(plan_s < 10)],
        ["write", f"{args.rows} rows", f"{write_s:.2f}", "-", ""],
    ]
    rows += [
        [f"query: {name}", f"{args.rows} rows", f"{s:.3f}", "< 1", _ok(s < 1)]
        for name, s in queries.items()
    ]
    print(markdown_table(["what", "size", "seconds", "target", "met"], rows))
    report = {
        "num_points": num_points,
        "plan_s": plan_s,
        "num_rows": args.rows,
        "rows_per_file": args.rows_per_file,
        "write_s": write_s,
        "query_s": queries,
        "machine": machine_info(),
    }
    out = args.out or default_report_path("scale", "synthetic")
    write_json(out, report)
    print(f"wrote {out}")
    return 0 if plan_s < 10 and all(s < 1 for s in queries.values()) else 1


def _ok(met: bool) -> str:
    return "yes" if met else "NO"


if __name__ == "__main__":
    sys.exit(main())
