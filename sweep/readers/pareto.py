"""Speed against quality (`python -m sweep.report --pareto [--plots]`).

The question a format study must answer is not "which is fastest" but "which is
fastest for the quality it keeps". Every ok row of a run with the quality columns
(`workers.measure.perplexity`, a checkpoint with a tokenizer) is a point (decode tok/s,
kld_mean from fp32).

Quality values closer than their noise are one quality level. Two graphs of the same
weights in the same format (another layout, flag set or runtime) score KLDs that differ
only by float summation order (1e-9 nats); a front drawn through that difference calls
one of them worse for nothing. So a metric's values are grouped into levels, each
anchored at its best value and holding the values within a tolerance of it (`Tolerance`:
1% of the value or 1e-6 nats for KLD, whichever is larger), and a row is on the Pareto
front when no other row of its model is at least as fast at an equal or better level,
and strictly better in one: the fastest row of each level that no faster row of a
better level beats.

The table lists every row, fastest first, the front marked; the figure (one PNG) has
one panel per model. A model whose rows are all one level gets a bar chart of tok/s
(there is no quality axis to draw); otherwise tok/s against KLD on a log axis that spans
at least a decade, so it cannot zoom into noise, the front joined and highlighted, each
point labelled by format, layout and flag set (and runtime, for XLA and llama.cpp).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweep.readers.tables import Column, Table, fmt_kld, fmt_num, metric
from sweep.store.results import Col
from workers.core.kinds import Layout, Runtime, Status

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PNG = "pareto_speed_vs_kld.png"
KLD_FLOOR = 1e-6  # where a log axis draws KLDs of (or near) 0: fp32 against itself
LOG_AXIS_PAD = 1.5  # the KLD axis reaches this factor past the smallest and largest point
LABELLED_MINOR_DECADES = 2.5  # a KLD axis shorter than this labels 2 and 5 of each decade
LABEL_LEFTWARD_FROM = 0.75  # a point past this fraction of the KLD axis has its label left


def quality_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ok rows that have a speed and a KLD."""
    return [
        r
        for r in rows
        if r[Col.STATUS] == Status.OK
        and r.get(Col.TOK_S) is not None
        and r.get(Col.KLD_MEAN) is not None
    ]


@dataclass(frozen=True)
class Tolerance:
    """How far apart two values of a quality metric must be to count as different: more
    than `relative` of the larger one's magnitude and more than `absolute` (in the metric's
    unit). The relative part covers values far from 0; the absolute part covers values at
    or near 0 (fp32's KLD against itself, 0 give or take float noise), where no relative
    bound holds."""

    relative: float
    absolute: float

    def __post_init__(self) -> None:
        if self.relative < 0 or self.absolute < 0:
            raise ValueError(f"a tolerance is not negative: {self}")

    def same(self, a: float, b: float) -> bool:
        return abs(a - b) <= max(self.relative * max(abs(a), abs(b)), self.absolute)

    def describe(self, unit: str = "") -> str:
        """'1% or 1e-06 nats': how the table's note and the plot's title state it."""
        return f"{100 * self.relative:g}% or {self.absolute:g}{f' {unit}' if unit else ''}"


@dataclass(frozen=True)
class QualityMetric:
    """A quality column, which way is better, and the tolerance that makes its levels."""

    column: str
    lower_is_better: bool
    tolerance: Tolerance
    unit: str = ""


KLD = QualityMetric(Col.KLD_MEAN, True, Tolerance(relative=0.01, absolute=1e-6), "nats")
TOP1 = QualityMetric(Col.TOP1_AGREE, False, Tolerance(relative=0.01, absolute=1e-6))
# ppl = exp(mean NLL), so its relative change is a change of mean NLL in nats: 1% would
# give int8's ppl fp32's level where its KLD tells them apart (docs/results.md).
PPL = QualityMetric(Col.PPL, True, Tolerance(relative=1e-3, absolute=1e-6))


def quality_levels(values: Sequence[float], metric: QualityMetric = KLD) -> list[int]:
    """Each value's quality level, 0 the best. A level starts at its best value (its
    anchor) and holds the values within the tolerance of the anchor; anchoring, rather
    than chaining neighbours, keeps a run of values 0.5% apart from merging into one."""
    order = sorted(range(len(values)), key=lambda i: values[i], reverse=not metric.lower_is_better)
    levels = [0] * len(values)
    level, anchor = -1, None
    for i in order:
        if anchor is None or not metric.tolerance.same(anchor, values[i]):
            level, anchor = level + 1, values[i]
        levels[i] = level
    return levels


