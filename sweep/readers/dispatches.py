"""Reading the dispatch profiles: where a decode step's time goes, for report, compare and plots.

A sweep with `profile=true` writes one row per dispatch function of every profiled
point's decode and prefill graphs into `<results_dir>/dispatches` (see
`sweep.store.results.DISPATCH_SCHEMA`). This module reads them (decode's, unless asked
for both) for a set of points and answers the questions a flag or format
study asks next: which dispatches take the time (`top_dispatches`), how much time
each kind of dispatch takes per token (`kind_ms`), and what a flag set or a second
run changed, kind by kind (`kind_change`, e.g. "transpose -12, matmul -3").
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from sweep.readers.analysis import profile_keys
from sweep.readers.tables import fmt_short
from sweep.store.results import DISPATCH_SCHEMA, DISPATCHES, Col, newest_per_point, read_results
from workers.core.kinds import GraphKind
from workers.records import DispatchKind

KIND_ORDER = tuple(DispatchKind)
MIN_CHANGE_SHOWN = 0.05  # a kind's change below this share of the baseline's time is noise


def load(
    results_dir: Path, point_keys: Iterable[str], graphs: Sequence[str] = (GraphKind.DECODE,)
) -> list[dict[str, Any]]:
    """The dispatch rows of `point_keys` (the newest profile of each point), of `graphs`."""
    table = _of_graphs(read_results(Path(results_dir) / DISPATCHES, schema=DISPATCH_SCHEMA), graphs)
    if not table.num_rows:
        return []
    keys = pa.array(sorted(set(point_keys)), type=pa.string())
    table = table.filter(pc.is_in(table[Col.POINT_KEY], value_set=keys))
    rows = table.to_pylist()
    # a point profiled by two runs: keep the newer profile (all of its dispatch rows)
    newest = {r[Col.POINT_KEY]: r[Col.CREATED_AT] for r in newest_per_point(rows)}
    return [r for r in rows if r[Col.CREATED_AT] == newest[r[Col.POINT_KEY]]]


def kinds_of_runs(
    results_dir: Path, run_ids: Sequence[str]
) -> dict[tuple[str, str], dict[str, float]]:
    """(run_id, point_key) -> {kind: ms per token} for the profiled points of `run_ids`."""
    table = _of_graphs(read_results(Path(results_dir) / DISPATCHES, schema=DISPATCH_SCHEMA))
    table = table.filter(
        pc.is_in(table[Col.RUN_ID], value_set=pa.array(list(run_ids), pa.string()))
    )
    out: dict[tuple[str, str], dict[str, float]] = {}
    for run in run_ids:
        rows = [r for r in table.to_pylist() if r[Col.RUN_ID] == run]
        out.update({(run, key): kinds for key, kinds in kind_ms(rows).items()})
    return out


def _of_graphs(table: pa.Table, graphs: Sequence[str] = (GraphKind.DECODE,)) -> pa.Table:
    """The rows of `graphs`' profiles; a row without a graph (schema 1) is decode's."""
    graph = pc.fill_null(table["graph"], str(GraphKind.DECODE))
    return table.filter(pc.is_in(graph, value_set=pa.array(list(graphs), pa.string())))


def kind_ms(dispatches: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """point_key -> {kind: ms per token}, kinds in KIND_ORDER."""
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for row in dispatches:
        kinds = out[row[Col.POINT_KEY]]
        kinds[row["kind"]] = kinds.get(row["kind"], 0.0) + row["ms_per_token"]
    return {k: dict(sorted(v.items(), key=lambda kv: _kind_rank(kv[0]))) for k, v in out.items()}


def pooled_kind_ms(per_point: Sequence[dict[str, float]]) -> dict[str, float]:
    """The mean over points of each kind's ms per token (a group of several points)."""
    if not per_point:
        return {}
    kinds = sorted({k for p in per_point for k in p}, key=_kind_rank)
    return {k: sum(p.get(k, 0.0) for p in per_point) / len(per_point) for k in kinds}


def kind_change(base: dict[str, float], other: dict[str, float]) -> str:
    """`transpose -12, matmul -3`: ms per token that each kind gained or lost, largest first;
    changes under MIN_CHANGE_SHOWN of the baseline's total are left out."""
    if not base or not other:
        return ""
    floor = MIN_CHANGE_SHOWN * sum(base.values())
    deltas = {k: other.get(k, 0.0) - base.get(k, 0.0) for k in {*base, *other}}
    shown = sorted((d for d in deltas.items() if abs(d[1]) >= floor), key=lambda kv: -abs(kv[1]))
    return ", ".join(f"{kind} {_signed(ms)}" for kind, ms in shown) or "no kind changed"


def fmt_kinds(kinds: dict[str, float]) -> str:
    """`matmul 12.1, elementwise 3.2`: a point's time per kind, ms per token."""
    return ", ".join(f"{kind} {fmt_short(ms)}" for kind, ms in kinds.items())


def top_dispatches(
    dispatches: Sequence[dict[str, Any]], points: Sequence[dict[str, Any]], top: int
) -> list[dict[str, Any]]:
    """Each point's `top` dispatches by time, as records for a table (point columns first)."""
    by_point: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in dispatches:
        by_point[row[Col.POINT_KEY]].append(row)
    records = []
    for point in points:
        # a point measured in repeats is profiled in each: its first profiled repeat speaks
        profile = next((by_point[k] for k in profile_keys(point) if k in by_point), [])
        ranked = sorted(profile, key=lambda r: -r["ms_per_token"])
        for rank, row in enumerate(ranked[:top], start=1):
            records.append({**point, "rank": rank, **_dispatch_fields(row)})
    return records


def _dispatch_fields(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("name", "kind", "calls_per_token", "ms_per_token", "share")
    return {k: row[k] for k in keys}


def _kind_rank(kind: str) -> int:
    return KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)


def _signed(value: float) -> str:
    text = fmt_short(value)
    return text if text.startswith("-") else f"+{text}"
