"""Speed against quality (`python -m sweep.report --pareto [--plots]`).

The question a format study must answer is not "which is fastest" but "which is
fastest for the quality it keeps". Every ok row of a run with the quality columns
(`workers.perplexity`, a checkpoint with a tokenizer) is a point (decode tok/s,
kld_mean from fp32); a row is on the Pareto front when no other row of its model is
at least as fast with at most its KLD, and strictly better in one. The table lists
every row, fastest first, the front marked; the figure (one PNG) draws them all, one
panel per model, the front joined and highlighted, each point labelled by format,
layout and flag set (and runtime, for XLA).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweep.store.results import Col
from workers.kinds import Layout, Runtime, Status

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from sweep.readers.tables import Table

PNG = "pareto_speed_vs_kld.png"
KLD_FLOOR = 1e-6  # where a log axis draws KLDs of (or near) 0: fp32 against itself


def quality_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ok rows that have a speed and a KLD."""
    return [
        r
        for r in rows
        if r[Col.STATUS] == Status.OK
        and r.get(Col.TOK_S) is not None
        and r.get(Col.KLD_MEAN) is not None
    ]


def pareto_front(rows: Sequence[dict[str, Any]]) -> list[bool]:
    """For each row, whether it is on the front of (more tok_s, less kld_mean)."""

    def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
        no_worse = a[Col.TOK_S] >= b[Col.TOK_S] and a[Col.KLD_MEAN] <= b[Col.KLD_MEAN]
        return no_worse and (a[Col.TOK_S] > b[Col.TOK_S] or a[Col.KLD_MEAN] < b[Col.KLD_MEAN])

    return [not any(dominates(other, row) for other in rows) for row in rows]


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
    from sweep.readers.tables import Column, Table, fmt_kld, fmt_num, metric

    records = []
    for model, members in by_model(rows).items():
        for r, front in zip(members, pareto_front(members), strict=True):
            records.append({**r, Col.MODEL: model, "label": label(r), "front": front})
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
    notes = ["Pareto: no other row of the model is as fast with as little KLD (from fp32)"]
    return Table(records, columns, header, notes=notes)


def pareto_figure(rows: Sequence[dict[str, Any]], title: str = "") -> Figure | str:
    """Decode tok/s against kld_mean (log), one panel per model, the front highlighted."""
    from matplotlib.figure import Figure

    models = by_model(rows)
    if not models:
        return "no ok row has the quality columns (a checkpoint with a tokenizer.json)"
    fig = Figure(figsize=(8, 5.5 * len(models)), layout="constrained")
    for ax, (model, members) in zip(
        fig.subplots(len(models), 1, squeeze=False)[:, 0], models.items(), strict=True
    ):
        front = pareto_front(members)
        x = [max(r[Col.KLD_MEAN], KLD_FLOOR) for r in members]
        y = [r[Col.TOK_S] for r in members]
        ax.scatter(
            x,
            y,
            c=["C3" if f else "C0" for f in front],
            s=[46 if f else 22 for f in front],
            zorder=3,
        )
        on_front = sorted((xi, yi) for xi, yi, f in zip(x, y, front, strict=True) if f)
        if len(on_front) > 1:
            fx, fy = zip(*on_front, strict=True)
            ax.step(
                fx, fy, where="post", color="C3", linewidth=1.2, alpha=0.7, label="Pareto front"
            )
        for xi, yi, r, f in zip(x, y, members, front, strict=True):
            ax.annotate(
                label(r),
                (xi, yi),
                fontsize=7,
                xytext=(4, 3),
                textcoords="offset points",
                fontweight="bold" if f else "normal",
            )
        ax.set_xscale("log")
        ax.set_xlabel(
            f"KL divergence from fp32, mean over the text (nats; below {KLD_FLOOR:g} drawn at it)"
        )
        ax.set_ylabel("decode tok/s (higher is better)")
        ax.set_title(
            f"{model}: speed against quality" + (f"\n{title}" if title else ""), fontsize=9
        )
        ax.grid(True, which="both", alpha=0.3)
        if len(on_front) > 1:
            ax.legend(loc="lower right", fontsize=8)
    return fig


def write_pareto_plot(rows: Sequence[dict[str, Any]], out_dir: Path, title: str = "") -> Path | str:
    """The PNG's path, or a note saying why there is none."""
    figure = pareto_figure(rows, title)
    if isinstance(figure, str):
        return figure
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / PNG
    figure.savefig(path, dpi=110, bbox_inches="tight")
    return path