def pareto_front(rows: Sequence[dict[str, Any]], metric: QualityMetric = KLD) -> list[bool]:
    """For each row, whether it is on the front of (more tok_s, a better quality level)."""
    speeds = [r[Col.TOK_S] for r in rows]
    levels = quality_levels([r[metric.column] for r in rows], metric)

    def dominates(a: int, b: int) -> bool:
        no_worse = speeds[a] >= speeds[b] and levels[a] <= levels[b]
        return no_worse and (speeds[a] > speeds[b] or levels[a] < levels[b])

    return [not any(dominates(j, i) for j in range(len(rows))) for i in range(len(rows))]


def one_quality_level(rows: Sequence[dict[str, Any]]) -> bool:
    """Whether every row's KLD is within the tolerance of the best: no quality axis to draw."""
    return max(quality_levels([r[Col.KLD_MEAN] for r in rows])) == 0


def label(row: dict[str, Any]) -> str:
    """format/layout/flags[/runtime]: what tells two points of one model apart."""
    parts = [
        str(row.get(Col.VARIANT)),
        str(row.get(Col.LAYOUT) or Layout.IN_MAJOR),
        str(row[Col.FLAG_SET]),
    ]
    return "/".join(
        parts + ([row[Col.RUNTIME]] if row.get(Col.RUNTIME) not in (None, Runtime.IREE) else [])
    )


