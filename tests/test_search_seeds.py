"""A search's answer is never worse than what its run measured, and a switch known to break
the graph is learned once: real Optuna and SQLite on the tiny model's smoke grid, the
measurement scripted as in tests/test_search.py (tests/test_sweep.py runs the real thing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sweep.plan.grid import Point, expand
from sweep.search.study import BROKEN, open_search
from sweep.search.summaries import answers_table, load_studies, studies_text
from tests.helpers.search import config, drive, measure

SPLIT = "--iree-dispatch-creation-enable-split-reduction"
ARGMAX_ERROR = (
    "iree-compile failed (exit code 1):\nmodel.mlir:5:11: error: 'linalg.generic' op "
    "Failed to anaysis the reduction operation.\n%1:2 = stablehlo.reduce(...)"
)


def listed_fast(point: Point) -> dict[str, Any]:
    """The grid's O3 flag set, exactly as listed, at 2 ms: nothing the sampler can add to
    it or take from it is as fast (every other configuration keeps test_search's times)."""
    row = measure(point)
    if row["status"] == "ok" and point.flags == ("--iree-opt-level=O3",):
        row["decode_ms_p50"] = 2.0 if point.layout == "in_major" else 2.5
    return row


def test_a_listed_flag_set_that_beats_every_trial_is_the_answer(tmp_path: Path):
    cfg = config(tmp_path, "search.trials=8", "grid.variants=[fp32]")
    search, rows = drive(cfg, {}, listed_fast)
    (study,) = search.studies
    o3 = next(p for p in search.baselines if p.flag_set == "O3")
    proposed = [
        t
        for t in study.study.trials
        if not t.user_attrs.get("seed") and not t.user_attrs.get("repeat")
    ]
    assert len(proposed) == 8 and all(t.value > 2.0 for t in proposed), "the sampler's: slower"
    params, key, ms = study.best()
    assert (key, ms) == (o3.key, 2.0), "the listed row is the study's best"
    minimal = study.study.user_attrs["minimal"]
    assert minimal["of_point_key"] == o3.key, "the ablation starts from it"
    assert minimal["params"]["opt_level"] == "O3" and minimal["kept"] == ["opt_level"]

    by_key = {r["point_key"]: r for r in rows}
    (summary,) = load_studies(cfg.results_dir, by_key)
    answer = summary.answer
    assert answer is not None
    assert (answer.config, answer.ms, answer.origin) == ("opt_level=O3", 2.0, "listed O3/in_major")
    assert summary.best_ms == 2.0 and summary.vs_listed == 1.0
    (line,) = answers_table([summary]).records
    assert line["answer_origin"] == "listed O3/in_major"
    text = studies_text([summary])
    assert "| opt_level=O3 |" in text and "listed O3/in_major" in text, text


def test_seeds_use_no_budget_and_a_resumed_study_does_not_enqueue_them_again(tmp_path: Path):
    done: dict[str, dict[str, Any]] = {}
    cfg = config(tmp_path, "search.trials=4", "grid.variants=[fp32]", "grid.layouts=[in_major]")
    drive(cfg, done)
    search, rows = drive(cfg, done)
    assert rows == [], "the same command measures nothing"
    (study,) = search.studies
    seeds = [t.user_attrs["point_key"] for t in study.study.trials if t.user_attrs.get("seed")]
    assert len(seeds) == len(set(seeds)) == 2, "default and O3, once each"
    assert study.num_told() == 4, "the budget counts only what the sampler proposed"

    # the grid lists one more flag set: only it is seeded into the resumed study
    more = config(
        tmp_path,
        "search.trials=4",
        "grid.variants=[fp32]",
        "grid.layouts=[in_major]",
        "+grid.flag_sets.tiled=[--iree-opt-data-tiling]",
    )
    (resumed,) = drive(more, done)[0].studies
    seeds = [t.user_attrs["listed_as"] for t in resumed.study.trials if t.user_attrs.get("seed")]
    assert sorted(seeds) == ["O3/in_major", "default/in_major", "tiled/in_major"], seeds


def test_a_listed_flag_set_that_fails_is_still_the_sweeps_failure(tmp_path: Path):
    """Told to its study as a seed, a listed point stays a baseline: its failure fails the
    sweep (exit 1), where a proposed configuration's failure is the search's data."""
    cfg = config(tmp_path, "search.trials=4", "grid.variants=[fp32]")

    def o3_fails(point: Point) -> dict[str, Any]:
        row = measure(point)
        return {**row, "status": "compile_error"} if point.flag_set == "O3" else row

    search, rows = drive(cfg, {}, o3_fails)
    (failed,) = [r["point_key"] for r in rows if r["flag_set"] == "O3"]
    assert next(r for r in rows if r["point_key"] == failed)["status"] == "compile_error"
    (study,) = search.studies
    assert failed in study.seeded and not search.owns(failed)


def test_a_listed_format_inside_a_study_space_is_seeded_into_it(tmp_path: Path):
    cfg = config(tmp_path, "grid.variants=[int4,int4-ui4]", "grid.layouts=[in_major]")
    search = open_search(cfg, expand(cfg, "weights"), {}.get)
    by_variant = {s.space.formats[0]: s for s in search.studies}
    assert [s.listed for s in by_variant["int4"].seeds] == [
        "default/in_major",
        "O3/in_major",
        "int4-ui4/default/in_major",
        "int4-ui4/O3/in_major",
    ]
    assert [s.listed for s in by_variant["int4-ui4"].seeds] == [
        "default/in_major",
        "O3/in_major",
    ], "int4's format is not in int4-ui4's space"


def test_a_flag_set_the_space_cannot_spell_is_not_a_seed(tmp_path: Path):
    cfg = config(tmp_path, "grid.variants=[fp32]", "+grid.flag_sets.odd=[--iree-other-flag]")
    (study,) = open_search(cfg, expand(cfg, "weights"), {}.get).studies
    assert "odd/in_major" not in [s.listed for s in study.seeds]
    o3 = next(p for p in study_baselines(cfg) if p.flag_set == "O3")
    assert study.space.params_of(o3) == {**study.space.default(), "opt_level": "O3"}
    odd = next(p for p in study_baselines(cfg) if p.flag_set == "odd")
    assert study.space.params_of(odd) is None


def study_baselines(cfg: Any) -> list[Point]:
    return open_search(cfg, expand(cfg, "weights"), {}.get).baselines


def argmax_breaks(point: Point) -> dict[str, Any]:
    """Split reduction breaks the argmax, as IREE 3.13 does on a wide vocabulary."""
    if SPLIT in point.flags:
        return {**measure(point), "status": "compile_error", "error_message": ARGMAX_ERROR}
    return measure(point)


def test_a_switch_that_breaks_the_argmax_is_learned_once_and_proposed_no_more(tmp_path: Path):
    """Four trials in flight (the default): those holding the switch wait for the first
    one's answer instead of compiling beside it, so the switch costs one compile."""
    cfg = config(tmp_path, "search.trials=24", "search.seed=2", "grid.variants=[fp32]")
    assert cfg.search.parallel == 4
    search, rows = drive(cfg, {}, argmax_breaks)
    (study,) = search.studies
    split_trials = [t for t in study.study.trials if t.params.get("split_reduction") == "on"]
    skipped = [t for t in split_trials if t.user_attrs.get("skipped")]
    compiled = {t.user_attrs["point_key"] for t in split_trials} - {
        t.user_attrs["point_key"] for t in skipped
    }
    assert len(compiled) == 1, "one configuration with the switch compiled, then no more"
    assert [r["status"] for r in rows if r["point_key"] in compiled] == ["compile_error"]
    assert skipped, "the sampler proposed it again, and was told without a compile"
    for t in skipped:
        assert t.user_attrs["skipped"] == "split_reduction=on"
        assert t.constraints == {BROKEN: 1.0}
    assert study.num_told() == 24, "skipped proposals use no budget"
    broken = study.study.user_attrs[BROKEN]["split_reduction=on"]
    assert broken["graph"].startswith("the greedy argmax") and broken["choice"] == "on"

    (summary,) = load_studies(cfg.results_dir, {r["point_key"]: r for r in rows})
    assert summary.skipped == len(skipped) and "split_reduction=on" in summary.broken
    text = studies_text([summary])
    assert "broken in fp32/cpu: split_reduction=on breaks the greedy argmax" in text, text


def test_a_switch_that_compiles_is_cleared_and_its_waiting_trials_measured(tmp_path: Path):
    """The same space where split reduction compiles (test_search's times): the proposals
    that waited for the first one's answer are measured, none is skipped."""
    cfg = config(tmp_path, "search.trials=16", "grid.variants=[fp32]")
    search, rows = drive(cfg, {})
    (study,) = search.studies
    with_split = {
        t.user_attrs["point_key"]
        for t in study.study.trials
        if t.params.get("split_reduction") == "on"
    }
    assert len(with_split) > 1, "the sampler proposed the switch more than once"
    assert with_split <= {r["point_key"] for r in rows}, "each of them measured"
    assert not any(t.user_attrs.get("skipped") for t in study.study.trials)
    assert study.breaks.compiled == {"split_reduction=on"} and not study.breaks.learned
    assert not study.held and study.num_told() == 16
