"""`report --pareto [--plots]` and the quality columns in the summary, from synthetic
Parquet rows written by the real `ResultsWriter` (no Ray, no IREE)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sweep.readers import report
from sweep.readers.pareto import (
    KLD,
    PPL,
    TOP1,
    Tolerance,
    label,
    pareto_figure,
    pareto_front,
    quality_levels,
)
from sweep.store.results import ResultsWriter
from tests.helpers.rows import md_table, run_main
from workers.records import decode_stats

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

# one int8 format, two layouts, two flag sets, XLA beside them: every KLD the same but
# for float summation order (1e-9 nats), as issue 38 found on the SmolLM2 GGUF
NOISE = [
    dict(variant="int8-u8", layout="in_major", flag_set="O3", ms=15.0, kld=7.26661e-4),
    dict(variant="int8-u8", layout="out_major", flag_set="O3", ms=15.5, kld=7.26660e-4),
    dict(variant="int8-u8", layout="in_major", flag_set="default", ms=17.0, kld=7.26662e-4),
    dict(variant="int8-u8", layout="out_major", flag_set="default", ms=16.0, kld=7.26669e-4),
    dict(
        variant="int8-u8", layout="out_major", flag_set="O3", ms=25.0, kld=7.26664e-4, runtime="xla"
    ),
]


def quality_row(
    i: int,
    variant: str,
    layout: str,
    flag_set: str,
    ms: float | None = None,
    kld: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One ok row; ms/token, KLD and top-1 from FORMATS unless ms or kld are given."""
    ms_of, kld_of, top1 = FORMATS.get(
        (variant, layout, flag_set), FORMATS[(variant, "out_major", "O3")]
    )
    ms, kld = ms or ms_of, kld_of if kld is None else kld
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
    ResultsWriter(root, "noise").write([quality_row(70 + i, **r) for i, r in enumerate(NOISE)])
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


def strict_front(rows: list[dict[str, Any]]) -> list[bool]:
    """The front before quality levels: strict comparison of tok_s and kld_mean."""

    def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
        no_worse = a["tok_s"] >= b["tok_s"] and a["kld_mean"] <= b["kld_mean"]
        return no_worse and (a["tok_s"] > b["tok_s"] or a["kld_mean"] < b["kld_mean"])

    return [not any(dominates(other, row) for other in rows) for row in rows]


def test_klds_apart_by_float_noise_are_one_level_and_its_fastest_row_the_front():
    rows = [{"tok_s": 1000 / r["ms"], "kld_mean": r["kld"]} for r in NOISE]
    assert quality_levels([r["kld_mean"] for r in rows]) == [0] * len(NOISE)
    assert pareto_front(rows) == [True, False, False, False, False], "the fastest alone"
    assert strict_front(rows) != pareto_front(rows), "the old front went through the noise"
    tie = [{"tok_s": 10.0, "kld_mean": 7e-4}, {"tok_s": 10.0, "kld_mean": 7e-4 + 1e-9}]
    assert pareto_front(tie) == [True, True], "equally fast at one level: neither dominates"
    # fp32 against itself scores about 0 either side: the absolute part of the tolerance
    assert quality_levels([0.0, -1.5e-9, 8e-7, 3e-6]) == [0, 0, 0, 1]


def test_a_level_is_anchored_at_its_best_value_for_each_metric():
    # 0.5% steps: chained they would be one level; anchored, a level spans one tolerance
    assert quality_levels([1.0, 1.005, 1.011, 1.016, 1.0222]) == [0, 0, 1, 1, 2]
    assert quality_levels([0.98, 0.975, 0.95, 1.0], TOP1) == [1, 1, 2, 0], "higher is better"
    # ppl: fp32 11.2305 and int8-u8 11.2710 (docs/results.md) stay apart, float noise does not
    assert quality_levels([11.2305, 11.2710, 11.2305 * (1 + 1e-7)], PPL) == [0, 1, 0]
    top1_rows = [
        {"tok_s": 10.0, "top1_agree": 0.988},
        {"tok_s": 11.0, "top1_agree": 0.9879},
        {"tok_s": 12.0, "top1_agree": 0.78},
    ]
    assert pareto_front(top1_rows, TOP1) == [False, True, True]
    with pytest.raises(ValueError, match="not negative"):
        Tolerance(relative=-0.01, absolute=1e-6)
    assert KLD.tolerance.describe(KLD.unit) == "1% or 1e-06 nats"


