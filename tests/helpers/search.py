"""A search driven without Ray: `drive` stands in for the scheduler and `measure` for the
workers, a scripted decode time (tests/test_search.py says which switches lower it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sweep.plan.config import load_config
from sweep.plan.grid import Point, expand
from sweep.search.study import Search, open_search

EFFECTS = {"opt_level": "O3", "layout": "out_major", "format": "int4-ui4-pc"}


def measure(point: Point) -> dict[str, Any]:
    row = {"point_key": point.key, "flag_set": point.flag_set, "runtime": point.runtime}
    row["replica"] = point.replica
    if "--iree-opt-data-tiling" in point.flags:
        return {**row, "status": "compile_error", "decode_ms_p50": None}
    ms = 10.0
    ms -= 2.0 * ("--iree-opt-level=O3" in point.flags)
    ms -= 3.0 * (point.layout == "out_major")
    ms -= 1.0 * (point.variant.name == "int4-ui4-pc")
    ms += 0.5 * (point.runtime == "xla")
    return {**row, "status": "ok", "decode_ms_p50": ms}


def config(tmp_path: Path, *overrides: str):
    cfg, _ = load_config(
        ["+grid=smoke", "+search=flags", f"results_dir={tmp_path / 'results'}", *overrides]
    )
    return cfg


def drive(
    cfg, done: dict[str, dict[str, Any]], measure: Callable[[Point], dict[str, Any]] = measure
) -> tuple[Search, list[dict[str, Any]]]:
    """One sweep's worth of a search; `done` holds the finished rows and gains this one's."""
    search = open_search(cfg, expand(cfg, "weights"), done.get)
    todo = search.schedule([p for p in search.baselines if p.key not in done]) + search.refill()
    rows = []
    while todo:
        point = todo.pop(0)
        assert point.key not in {r["point_key"] for r in rows}, "no point twice in a sweep"
        row = measure(point)
        rows.append(row)
        if row["status"] == "ok":
            done[point.key] = row
        search.observe([row])
        todo = todo or search.refill()
    return search, rows
