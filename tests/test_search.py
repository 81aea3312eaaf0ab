"""The search's rules with a scripted measurement: real Optuna and SQLite, no Ray, no compiler.

`drive` (tests/helpers/search.py) stands in for the scheduler (it asks `refill` whenever
its queue is empty, as `Scheduler.run` does) and `measure` for the workers: a decode time
that O3, the out-major layout and the per-channel int4 format each lower (`EFFECTS`),
that no other switch changes, and a compile error for data tiling. The real search runs
the same code through Ray in tests/test_sweep.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from sweep.plan.config import ConfigError
from sweep.plan.grid import Point, expand
from sweep.search.study import baselines, open_search, trial_ms
from sweep.search.summaries import load_studies, studies_table
from tests.helpers.search import EFFECTS, config, drive, measure


def test_a_search_measures_its_budget_of_distinct_configurations(tmp_path: Path):
    cfg = config(tmp_path, "search.trials=12", "search.parallel=3")
    done: dict[str, dict[str, Any]] = {}
    search, rows = drive(cfg, done)
    assert {(s.variant, s.device) for s in load_studies(cfg.results_dir)} == {
        ("fp32", "cpu"),
        ("int4", "cpu"),
    }
    for study in search.studies:
        assert study.num_told() == 12
        assert [s.listed for s in study.seeds] == ["default/in_major", "O3/in_major"]
        assert len(study.known) == 12 + 2, "12 proposed configurations and the 2 listed"
        first = study.study.trials[0]
        assert first.user_attrs.get("default") and first.user_attrs["flag_set"] == "default"
    baseline_keys = {p.key for p in baselines(cfg, expand(cfg, "weights"))}
    assert len(baseline_keys) == 6, "default and O3 per study at the longest prompt, and XLA"
    assert baseline_keys <= {r["point_key"] for r in rows}
    for summary in load_studies(cfg.results_dir, done):
        assert summary.trials == 12
        assert summary.best_ms <= summary.default_ms, "never worse than the default"
        assert summary.xla_ms == pytest.approx(10.5)
        assert summary.listed is not None and summary.listed[1] == pytest.approx(8.0), "O3"


@pytest.mark.slow  # a search run three times, each to its budget
def test_the_same_command_adds_no_trials_and_a_larger_budget_adds_the_difference(
    tmp_path: Path,
):
    done: dict[str, dict[str, Any]] = {}
    drive(config(tmp_path, "search.trials=12"), done)
    search, rows = drive(config(tmp_path, "search.trials=12"), done)
    assert rows == [], "nothing measured again"
    assert [s.num_told() for s in search.studies] == [12, 12]
    search, rows = drive(config(tmp_path, "search.trials=16"), done)
    assert [s.num_told() for s in search.studies] == [16, 16]
    trial_rows = [r for r in rows if r["point_key"] not in {p.key for p in search.baselines}]
    assert 8 <= len(trial_rows) <= 8 + 2 * 4, "4 new configurations per study (and ablations)"


def test_failed_trials_are_told_as_failures_and_the_search_goes_on(tmp_path: Path):
    from optuna.trial import TrialState

    # a space of 4: opt level default/O3 x data tiling off/on, all of it measured
    cfg = config(
        tmp_path,
        "search.trials=4",
        "search.layouts=[in_major]",
        "search.formats.int4=[int4]",
        "~search.dimensions.aggressive_fusion",
        "~search.dimensions.horizontal_contractions",
        "~search.dimensions.fuse_multi_use",
        "~search.dimensions.generalize_matmul",
        "~search.dimensions.split_reduction",
        "~search.dimensions.ukernels",
        "~search.dimensions.cuda_target",
        "~search.dimensions.opt_level.choices.O1",
    )
    search, rows = drive(cfg, {})
    for study in search.studies:
        assert study.space.size == 4
        told = [t for t in study.study.trials if not t.user_attrs.get("repeat")]
        assert all(t.state == TrialState.COMPLETE for t in told)
        failed = [t for t in told if trial_ms(t) is None]
        assert len(failed) == 2, "data tiling fails with either opt level"
        for t in failed:  # infeasible, so TPE models it; never a time
            assert t.constraints == {"failed": 1.0} and t.value == math.inf
        assert study.best()[2] == pytest.approx(8.0)
        assert study.study.best_value == pytest.approx(8.0), "Optuna's best skips failures"
    assert sum(r["status"] == "compile_error" for r in rows) == 4
    assert all(search.owns(r["point_key"]) for r in rows if r["status"] == "compile_error")


@pytest.mark.slow  # 24 trials, then an ablation of the winner
def test_the_winner_is_ablated_to_the_axes_that_matter(tmp_path: Path):
    cfg = config(tmp_path, "search.trials=24", "search.seed=3")
    search, _ = drive(cfg, {})
    for study in search.studies:
        winner, _, winner_ms = study.best()
        minimal = study.study.user_attrs["minimal"]
        assert minimal["winner"] == winner
        default = study.space.default()
        for axis, choice in minimal["params"].items():
            if choice != default[axis]:
                assert EFFECTS.get(axis) == choice, f"{axis}={choice} changes nothing"
        assert minimal["ms"] <= winner_ms * (1 + cfg.search.ablation_tolerance)
        assert set(minimal["kept"]) | set(minimal["dropped"]) == {
            a for a in winner if winner[a] != default[a]
        }
    table = studies_table(load_studies(cfg.results_dir))
    assert all(r["minimal"] for r in table.records)


def test_an_interrupted_search_resumes_its_running_trials(tmp_path: Path):
    cfg = config(tmp_path, "search.trials=6", "search.parallel=3")
    done: dict[str, dict[str, Any]] = {}
    search = open_search(cfg, expand(cfg, "weights"), done.get)
    for p in search.baselines:
        done[p.key] = measure(p)
    proposed = search.refill()
    assert len(proposed) == 6, "3 in flight per study"
    first = proposed[0]
    done[first.key] = measure(first)  # its row was written, the tell was lost
    # interrupted here: the trials stay RUNNING in the database
    resumed = open_search(cfg, expand(cfg, "weights"), done.get)
    again = resumed.schedule(resumed.refill())
    assert {p.key for p in proposed[1:]} <= {p.key for p in again}, "the rest measured"
    assert first.key not in {p.key for p in again}, "told the row that finished"
    _, rows = drive(cfg, done)
    assert [s.num_told() for s in drive(cfg, done)[0].studies] == [6, 6]
    assert len({r["point_key"] for r in rows}) == len(rows)


def test_a_failure_written_before_an_interruption_is_told_on_resume(tmp_path: Path):
    cfg = config(tmp_path, "search.trials=4", "search.parallel=2", "grid.variants=[fp32]")
    done: dict[str, dict[str, Any]] = {}
    search = open_search(cfg, expand(cfg, "weights"), done.get)
    first = search.refill()[0]
    done[first.key] = {"point_key": first.key, "status": "compile_error"}  # tell lost
    (resumed,) = open_search(cfg, expand(cfg, "weights"), done.get).studies
    resumed.next_points()  # resuming tells the trial left running the row it has
    (trial,) = [t for t in resumed.study.trials if t.user_attrs.get("point_key") == first.key]
    assert trial.constraints == {"failed": 1.0} and trial_ms(trial) is None


def test_a_search_space_is_checked_before_any_work(tmp_path: Path):
    with pytest.raises(ConfigError, match="search.formats.int4"):
        config(tmp_path, "search.formats.int4=[int3]")
    with pytest.raises(ConfigError, match="reserved"):
        config(tmp_path, "+search.dimensions.layout={switch: [--x]}")
    with pytest.raises(ConfigError, match="search.trials=0"):
        config(tmp_path, "search.trials=0")
    with pytest.raises(ConfigError, match="not flags"):
        config(tmp_path, "+search.dimensions.bad={switch: [iree-opt-level]}")


def test_the_sampler_learns_to_avoid_configurations_that_fail(tmp_path: Path):
    """Failures are told as infeasible trials, which TPE models (FAIL trials it would
    ignore): after the random start-up trials, it proposes failing flags less often."""

    def fragile(point: Point) -> dict[str, Any]:  # either switch on breaks the compiler
        broken = {"--iree-opt-data-tiling", "--iree-dispatch-creation-enable-split-reduction"}
        if broken & set(point.flags):
            return {"point_key": point.key, "status": "compile_error", "decode_ms_p50": None}
        return measure(point)

    cfg = config(tmp_path, "search.trials=32", "search.startup_trials=8", "grid.variants=[fp32]")
    search, _ = drive(cfg, {}, fragile)
    (study,) = search.studies
    told = sorted(
        (t for t in study.study.trials if not t.user_attrs.get("repeat")), key=lambda t: t.number
    )
    after_startup = [trial_ms(t) is None for t in told[8:]]
    # at random 3 in 4 configurations fail (two independent switches)
    assert sum(after_startup) < len(after_startup) / 2, after_startup


def test_the_ablation_measures_the_winner_again(tmp_path: Path):
    """The winner's trial time is the least of many noisy ones: a lucky draw. Here every
    first measurement with fuse_multi_use on is 1.5 ms lucky (the switch does nothing),
    so the winner has it on; measured again it is not lucky, and neither is the winner
    without the switch, so the ablation drops it."""

    def lucky(point: Point) -> dict[str, Any]:
        row = measure(point)
        if row["status"] == "ok" and not point.replica:
            row["decode_ms_p50"] -= 1.5 * ("--iree-dispatch-creation-fuse-multi-use" in point.flags)
        return row

    cfg = config(tmp_path, "search.trials=24", "search.seed=3", "grid.variants=[fp32]")
    search, rows = drive(cfg, {}, lucky)
    (study,) = search.studies
    winner, winner_key, winner_ms = study.best()
    assert winner["fuse_multi_use"] == "on", "the lucky switch wins the trials"
    minimal = study.study.user_attrs["minimal"]
    again = [r for r in rows if r["replica"]]
    assert minimal["winner_again_ms"] == pytest.approx(winner_ms + 1.5)
    assert "fuse_multi_use" in minimal["dropped"]
    assert minimal["params"]["fuse_multi_use"] == "off"
    assert len(again) == 1, "one more measurement of the winner"


def test_formats_that_cannot_hold_the_model_are_left_out_and_said(tmp_path: Path):
    """The space offers groups of 128; the tiny model's linears are 64 wide."""
    import io

    from sweep.run import fitting_formats
    from workers.core.config import preset

    cfg = config(tmp_path)
    assert "int4-fac-g128" in cfg.search.formats["int4"]
    out = io.StringIO()
    fitted = fitting_formats(cfg, preset("tiny"), out)
    assert "int4-fac-g128" not in fitted.search.formats["int4"]
    assert "int4-fac-g64" in fitted.search.formats["int4"], "what fits stays"
    assert "search: format int4-fac-g128 left out" in out.getvalue()