def test_distinct_levels_keep_the_front_of_strict_dominance():
    """fp32, int8 and int4 formats, on IREE and beside llama.cpp: every KLD is its own
    level, so the front is the one a strict comparison draws."""
    mixed = [{"tok_s": 1000 / ms, "kld_mean": kld} for ms, kld, _ in FORMATS.values()]
    mixed += [
        {"tok_s": 40.0, "kld_mean": 3.1e-4},  # llama.cpp F32 (float16 KV cache)
        {"tok_s": 70.0, "kld_mean": 0.0019},  # Q8_0: beats int8-u8 (0.002, 5% apart)
        {"tok_s": 90.0, "kld_mean": 0.41},  # Q4_1
        {"tok_s": 60.0, "kld_mean": 0.0019},  # slower at Q8_0's level
    ]
    assert len(set(quality_levels([r["kld_mean"] for r in mixed]))) == len(mixed) - 2
    assert pareto_front(mixed) == strict_front(mixed)
    assert sum(pareto_front(mixed)) == 5


def axes_of(rows: list[dict[str, Any]]) -> list[Any]:
    """The figure's panels, drawn (so tick labels have their places)."""
    figure = pareto_figure(rows)
    assert not isinstance(figure, str), figure
    figure.draw_without_rendering()
    return figure.axes


def overlapping_tick_labels(ax: Any) -> list[tuple[str, str]]:
    """The pairs of x tick labels (major and minor) whose boxes overlap on the drawn axis."""
    shown = [t for t in ax.xaxis.get_ticklabels(which="both") if t.get_visible() and t.get_text()]
    boxes = [(t.get_text(), t.get_window_extent()) for t in shown]
    return [
        (a, b)
        for i, (a, box_a) in enumerate(boxes)
        for b, box_b in boxes[i + 1 :]
        if box_a.overlaps(box_b)
    ]


def plot_rows(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [quality_row(i, **spec) for i, spec in enumerate(specs)]


def test_one_quality_level_is_drawn_as_speed_alone():
    on_gpu = {**NOISE[1], "ms": 30.0, "device": "cuda"}  # its label is NOISE[1]'s
    (ax,) = axes_of(plot_rows([*NOISE, on_gpu]))
    assert "one quality level" in ax.get_title() and ax.get_xscale() == "linear"
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[-1] == "int8-u8/in_major/O3", "the fastest on top"
    assert len(ax.patches) == len(labels) == len(NOISE) + 1, "a bar per row, shared labels too"


@pytest.mark.parametrize(
    "klds",
    [
        [7.26660e-4, 7.4e-4, 7.5e-4],  # two levels 2% apart: the axis must not zoom in
        [0.0, 0.002, 0.08, 0.6],  # fp32 at the floor, int8, int4: over five decades
    ],
)
def test_several_levels_get_a_log_axis_of_a_decade_with_readable_ticks(klds: list[float]):
    specs = [
        dict(variant="int8-u8", layout="out_major", flag_set="O3", ms=10.0 + i, kld=kld)
        for i, kld in enumerate(klds)
    ]
    (ax,) = axes_of(plot_rows(specs))
    lo, hi = ax.get_xlim()
    assert ax.get_xscale() == "log" and hi / lo >= 10, (lo, hi)
    assert "one quality level" not in ax.get_title()
    assert overlapping_tick_labels(ax) == []
    assert any(t.get_text() for t in ax.xaxis.get_ticklabels(which="both")), "ticks are labelled"
    assert labels_past_the_axis(ax) == [], "a point's label runs past the axis frame"


def labels_past_the_axis(ax: Any) -> list[str]:
    """The point labels of a drawn axis that reach beyond its left or right edge."""
    frame = ax.get_window_extent()
    return [
        text.get_text()
        for text in ax.texts
        if text.get_window_extent().x0 < frame.x0 or text.get_window_extent().x1 > frame.x1
    ]


def pareto_report(capsys, results: Path, run: str, plots: Path) -> tuple[str, str]:
    """`report --pareto --plots` of one run, in-process: (stdout, stderr); exit code 0."""
    code, out, err = run_main(
        capsys,
        report,
        *(
            "--results",
            str(results),
            "--run",
            run,
            "--pareto",
            "--plots",
            "--plots-dir",
            str(plots),
        ),
    )
    assert code == 0, err
    return out, err


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pareto_report_lists_every_ok_row_and_marks_the_front(
    results: Path, capsys, tmp_path: Path
):
    out, err = pareto_report(capsys, results, "q1", tmp_path)
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
    assert is_png(png) and str(png) in err
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


def test_pareto_report_on_float_noise_marks_the_fastest_row_and_draws_speed_alone(
    results: Path, capsys, tmp_path: Path
):
    out, err = pareto_report(capsys, results, "noise", tmp_path)
    _, header, body = md_table(out)
    marked = [r[header.index("format/layout/flags")] for r in body if r[header.index("Pareto")]]
    assert marked == ["int8-u8/in_major/O3"], "the fastest row of the one level, alone"
    assert "one quality level" in out
    png = tmp_path / "pareto_speed_vs_kld.png"
    assert is_png(png) and str(png) in err
