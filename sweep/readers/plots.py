"""PNG plots of one run (`python -m sweep.report --plots`), drawn with matplotlib's Agg.

Four questions, one figure each:
  decode_ms_by_variant_device.png  which variant on which device decodes fastest
      (grouped bars of median ms/token, error bars p10-p90; baseline flag set);
  prefill_ms_by_prompt_length.png  how time to first token grows with the prompt
      (one line per variant and device; baseline flag set);
  flag_sets_vs_dispatches.png      what each flag set buys against the baseline:
      ms/token against the decode graph's dispatch count, one labelled point per
      flag set, one panel per variant x device x runtime x layout (their scales differ);
  time_by_dispatch_kind.png        where a profiled step's time goes: dispatch time
      per kind, stacked, beside the measured ms/token (profile=true only).
A figure the data cannot make (one prompt length, one flag set) is skipped with a
note. Only `Figure` objects are used, never pyplot: no global state, no display.
Numbers are the medians of `sweep.readers.analysis` over the ok rows, pooling prompt lengths
(and max_seq values) where a figure has no axis for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sweep.plan.grid import point_label
from sweep.readers import analysis
from sweep.readers import dispatches as profiles
from sweep.readers.tables import fmt_ratio, fmt_short
from sweep.store.results import Col
from workers.core.kinds import Status

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

LOG_SCALE_RATIO = 20.0  # a log axis when the largest value is this many times the smallest


def write_plots(
    rows: Sequence[dict[str, Any]],
    out_dir: Path,
    title: str = "",
    dispatches: Sequence[dict[str, Any]] = (),
) -> tuple[list[Path], list[str]]:
    """Write the figures the rows can make into out_dir: (paths written, notes on skips)."""
    ok = [r for r in rows if r[Col.STATUS] == Status.OK and r.get(Col.DECODE_MS_P50) is not None]
    if not ok:
        return [], ["no ok rows with timings: no plots"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, notes = [], []
    for name, draw in (
        ("decode_ms_by_variant_device.png", _decode_bars),
        ("prefill_ms_by_prompt_length.png", _prefill_lines),
        ("flag_sets_vs_dispatches.png", _flag_scatter),
        ("time_by_dispatch_kind.png", lambda r, t: _kind_bars(r, t, dispatches)),
    ):
        fig_or_note = draw(ok, title)
        if isinstance(fig_or_note, str):
            notes.append(f"skipped {name}: {fig_or_note}")
            continue
        path = out_dir / name
        fig_or_note.savefig(path, dpi=110, bbox_inches="tight")
        paths.append(path)
    return paths, notes


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def baseline_rows(rows: Sequence[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """The rows of the baseline flag set (else the most common one) and its name."""
    names = [r[Col.FLAG_SET] for r in rows]
    name = (
        analysis.BASELINE_FLAG_SET
        if analysis.BASELINE_FLAG_SET in names
        else max(sorted(set(names), key=str), key=names.count)
    )
    return name, [r for r in rows if r[Col.FLAG_SET] == name]


def _series_label(key: tuple[Any, ...], runtimes: set[Any]) -> str:
    """'cpu' or, when runtimes differ, 'cpu/xla'."""
    device, runtime = key
    return f"{device}/{runtime}" if len(runtimes) > 1 else str(device)


def _maybe_log(ax: Axes, values: Sequence[float], axis: str = "y") -> None:
    positive = [v for v in values if v and v > 0]
    if positive and max(positive) / min(positive) >= LOG_SCALE_RATIO:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


def _decode_bars(rows: list[dict[str, Any]], title: str) -> Figure | str:
    flag_set, rows = baseline_rows(rows)
    variants = [k[0] for k, _ in analysis.group_rows(rows, [Col.VARIANT])]
    runtimes = {r[Col.RUNTIME] for r in rows}
    series = analysis.group_rows(rows, [Col.DEVICE, Col.RUNTIME])
    fig = _figure(max(6.0, 1.6 * len(variants) * max(1, len(series)) ** 0.5 + 2), 4.5)
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    all_values = []
    for i, (key, members) in enumerate(series):
        by_variant = dict(analysis.group_rows(members, [Col.VARIANT]))
        stats = [analysis.timing_summary(by_variant.get((v,), [])) for v in variants]
        p50 = np.array([s[Col.DECODE_MS_P50] or np.nan for s in stats])
        lo = np.array([s[Col.DECODE_MS_P10] or np.nan for s in stats])
        hi = np.array([s[Col.DECODE_MS_P90] or np.nan for s in stats])
        x = np.arange(len(variants)) + (i - (len(series) - 1) / 2) * width
        ax.bar(
            x, p50, width, label=_series_label(key, runtimes), yerr=[p50 - lo, hi - p50], capsize=3
        )
        for xi, value, top in zip(x, p50, hi, strict=True):
            if np.isfinite(value):  # the median, above the p90 cap
                ax.annotate(
                    fmt_short(value),
                    (xi, top),
                    textcoords="offset points",
                    xytext=(0, 3),
                    ha="center",
                    fontsize=8,
                )
        all_values += [v for v in p50 if np.isfinite(v)]
    _maybe_log(ax, all_values)
    ax.set_xticks(np.arange(len(variants)), [str(v) for v in variants])
    ax.set_xlabel("weight variant")
    ax.set_ylabel("decode ms/token (median; bars p10-p90)")
    ax.set_title(f"Decode latency by variant and device (flag set {flag_set}; lower is better)")
    ax.legend(title=Col.DEVICE)
    ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=9, x=0.01, ha="left")
    return fig


def _prefill_lines(rows: list[dict[str, Any]], title: str) -> Figure | str:
    flag_set, rows = baseline_rows(rows)
    rows = [r for r in rows if r.get(Col.PREFILL_MS) is not None]
    lengths = sorted({r[Col.PROMPT_LENGTH] for r in rows if r[Col.PROMPT_LENGTH] is not None})
    if len(lengths) < 2:
        return f"needs 2 or more prompt lengths, the run has {lengths}"
    runtimes = {r[Col.RUNTIME] for r in rows}
    fig = _figure(7.0, 4.5)
    ax = fig.add_subplot()
    all_values = []
    for (variant, device, runtime), members in analysis.group_rows(
        rows, [Col.VARIANT, Col.DEVICE, Col.RUNTIME]
    ):
        points = [
            (length, analysis.median(r[Col.PREFILL_MS] for r in group))
            for (length,), group in analysis.group_rows(members, [Col.PROMPT_LENGTH])
        ]
        xs, ys = zip(*points, strict=True)
        label = f"{variant} {_series_label((device, runtime), runtimes)}"
        ax.plot(xs, ys, marker="o", label=label)
        all_values += list(ys)
    if lengths[-1] / max(lengths[0], 1) >= 8:
        ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(n) for n in lengths])
    _maybe_log(ax, all_values)
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("prefill ms (time to first token, median)")
    ax.set_title(f"Prefill latency by prompt length (flag set {flag_set})")
    ax.legend(title="variant device", fontsize=8)
    ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9, x=0.01, ha="left")
    return fig


def _flag_scatter(rows: list[dict[str, Any]], title: str) -> Figure | str:
    rows = [r for r in rows if r.get(Col.NUM_DISPATCHES) is not None]
    contexts = [
        (key, members)
        for key, members in analysis.group_rows(
            rows, [Col.VARIANT, Col.DEVICE, Col.RUNTIME, Col.LAYOUT]
        )
        if len({r[Col.FLAG_SET] for r in members}) >= 2
    ]
    if not contexts:
        return "needs 2 or more flag sets with dispatch counts on one variant and device"
    num_cols = min(3, len(contexts))
    num_rows = -(-len(contexts) // num_cols)
    fig = _figure(4.6 * num_cols, 3.8 * num_rows)
    for i, (key, members) in enumerate(contexts):
        _flag_panel(fig.add_subplot(num_rows, num_cols, i + 1), key, members)
    fig.suptitle(
        f"{title}\nFlag sets against the {analysis.BASELINE_FLAG_SET} flag set: "
        "ms/token vs dispatches (bars p10-p90; label: speedup)",
        fontsize=10,
    )
    return fig


def _flag_panel(ax: Axes, key: tuple[Any, ...], rows: list[dict[str, Any]]) -> None:
    """One point per flag set; labels of points at one dispatch count stack downwards
    (flag sets that leave the graph alone share the baseline's count)."""
    from matplotlib.ticker import MaxNLocator

    baseline = analysis.BASELINE_FLAG_SET
    stats = {
        name: analysis.timing_summary(m) for (name,), m in analysis.group_rows(rows, [Col.FLAG_SET])
    }
    base = stats.get(baseline)
    order = sorted(
        stats, key=lambda n: (stats[n][Col.NUM_DISPATCHES], -stats[n][Col.DECODE_MS_P50])
    )
    num_at: dict[Any, int] = {}
    for name in order:
        s = stats[name]
        y, x = s[Col.DECODE_MS_P50], s[Col.NUM_DISPATCHES]
        is_base = name == baseline
        ax.errorbar(
            [x],
            [y],
            yerr=[[y - s[Col.DECODE_MS_P10]], [s[Col.DECODE_MS_P90] - y]],
            fmt="*" if is_base else "o",
            ms=13 if is_base else 7,
            capsize=3,
            color="black" if is_base else None,
            zorder=3 if is_base else 2,
        )
        label = f"{name} (baseline)" if is_base else name
        if base and not is_base:
            label += f" ({fmt_ratio(base['decode_ms_p50'] / y)})"
        k = num_at[x] = num_at.get(x, -1) + 1
        ax.annotate(
            label,
            (x, y),
            textcoords="offset points",
            xytext=(8, 4 - 11 * k),
            fontsize=8,
            va="center",
        )
    ax.set_title(" / ".join(str(k) for k in key if k is not None), fontsize=10)
    ax.set_xlabel("dispatches in the decode graph")
    ax.set_ylabel("decode ms/token (median)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.margins(x=0.3, y=0.25)
    ax.grid(alpha=0.3)


def _kind_bars(
    rows: list[dict[str, Any]], title: str, dispatches: Sequence[dict[str, Any]]
) -> Figure | str:
    """Each profiled point's dispatch time per token, stacked by kind (the host's share is
    the bar's gap to the point's measured ms/token, marked)."""
    per_point = profiles.kind_ms(dispatches)
    points = [r for r in rows if r[Col.POINT_KEY] in per_point]
    if not points:
        return "no profiled points (run the sweep with profile=true)"
    points.sort(key=lambda r: analysis.sort_key(tuple(r.get(c) for c in analysis.DEFAULT_BY)))
    kinds = sorted(
        {k for r in points for k in per_point[r[Col.POINT_KEY]]}, key=profiles.KIND_ORDER.index
    )
    fig = _figure(max(6.0, 0.55 * len(points) + 3), 4.8)
    ax = fig.add_subplot()
    x = np.arange(len(points))
    bottom = np.zeros(len(points))
    for kind in kinds:
        heights = np.array([per_point[r[Col.POINT_KEY]].get(kind, 0.0) for r in points])
        ax.bar(x, heights, 0.7, bottom=bottom, label=kind)
        bottom += heights
    ax.scatter(
        x,
        [r[Col.DECODE_MS_P50] for r in points],
        marker="_",
        s=400,
        color="black",
        zorder=3,
        label="measured ms/token",
    )
    labels = [point_label(r) for r in points]
    ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("ms per token")
    ax.set_title("Where a decode step's time goes: dispatch time by kind (IREE profile)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=9, x=0.01, ha="left")
    return fig
