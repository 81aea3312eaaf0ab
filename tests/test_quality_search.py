"""A search bounded by quality (`search.max_kld`, `search.min_top1`): real Optuna and SQLite,
the measurement scripted as in tests/helpers/search.py, now with the quality columns.

The scripted model: per-channel int4 (`int4-ui4-pc`) is the fastest format and the
worst (KLD 0.5, top-1 70%), the grouped formats keep KLD 0.04 (top-1 90%), fp32 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sweep.plan.config import ConfigError
from sweep.plan.eval_text import check_quality_bound
from sweep.plan.grid import Point
from sweep.search.study import QUALITY, QualityBound, trial_ms, verdict
from sweep.search.summaries import load_studies, studies_table
from tests.helpers.search import config, drive, measure

# The scripted formats, whatever conf/search/flags.yaml offers besides them.
FORMATS = "search.formats.int4=[int4,int4-ui4,int4-ui4-f16,int4-ui4-pc]"
KLD = {"int4-ui4-pc": 0.5, "fp32": 0.0}
TOP1 = {"int4-ui4-pc": 0.7, "fp32": 1.0}


def measure_quality(point: Point) -> dict[str, Any]:
    """`measure`'s row with the scripted quality columns."""
    row = {**measure(point), "variant": point.variant.name}
    if row["status"] == "ok":
        row["kld_mean"] = KLD.get(point.variant.name, 0.04)
        row["top1_agree"] = TOP1.get(point.variant.name, 0.9)
    return row


def test_the_bound_reads_a_row_as_llama_cpps_columns():
    row = {"status": "ok", "decode_ms_p50": 5.0, "kld_mean": 0.2, "top1_agree": 0.8}
    assert verdict(row, QualityBound()) == (5.0, "failed"), "no bound: the time"
    assert verdict(row, QualityBound(max_kld=0.25)) == (5.0, "failed")
    assert verdict(row, QualityBound(max_kld=0.1)) == (None, QUALITY)
    assert verdict(row, QualityBound(min_top1=0.9)) == (None, QUALITY)
    assert verdict({**row, "kld_mean": None}, QualityBound(max_kld=1.0)) == (None, QUALITY), (
        "unknown quality is outside a bound"
    )
    failed = {"status": "compile_error", "decode_ms_p50": None}
    assert verdict(failed, QualityBound(max_kld=1.0)) == (None, "failed")


@pytest.mark.slow  # a whole search per bound
@pytest.mark.parametrize("bound", ["search.max_kld=0.1", "search.min_top1=0.8"])
def test_a_trial_outside_the_bound_is_infeasible_and_never_best(tmp_path: Path, bound: str):
    cfg = config(tmp_path, "search.trials=16", "search.seed=1", FORMATS, bound)
    search, rows = drive(cfg, {}, measure_quality)
    int4 = next(s for s in search.studies if s.space.formats[0] == "int4")
    told = [t for t in int4.study.trials if not t.user_attrs.get("repeat")]
    per_channel = [t for t in told if t.params.get("format") == "int4-ui4-pc"]
    outside = [t for t in per_channel if t.params["data_tiling"] == "off"]  # on: compile error
    assert outside, "the sampler proposed the per-channel format (the fastest)"
    for t in outside:
        assert t.constraints == {QUALITY: 1.0} and trial_ms(t) is None
    params, _, best_ms = int4.best()
    assert params["format"] != "int4-ui4-pc"
    int4_rows = [r for r in rows if r["status"] == "ok" and r["variant"].startswith("int4")]
    inside = [r["decode_ms_p50"] for r in int4_rows if r["variant"] != "int4-ui4-pc"]
    assert best_ms == min(inside), "the best is the fastest row inside the bound"
    minimal = int4.study.user_attrs["minimal"]
    assert minimal["params"]["format"] != "int4-ui4-pc", "the ablation keeps to the bound"

    by_key = {r["point_key"]: r for r in rows}
    summaries = {s.variant: s for s in load_studies(cfg.results_dir, by_key)}
    s = summaries["int4"]
    assert s.outside == len(outside) and s.best_ms == best_ms
    assert s.best_kld == 0.04 and s.best_top1 == 0.9
    table = studies_table(list(summaries.values()))
    assert any("quality bound of int4/cpu" in n for n in table.notes)
    assert summaries["fp32"].outside == 0, "fp32 is inside any bound"


def test_without_a_bound_the_fastest_wins(tmp_path: Path):
    cfg = config(tmp_path, "search.trials=16", "search.seed=1", FORMATS)
    search, _ = drive(cfg, {}, measure_quality)
    int4 = next(s for s in search.studies if s.space.formats[0] == "int4")
    assert int4.best()[0]["format"] == "int4-ui4-pc"


def test_bounds_are_checked_before_any_work(tmp_path: Path):
    with pytest.raises(ConfigError, match="search.max_kld=-0.1"):
        config(tmp_path, "search.max_kld=-0.1")
    with pytest.raises(ConfigError, match="search.min_top1=1.5"):
        config(tmp_path, "search.min_top1=1.5")
    cfg = config(tmp_path, "search.max_kld=0.1")
    with pytest.raises(ConfigError, match="tokenizer.json"):
        check_quality_bound(cfg, None)  # seeded weights: no text, no quality columns
