"""The flag study end to end: the flags grid on the tiny model, then `report --by flag_set`."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from sweep.plan.config import load_config
from sweep.readers import report
from sweep.run import run_sweep

pytestmark = pytest.mark.slow  # a real Ray cluster and iree-compile

# Three of the study's sets; the others are dropped to keep the test short.
DROPPED = [
    "aggressive-fusion",
    "horizontal-contractions",
    "fuse-multi-use",
    "data-tiling",
    "all-fusion",
    "sm80",
    "sm89",
]


def test_flags_grid_report_shows_speedup_verdict_and_dispatch_change(
    ray_cluster, tmp_path, shared_cache
):
    cfg, resolved = load_config(
        [
            "+grid=flags",
            "model=tiny",
            "grid.devices=[cpu]",
            "grid.max_seq=128",
            "grid.variants=[fp32]",
            "bench.decode_steps=24",
            *(f"~grid.flag_sets.{name}" for name in DROPPED),
            f"results_dir={tmp_path / 'results'}",
            f"cache_dir={shared_cache}",
        ]
    )
    assert sorted(cfg.grid.flag_sets) == ["O3", "default", "generalize-matmul"]
    outcome = run_sweep(cfg, resolved, out=io.StringIO())
    assert outcome.exit_code == 0
    rows = {(r["flag_set"], r["layout"]): r for r in outcome.rows}
    layouts = ("in_major", "out_major")  # the flags grid runs each flag set in both layouts
    assert set(rows) == {
        (f, lay) for f in ("default", "O3", "generalize-matmul") for lay in layouts
    }

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert (
            report.main(
                ["--results", str(tmp_path / "results"), "--by", "flag_set", "--format", "json"]
            )
            == 0
        )
    table = {(r["flag_set"], r["layout"]): r for r in json.loads(out.getvalue())}
    base = rows[("default", "in_major")]  # the baseline of every other record
    for key, row in rows.items():
        got = table[key]
        assert got["dispatch_change"] == row["num_dispatches"] - base["num_dispatches"]
        assert got["num_dispatches"] == row["num_dispatches"]
        if key == ("default", "in_major"):
            assert got["verdict"] == "baseline"
        else:
            assert abs(got["speedup"] - base["decode_ms_p50"] / row["decode_ms_p50"]) < 1e-9
            # a row timed while the host was busy gets no verdict (workers.core.host)
            judged = {"disturbed"} if row["disturbed"] or base["disturbed"] else None
            assert got["verdict"] in (judged or {"faster", "slower", "same"})

    md = io.StringIO()
    with contextlib.redirect_stdout(md):
        assert report.main(["--results", str(tmp_path / "results"), "--by", "flag_set"]) == 0
    header = md.getvalue()
    for column in ("speedup", "verdict", "vs default"):
        assert column in header, header