def by_model(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    models: dict[str, list[dict[str, Any]]] = {}
    for r in quality_rows(rows):
        models.setdefault(str(r.get(Col.MODEL)), []).append(r)
    return models


def pareto_table(rows: Sequence[dict[str, Any]], header: dict[str, Any]) -> Table:
    records: list[dict[str, Any]] = []
    notes = [
        "Pareto: no other row of the model is as fast at an equal or better KLD level; "
        f"KLDs (from fp32) within {KLD.tolerance.describe(KLD.unit)} of a level's best "
        "are one level"
    ]
    for model, members in by_model(rows).items():
        for r, front in zip(members, pareto_front(members), strict=True):
            records.append({**r, Col.MODEL: model, "label": label(r), "front": front})
        if one_quality_level(members):
            notes.append(f"{model}: one quality level, so the front is its fastest row")
    records.sort(key=lambda r: (r[Col.MODEL], -r[Col.TOK_S]))

    columns = [
        Column(Col.MODEL, lambda r: r[Col.MODEL], fold=Col.MODEL),
        Column("format/layout/flags", lambda r: r["label"]),
        metric("tok/s", Col.TOK_S),
        metric("ms/tok p50", Col.DECODE_MS_P50),
        metric("KLD mean", Col.KLD_MEAN, fmt_kld),
        metric("KLD p99", Col.KLD_P99, fmt_kld),
        metric("top-1", Col.TOP1_AGREE, lambda v: "" if v is None else f"{100 * v:.1f}%"),
        metric(Col.PPL, Col.PPL, fmt_num),
        Column("Pareto", lambda r: "*" if r["front"] else ""),
    ]
    return Table(records, columns, header, notes=notes)


def pareto_figure(rows: Sequence[dict[str, Any]], title: str = "") -> Figure | str:
    """One panel per model: tok/s by row when its rows are one quality level, else tok/s
    against kld_mean (log), the front highlighted."""
    from matplotlib.figure import Figure

    models = by_model(rows)
    if not models:
        return "no ok row has the quality columns (a checkpoint with a tokenizer.json)"
    one_level = {m: one_quality_level(members) for m, members in models.items()}
    heights = [1.5 + 0.3 * len(ms) if one_level[m] else 5.5 for m, ms in models.items()]
    fig = Figure(figsize=(8, sum(heights)), layout="constrained")
    axes = fig.subplots(len(models), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, (model, members) in zip(axes, models.items(), strict=True):
        draw = _speed_bars if one_level[model] else _speed_against_kld
        draw(ax, members, pareto_front(members))
        ax.set_title(f"{model}: {ax.get_title()}" + (f"\n{title}" if title else ""), fontsize=9)
    return fig


def _speed_bars(ax: Axes, members: list[dict[str, Any]], front: list[bool]) -> None:
    """Speed alone, fastest on top: the rows differ in quality by less than the tolerance."""
    ranked = sorted(zip(members, front, strict=True), key=lambda rf: rf[0][Col.TOK_S])
    speeds = [r[Col.TOK_S] for r, _ in ranked]
    positions = range(len(ranked))  # not the labels: two rows may share one (another device)
    bars = ax.barh(positions, speeds, color=["C3" if f else "C0" for _, f in ranked])
    ax.set_yticks(positions, [label(r) for r, _ in ranked])
    ax.bar_label(bars, labels=[f"{v:.3g}" for v in speeds], fontsize=7, padding=3)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlim(0, 1.12 * max(speeds))
    ax.set_xlabel("decode tok/s (higher is better; red: the fastest, the front)")
    klds = [r[Col.KLD_MEAN] for r in members]
    lo, hi = fmt_kld(min(klds)), fmt_kld(max(klds))
    ax.set_title(
        f"one quality level: KLD from fp32 {lo if lo == hi else f'{lo} to {hi}'} nats, "
        f"within {KLD.tolerance.describe(KLD.unit)}; speed alone"
    )
    ax.grid(True, axis="x", alpha=0.3)


def _speed_against_kld(ax: Axes, members: list[dict[str, Any]], front: list[bool]) -> None:
    """tok/s against KLD on a log axis of at least a decade, the front a red step line."""
    x = [max(r[Col.KLD_MEAN], KLD_FLOOR) for r in members]
    y = [r[Col.TOK_S] for r in members]
    ax.scatter(
        x, y, c=["C3" if f else "C0" for f in front], s=[46 if f else 22 for f in front], zorder=3
    )
    on_front = sorted((xi, yi) for xi, yi, f in zip(x, y, front, strict=True) if f)
    if len(on_front) > 1:
        fx, fy = zip(*on_front, strict=True)
        ax.step(fx, fy, where="post", color="C3", linewidth=1.2, alpha=0.7, label="Pareto front")
        ax.legend(loc="lower right", fontsize=8)
    _log_axis_of_a_decade(ax, x)
    for xi, yi, r, f in zip(x, y, members, front, strict=True):
        leftward = _in_the_right_part(ax, xi)
        ax.annotate(
            label(r),
            (xi, yi),
            fontsize=7,
            xytext=(-4 if leftward else 4, 3),
            textcoords="offset points",
            ha="right" if leftward else "left",
            fontweight="bold" if f else "normal",
        )
    ax.set_xlabel(
        f"KL divergence from fp32, mean over the text (nats; below {KLD_FLOOR:g} drawn at "
        f"it; within {KLD.tolerance.describe(KLD.unit)}: one level)"
    )
    ax.set_ylabel("decode tok/s (higher is better)")
    ax.set_title("speed against quality")
    ax.grid(True, which="both", alpha=0.3)


def _in_the_right_part(ax: Axes, x: float) -> bool:
    """Whether a point sits in the right part of its log x axis, where a label written to
    its right would run past the axis frame (and so is written to its left)."""
    lo, hi = ax.get_xlim()
    return math.log(x / lo) / math.log(hi / lo) > LABEL_LEFTWARD_FROM


def _log_axis_of_a_decade(ax: Axes, values: Sequence[float]) -> None:
    """A log x axis around the values, widened to at least one decade so that it cannot
    zoom into noise; labels on the decades, and on 2 and 5 within them while the axis spans
    few decades (matplotlib's own choice labels every minor tick of a short log axis, and
    they overlap)."""
    from matplotlib.ticker import LogFormatterSciNotation, LogLocator, NullFormatter

    lo, hi = min(values) / LOG_AXIS_PAD, max(values) * LOG_AXIS_PAD
    if hi / lo < 10:
        middle = math.sqrt(lo * hi)
        lo, hi = middle / math.sqrt(10), middle * math.sqrt(10)
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_locator(LogLocator(base=10))
    ax.xaxis.set_major_formatter(LogFormatterSciNotation(base=10))
    few_decades = math.log10(hi / lo) < LABELLED_MINOR_DECADES
    ax.xaxis.set_minor_locator(LogLocator(base=10, subs=(2, 5) if few_decades else "auto"))
    ax.xaxis.set_minor_formatter(
        LogFormatterSciNotation(base=10, labelOnlyBase=False, minor_thresholds=(100, 100))
        if few_decades
        else NullFormatter()
    )


def write_pareto_plot(rows: Sequence[dict[str, Any]], out_dir: Path, title: str = "") -> Path | str:
    """The PNG's path, or a note saying why there is none."""
    figure = pareto_figure(rows, title)
    if isinstance(figure, str):
        return figure
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / PNG
    figure.savefig(path, dpi=110, bbox_inches="tight")
    return path
