"""Chaos: run the smoke grid while killing benchmark actors, then count what was lost.

A sweep is trusted overnight only if a crashed worker costs at most a retry. This
script runs the smoke grid (points made long enough to be hit mid-benchmark) on a
local Ray, kills a random benchmark actor with SIGKILL several times while it is
inside a point, and then reads the Parquet back: every point must be present
exactly once. It prints rows lost and duplicate rows (both must be 0) and writes
the report as JSON.

    python benchmarks/chaos.py [--kills 4] [--interval-s 3]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (  # noqa: E402
    busy_actor_pids,
    default_report_path,
    machine_info,
    markdown_table,
    write_json,
)

GRID = ["+grid=smoke", "grid.max_seq=1024", "bench.decode_steps=900", "bench.max_retries=5"]


def killer(num_kills: int, interval_s: float, stop: threading.Event, log: list[float]) -> None:
    rng = random.Random(0)
    start = time.monotonic()
    while len(log) < num_kills and not stop.is_set():
        time.sleep(interval_s)
        pids = busy_actor_pids()
        if pids:
            os.kill(rng.choice(pids), signal.SIGKILL)
            log.append(round(time.monotonic() - start, 2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=4)
    parser.add_argument("--interval-s", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from sweep.plan.config import load_config
    from sweep.run import run_sweep
    from sweep.store.results import read_results

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    work = Path(tempfile.mkdtemp(prefix="sweep-chaos-"))
    cfg, resolved = load_config(
        [*GRID, f"results_dir={work / 'results'}", f"cache_dir={work / 'cache'}"]
    )
    stop, kills = threading.Event(), []
    thread = threading.Thread(target=killer, args=(args.kills, args.interval_s, stop, kills))
    thread.start()
    start = time.monotonic()
    try:
        outcome = run_sweep(cfg, resolved, out=io.StringIO())
    finally:
        stop.set()
        thread.join()
    wall_s = time.monotonic() - start

    table = read_results(work / "results")
    keys = Counter(table.column("point_key").to_pylist())
    statuses = Counter(table.column("status").to_pylist())
    attempts = Counter(table.column("attempt").to_pylist())
    report = {
        "points": outcome.num_points,
        "rows": table.num_rows,
        "kills": len(kills),
        "kill_times_s": kills,
        "rows_lost": outcome.num_points - len(keys),
        "duplicate_rows": sum(n - 1 for n in keys.values()),
        "statuses": dict(statuses),
        "attempts": {str(k): v for k, v in attempts.items()},
        "wall_s": round(wall_s, 1),
        "machine": machine_info(),
    }
    print(
        markdown_table(
            [
                "points",
                "rows",
                "actors killed",
                "rows lost",
                "duplicate rows",
                "statuses",
                "retried points",
                "most tries of a point",
                "wall s",
            ],
            [
                [
                    str(report["points"]),
                    str(report["rows"]),
                    str(len(kills)),
                    str(report["rows_lost"]),
                    str(report["duplicate_rows"]),
                    ", ".join(f"{k} {v}" for k, v in statuses.items()),
                    str(sum(v for k, v in attempts.items() if k and k > 1)),
                    str(max((k for k in attempts if k), default=0)),
                    f"{wall_s:.0f}",
                ]
            ],
        )
    )
    out = args.out or default_report_path("chaos", "tiny")
    write_json(out, report)
    print(f"wrote {out}")
    return 0 if report["rows_lost"] == 0 and report["duplicate_rows"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
