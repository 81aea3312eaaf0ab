"""Tables the readers print: cells (number formatting), columns, and markdown, csv and json.

Like llama-bench's compare script, a markdown table shows only the columns that vary:
the others are folded into a header line above it. csv and json keep every column and
the raw numbers, for scripts.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sweep.readers import analysis
from sweep.store.results import Col

# --- cells -----------------------------------------------------------------------------


def fmt_num(value: float | None) -> str:
    """Three significant-ish digits for ms, s, tok/s; '' for a missing value."""
    if value is None:
        return ""
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if abs(value) >= 0.1 or value == 0 else f"{value:.2g}"


def fmt_short(value: float) -> str:
    """Compact, for labels and prose: 12.3, 3, 0.5, 454."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def fmt_kld(value: float | None) -> str:
    """A KL divergence: four significant digits (0.00073, 0.245)."""
    return "" if value is None else f"{value:.4g}"


def fmt_ratio(value: float | None) -> str:
    """A speedup or ratio: 1.07x."""
    return "" if value is None else f"{value:.2f}x"


def fmt_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return fmt_num(value) if not value.is_integer() else str(int(value))
    return str(value)


def fmt_bytes(value: float | None) -> str:
    if value is None:
        return ""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{int(value)} B"


def fmt_signed(value: float | None) -> str:
    if value is None:
        return ""
    return "0" if value == 0 else f"{value:+g}"


def fmt_percent(fraction: float | None) -> str:
    """4.1%, 38%, and two significant digits below 1% (a CPU's 0.031%)."""
    if fraction is None:
        return ""
    percent = 100.0 * fraction
    return (
        f"{percent:.2g}%"
        if percent < 1
        else f"{percent:.1f}%"
        if percent < 10
        else f"{percent:.0f}%"
    )


def fmt_spread(record: dict[str, Any]) -> str:
    lo, hi = record.get(Col.DECODE_MS_P10), record.get(Col.DECODE_MS_P90)
    return "" if lo is None or hi is None else f"{fmt_num(lo)}-{fmt_num(hi)}"


def fmt_matched(record: dict[str, Any]) -> str:
    matched, total = record.get(Col.NUM_TOKENS_MATCHED), record.get("num_tokens")
    return "" if matched is None else f"{matched}/{total}"


def fmt_statuses(counts: dict[str, int]) -> str:
    return ", ".join(f"{status} {n}" for status, n in counts.items())


# --- tables ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Column:
    """A markdown column: its title and how to show a record in it."""

    title: str
    cell: Callable[[dict[str, Any]], str]
    right: bool = False  # numbers align right
    fold: str | None = None  # a point column: folded into the header when constant


@dataclasses.dataclass
class Table:
    """Records (raw numbers, for csv and json) and how markdown shows them."""

    records: list[dict[str, Any]]
    columns: list[Column]
    header: dict[str, Any]  # context printed above a markdown table
    notes: list[str] = dataclasses.field(default_factory=list)  # lines below it
    json_obj: Any = None  # what json prints, when not the records


def key_column(name: str) -> Column:
    numeric = name in (
        Col.GROUP_SIZE,
        Col.PROMPT_LENGTH,
        Col.PROMPT_BUCKET,
        Col.MAX_SEQ,
        Col.BATCH_SIZE,
        Col.DEPTH,
        Col.ATTENTION_SPAN,
        Col.STEPS_PER_CALL,
    )
    return Column(name, lambda r: fmt_value(r.get(name)), right=numeric, fold=name)


def metric(title: str, key: str, fmt: Callable[[Any], str] = fmt_num) -> Column:
    return Column(title, lambda r: fmt(r.get(key)), right=True)


# --- rendering -------------------------------------------------------------------------


def render(table: Table, fmt: str) -> str:
    if fmt == "md":
        return render_md(table)
    if fmt == "csv":
        return render_csv(table.records)
    return json.dumps(
        table.records if table.json_obj is None else table.json_obj, indent=2, default=str
    )


def render_md(table: Table) -> str:
    """A pipe table padded for a terminal; constant point columns go to the header line."""
    header = dict(table.header)
    shown: list[tuple[Column, list[str]]] = []
    for col in table.columns:
        cells = [col.cell(r).replace("|", "\\|") for r in table.records]
        if col.fold and table.records and len(set(cells)) == 1:
            if cells[0]:
                header[col.fold] = cells[0]
            continue
        shown.append((col, cells))
    order = {name: i for i, name in enumerate(("run", "A", "B", *analysis.POINT_COLUMNS))}
    items = sorted(header.items(), key=lambda kv: order.get(kv[0], len(order)))
    lines = ["  ".join(f"{k}: {v}" for k, v in items), ""] if items else []
    lines += _pipe_table(shown, len(table.records)) if table.records else ["(no rows)"]
    if table.notes:
        lines += ["", *table.notes]
    return "\n".join(lines)


def _pipe_table(shown: list[tuple[Column, list[str]]], num_rows: int) -> list[str]:
    widths = [max(len(col.title), 3, *(len(c) for c in cells)) for col, cells in shown]

    def line(cells: list[str], cols: list[Column]) -> str:
        padded = [
            c.rjust(w) if col.right else c.ljust(w)
            for c, w, col in zip(cells, widths, cols, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    cols = [col for col, _ in shown]
    rule = [
        "-" * (w + 1) + ":" if col.right else "-" * (w + 2)
        for col, w in zip(cols, widths, strict=True)
    ]
    out = [line([col.title for col in cols], cols), "|" + "|".join(rule) + "|"]
    out += [line([cells[i] for _, cells in shown], cols) for i in range(num_rows)]
    return out


def render_csv(records: list[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for r in records for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: _csv_cell(record.get(k)) for k in keys})
    return buf.getvalue().rstrip("\n")


def _csv_cell(value: Any) -> Any:
    if isinstance(value, dict):
        return ";".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return json.dumps(value, default=str)
    return value


def emit(text: str, out: str | None) -> None:
    """Print, or write to `out` (and say where on stderr)."""
    if out is None:
        print(text, flush=True)  # before any note on stderr
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    print(f"wrote {path}", file=sys.stderr)