@pytest.mark.slow  # a whole search and its ablation, measured on a simulated cluster
def test_the_weights_are_an_axis_where_the_search_offers_them(tmp_path: Path):
    """With `search.weights=[arguments,parameters]` a study proposes how the graphs hold the
    weights (parameters are 4 ms faster here), finds parameters and keeps them in its
    ablation; XLA, which has no parameters, is measured with arguments. Without the axis
    a study's space is what it was."""

    def faster_as_parameters(point: Point) -> dict[str, Any]:
        row = measure(point)
        if row["decode_ms_p50"] is not None and point.weights == "parameters":
            row["decode_ms_p50"] -= 4.0
        return row

    plain = config(tmp_path / "plain", "search.trials=4")
    without, _ = drive(plain, {})
    assert without.studies and all("weights" not in s.space.axes for s in without.studies)
    cfg = config(tmp_path, "search.trials=16", "search.weights=[arguments,parameters]")
    search, rows = drive(cfg, {}, faster_as_parameters)
    assert {p.weights for p in search.baselines if p.runtime == "xla"} == {"arguments"}
    for study in search.studies:
        assert study.space.axes["weights"] == ("arguments", "parameters")
        winner, _, _ = study.best()
        assert winner["weights"] == "parameters"
        assert "weights" in study.study.user_attrs["minimal"]["kept"]
