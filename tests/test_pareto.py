"""`report --pareto [--plots]` and the quality columns in the summary, from synthetic
Parquet rows written by the real `ResultsWriter` (no Ray, no IREE)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sweep.readers import report
from sweep.readers.pareto import label, pareto_front
from sweep.store.results import ResultsWriter
from tests.test_report import md_table, run_main
from workers.measurement import decode_stats

T0 = dt.datetime(2026, 12, 3, 8, 0, tzinfo=dt.UTC)
# (variant, layout, flag set) -> (ms/token, kld_mean, top1_agree)
FORMATS = {
    ("fp32", "out_major", "O3"): (20.0, 0.0, 1.0),
    ("int8-u8", "out_major", "O3"): (15.0, 0.002, 0.98),
    ("int4-ui4", "out_major", "O3"): (12.0, 0.08, 0.85),
    ("int4-ui4", "in_major", "O3"): (14.0, 0.08, 0.85),  # dominated: slower, same KLD
    ("int4-ui4-pc", "out_major", "O3"): (10.0, 0.6, 0.6),
    ("int4", "out_major", "O3"): (16.0, 0.09, 0.84),  # dominated by int8-u8
}


def quality_row(i: int, variant: str, layout: str, flag_set: str, **extra: Any) -> dict[str, Any]:
    ms, kld, top1 = FORMATS[(variant, layout, flag_set)]
    decode = list(np.random.default_rng(i).normal(ms, 0.05, 20))
    return {
        "point_key": f"k{i}",
        "grid": "formats",
        "model": "smollm2-hf",
        "variant": variant,
        "layout": layout,
        "device": "cpu",
        "runtime": "iree",
        "prompt_length": 32,
        "max_seq": 256,
        "flag_set": flag_set,
        "status": "ok",
        "decode_samples_ms": decode,
        **decode_stats(decode),
        "ppl": 12.0 * np.exp(kld),
        "kld_mean": kld,
        "kld_p99": 10 * kld,
        "top1_agree": top1,
        "num_eval_tokens": 765,
        "tokens": [1, 2],
        "reference_tokens": [1, 2],
        "num_tokens_matched": 2,
        "created_at": T0 + dt.timedelta(seconds=i),
        **extra,
    }


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pareto")
    rows = [quality_row(i, *key) for i, key in enumerate(FORMATS)]
    rows.append(
        {
            **quality_row(99, "int4", "out_major", "O3"),
            "point_key": "bad",
            "status": "compile_error",
            "kld_mean": None,
        }
    )
    ResultsWriter(root, "q1").write(rows)
    seeded = [
        quality_row(
            50 + i, *key, ppl=None, kld_mean=None, kld_p99=None, top1_agree=None, fp32_agreement=0.3
        )
        for i, key in enumerate(FORMATS)
    ]
    for r in seeded:
        r["created_at"] -= dt.timedelta(hours=1)
    ResultsWriter(root, "seeded").write(seeded)
    return root


def test_the_front_is_the_rows_nobody_dominates():
    rows = [{"tok_s": 1000 / ms, "kld_mean": kld} for ms, kld, _ in FORMATS.values()]
    front = dict(zip(FORMATS, pareto_front(rows), strict=True))
    assert [k[0] + "/" + k[1] for k, f in front.items() if f] == [
        "fp32/out_major",
        "int8-u8/out_major",
        "int4-ui4/out_major",
        "int4-ui4-pc/out_major",
    ]
    tie = [{"tok_s": 10.0, "kld_mean": 0.1}, {"tok_s": 10.0, "kld_mean": 0.1}]
    assert pareto_front(tie) == [True, True], "equal rows dominate neither"
    assert label(
        {"variant": "int4", "layout": "out_major", "flag_set": "O3", "runtime": "xla"}
    ) == ("int4/out_major/O3/xla")


def test_pareto_report_lists_every_ok_row_and_marks_the_front(
    results: Path, capsys, tmp_path: Path
):
    code, out, err = run_main(
        capsys,
        report,
        "--results",
        str(results),
        "--run",
        "q1",
        "--pareto",
        "--plots",
        "--plots-dir",
        str(tmp_path),
    )
    assert code == 0, err
    above, header, body = md_table(out)
    assert "model: smollm2-hf" in " ".join(above)
    names = [row[header.index("format/layout/flags")] for row in body]
    assert names[0] == "int4-ui4-pc/out_major/O3" and len(names) == len(FORMATS), "fastest first"
    marked = {
        row[header.index("format/layout/flags")]
        for row in body
        if row[header.index("Pareto")] == "*"
    }
    assert marked == {
        "fp32/out_major/O3",
        "int8-u8/out_major/O3",
        "int4-ui4/out_major/O3",
        "int4-ui4-pc/out_major/O3",
    }
    png = tmp_path / "pareto_speed_vs_kld.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(png) in err
    assert [p.name for p in tmp_path.glob("*.png")] == [png.name], "one PNG"


def test_pareto_without_quality_columns_is_exit_2(results: Path, capsys):
    code, _, err = run_main(
        capsys, report, "--results", str(results), "--run", "seeded", "--pareto"
    )
    assert code == 2 and "tokenizer.json" in err


def test_the_summary_shows_quality_or_says_why_not(results: Path, capsys):
    _, out, _ = run_main(
        capsys, report, "--results", str(results), "--run", "q1", "--by", "variant,layout"
    )
    _, header, body = md_table(out)
    assert {"ppl", "KLD", "top-1"} <= set(header) and "vs fp32" not in header
    pc = next(r for r in body if r[0] == "int4-ui4-pc")
    assert pc[header.index("KLD")] == "0.6" and pc[header.index("top-1")] == "60%"
    _, out, _ = run_main(capsys, report, "--results", str(results), "--run", "seeded")
    assert "vs fp32" in out and "noise" in out, "random weights: the report says so"
