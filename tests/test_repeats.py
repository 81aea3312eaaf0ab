"""`bench.repeats`: every point measured R times, the grid interleaved, merged by readers.

The plan and the scheduler's order are checked on the simulated cluster, the merge and
the verdict on rows written by the real `ResultsWriter`; the slow tests run the smoke
grid with three repeats on the real cluster, twice, and compare the two runs.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sweep.plan.config import ConfigError, load_config
from sweep.readers import analysis, compare, report
from sweep.store.results import ResultsWriter, read_results
from tests.helpers import points, sweep
from tests.helpers.scheduler_sim import SimBackend, node, run
from workers.records import decode_stats

T0 = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)


# --- the plan and the order ------------------------------------------------------------


def test_repeats_are_the_grid_again_with_their_own_keys_and_a_shared_one():
    once = points()
    thrice = points("bench.repeats=3", "profile=true")
    assert len(thrice) == 3 * len(once)
    assert [p.repeat for p in thrice] == [r for r in range(3) for _ in once], "repeat-major"
    assert len({p.key for p in thrice}) == len(thrice), "each repeat is its own point"
    assert not {p.key for p in thrice} & {p.key for p in once}, "a resume never mixes them"
    for i, point in enumerate(thrice):
        assert point.repeat_of == once[i % len(once)].key, "the key of the point measured once"
        assert point.task() == once[i % len(once)].task() or point.repeat == 0
    assert all(p.profile_calls == 0 for p in thrice if p.repeat), "one profile per point"
    assert thrice[len(once)].label == "fp32/cpu/L8/default/r1"
    assert all(p.repeat_of is None for p in once)
    with pytest.raises(ConfigError, match=r"bench.repeats=0"):
        load_config(["+grid=smoke", "bench.repeats=0"])


def test_the_scheduler_runs_a_repeat_of_the_grid_before_the_next():
    todo = points("bench.repeats=3")
    backend = SimBackend([node("a")])
    rows, scheduler = run(backend, todo)
    assert {r["status"] for r in rows} == {"ok"} and len(rows) == len(todo)
    n = len(todo) // 3
    assert [r["repeat"] for r in rows] == [0] * n + [1] * n + [2] * n, "A B C A B C"
    assert scheduler.counters.num_compiles == 12, "repeats share their compiles"
    # Interleaving costs uploads, but weight affinity still orders each repeat: the
    # variant resident at the end of one repeat goes first in the next (2 + 1 + 1).
    assert backend.actors[0].num_uploads == 2 + 1 + 1


# --- merging and verdicts --------------------------------------------------------------


def repeat_rows(run: str, key: str, medians: list[float], seed: int) -> list[dict[str, Any]]:
    """A point's repeats: 40 steps each, 0.5 % noise around each repeat's median."""
    rng = np.random.default_rng(seed)
    rows = []
    for r, ms in enumerate(medians):
        samples = rng.normal(ms, 0.005 * ms, 40).tolist()
        rows.append(
            {
                "run_id": run,
                "point_key": f"{key}-r{r}",
                "repeat": r,
                "repeat_of": key,
                "grid": "smoke",
                "variant": key,
                "device": "cpu",
                "runtime": "iree",
                "flag_set": "default",
                "prompt_length": 8,
                "batch_size": 1,
                "status": "ok",
                "decode_samples_ms": samples,
                **decode_stats(samples),
                "prefill_ms": 2.0 * ms,
                "tokens": [1, 2],
                "reference_tokens": [1, 2],
                "num_tokens_matched": 2,
                "disturbed": False,
                "created_at": T0 + dt.timedelta(seconds=r),
            }
        )
    return rows


def test_repeats_merge_into_one_row_per_point():
    rows = repeat_rows("r1", "fp32", [10.0, 11.0, 10.4], seed=1)
    (merged,) = analysis.merge_repeats(rows)
    p50s = [r["decode_ms_p50"] for r in rows]
    assert merged["point_key"] == "fp32" and merged["repeat"] is None
    assert merged["repeat_p50s"] == p50s and merged["num_repeats"] == 3
    assert merged["decode_ms_p50"] == pytest.approx(float(np.median(p50s)))
    assert merged["tok_s"] == pytest.approx(1000.0 / float(np.median(p50s)))
    assert merged["repeat_spread"] == pytest.approx((max(p50s) - min(p50s)) / np.median(p50s))
    assert len(merged["decode_samples_ms"]) == 3 * 40
    unrepeated = {**rows[0], "repeat": None, "repeat_of": None, "point_key": "x"}
    assert analysis.merge_repeats([unrepeated]) == [unrepeated], "other rows pass as they are"
    failed = [{**r, "status": "runtime_error"} for r in rows]
    (merged,) = analysis.merge_repeats(failed)
    assert merged["status"] == "runtime_error" and merged["num_repeats"] == 0


def test_repeat_verdict_sees_drift_between_repeats():
    # drift between repeats (8 %) far above the noise within one (0.5 %)
    a, b = [100.0, 108.0, 104.0], [103.0, 110.0, 101.0]
    assert (
        analysis.verdict(
            np.random.default_rng(0).normal(100, 0.5, 40),
            np.random.default_rng(1).normal(110, 1, 40),
        )
        == "slower"
    ), "within one repeat the samples alone call it"
    assert analysis.repeat_verdict(a, b) == "same"
    assert analysis.repeat_verdict(a, [2 * x for x in b]) == "slower"
    assert analysis.repeat_verdict([2 * x for x in a], b) == "faster"
    assert analysis.repeat_verdict(a[:2], b[:2]) == "n/a", "below 3 repeats a side"
    # the gap must beat the spread: disjoint but close is "same"
    assert analysis.repeat_verdict([100, 101, 102], [103.5, 104, 105]) == "same"
    assert analysis.repeat_verdict([100, 101, 102], [110, 111, 112]) == "slower"


@pytest.fixture(scope="module")
def drifting(tmp_path_factory) -> Path:
    """Two runs of the same two points whose repeats drift; int4 twice as slow in r2."""
    results = tmp_path_factory.mktemp("repeats") / "results"
    for run_id, seed, factor in (("r1", 0, 1.0), ("r2", 10, 2.0)):
        writer = ResultsWriter(results, run_id)
        rows = repeat_rows(run_id, "fp32", [100.0, 108.0, 104.0][:: 1 if seed else -1], seed)
        rows += repeat_rows(run_id, "int4", [f * factor for f in (200.0, 215.0, 207.0)], seed + 1)
        writer.write(rows)
    return results


def test_compare_judges_repeated_points_on_their_repeats(drifting: Path, capsys) -> None:
    code = compare.main(["r1", "r2", "--results", str(drifting), "--format", "json"])
    out = capsys.readouterr().out
    assert code == 0, out
    points = {p["point_key"]: p for p in json.loads(out)["points"]}
    assert set(points) == {"fp32", "int4"}, "one row per point, under the shared key"
    assert points["fp32"]["verdict"] == "same" and points["fp32"]["basis"] == "repeats"
    assert points["int4"]["verdict"] == "slower"


def test_report_shows_one_row_per_repeated_point(drifting: Path, capsys) -> None:
    code = report.main(["--results", str(drifting), "--run", "r1", "--format", "json"])
    out = capsys.readouterr().out
    assert code == 0, out
    records = json.loads(out)
    records = records.get("records", records) if isinstance(records, dict) else records
    assert {r["variant"]: r["num_rows"] for r in records} == {"fp32": 1, "int4": 1}


# --- on the real cluster ---------------------------------------------------------------


def interleaving(rows: list[dict[str, Any]], num_actors: int) -> None:
    """Asserts that the repeats ran A B C A B C: each point's repeats in order, and a
    repeat of the grid started only once the previous one had (up to the points the
    other actors were still on)."""
    by_point: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_point[row["repeat_of"]].append(row)
    for point_rows in by_point.values():
        point_rows.sort(key=lambda r: r["repeat"])
        assert [r["repeat"] for r in point_rows] == [0, 1, 2]
        for earlier, later in zip(point_rows, point_rows[1:], strict=False):
            assert earlier["finished_at"] <= later["started_at"]
    ordered = sorted(rows, key=lambda r: r["started_at"])
    for r in (1, 2):
        first = next(i for i, row in enumerate(ordered) if row["repeat"] == r)
        late = [row for row in ordered[first:] if row["repeat"] == r - 1]
        assert len(late) <= num_actors - 1, f"repeat {r} began while repeat {r - 1} waited"


@pytest.mark.slow
def test_three_repeats_of_the_smoke_grid_interleave_and_compare_as_same(
    ray_cluster, tmp_path, shared_cache, capsys
):
    runs = []
    for i in range(2):
        # the smoke grid at one prompt length (4 points: fp32, int4 x two flag sets)
        overrides = ("+grid=smoke", "grid.prompt_lengths=[8]", "bench.repeats=3", "rerun=true")
        outcome, text = sweep(tmp_path, shared_cache, *overrides)
        assert outcome.exit_code == 0, text
        assert outcome.num_points == 3 * 4
        runs.append(outcome.run_id)
        rows = [r for r in read_results(tmp_path / "results").to_pylist() if r["run_id"] == runs[i]]
        assert len(rows) == 12 and {r["status"] for r in rows} == {"ok"}
        interleaving(rows, num_actors=2)
    capsys.readouterr()
    code = compare.main([*runs, "--results", str(tmp_path / "results"), "--format", "json"])
    out = capsys.readouterr().out
    assert code == 0, out
    result = json.loads(out)
    verdicts = {p["point_key"]: (p["verdict"], p["basis"]) for p in result["points"]}
    assert len(verdicts) == 4
    assert {basis for _, basis in verdicts.values()} == {"repeats"}
    moved = {k: v for k, (v, _) in verdicts.items() if v in ("faster", "slower")}
    assert not moved, f"unchanged points called {moved}"


def test_the_sweeps_summary_shows_a_repeated_point_once_with_its_spread():
    import io

    from sweep.run import print_summary

    rows = repeat_rows("r1", "fp32", [10.0, 11.0, 10.4], seed=1)
    extra = {"layout": "in_major", "model": "tiny", "threads": 2, "depth": 0}
    rows = [{**r, **extra} for r in rows]
    out = io.StringIO()
    print_summary(rows, out)
    lines = [line for line in out.getvalue().splitlines() if line.startswith("| fp32")]
    assert len(lines) == 1, out.getvalue()
    spread = analysis.merge_repeats(rows)[0]["repeat_spread"]
    assert f"3 ({100 * spread:.1f}%)" in lines[0], lines[0]
    assert "status: ok 3" in out.getvalue(), "the status line still counts every repeat"


def test_a_repeated_points_dispatch_profile_is_found_under_its_repeats_keys():
    """Every repeat is profiled under its own key; the merged row (the key it has when
    measured once) finds them: `report --dispatches` and the flag study's kinds."""
    from sweep.readers import dispatches

    rows = repeat_rows("r1", "fp32", [10.0, 11.0, 10.4], seed=1)
    (merged,) = analysis.merge_repeats(rows)
    assert analysis.profile_keys(merged) == [r["point_key"] for r in rows]
    assert analysis.profile_keys(rows[0]) == [rows[0]["point_key"]]
    profile = [
        {"point_key": rows[1]["point_key"], "name": f"d{i}", "kind": "matmul",
         "calls_per_token": 1.0, "ms_per_token": ms, "share": ms / 6.0}
        for i, ms in enumerate((1.0, 3.0, 2.0))
    ]  # fmt: skip
    top = dispatches.top_dispatches(profile, [merged], 2)
    assert [(r["rank"], r["name"]) for r in top] == [(1, "d1"), (2, "d2")]
