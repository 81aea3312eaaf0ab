"""`python -m sweep.report`: a run's results as one table, one row per point group.

    python -m sweep.report [--results DIR] [--run RUN_ID|all] [--grid NAME] [--by COLS]
                           [--format md|csv|json] [--plots [--plots-dir DIR]] [--out PATH]

The run defaults to the newest one (by its newest row) in the results dir, of grid
`--grid` when given; `--run all` takes the newest row of every point across runs.
Rows are grouped by variant, device, runtime, flag set and prompt length (`--by`
changes that); a group with several ok rows shows the *median of their
decode_ms_p50* (and of p10, p90, prefill ms, dispatches), see `sweep.analysis`.
Like llama-bench's compare script, the markdown table shows only the columns that
vary: the others are folded into a header line above it. csv and json keep every
column and the raw numbers, for scripts.

`--by flag_set` is the flag study: per variant, device, runtime and prompt length,
each flag set's ms/token, its speedup over the `default` flag set with a verdict
that accounts for the sample spread (`sweep.analysis.verdict`), its dispatch count
and change from default, compile seconds, vmfb size and tokens matched.

Exit codes: 0, or 2 for an input error (no results, unknown run, unknown column).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from sweep import analysis, profiles
from sweep.results import read_results

DEFAULT_RESULTS = Path("outputs/results")
FORMATS = ("md", "csv", "json")
MAX_LISTED_RUNS = 10
# What the tables need; the roofline columns are read once the schema has them.
_WANTED = (
    "point_key",
    "status",
    "created_at",
    "run_id",
    *analysis.POINT_COLUMNS,
    "compile_s",
    "vmfb_bytes",
    "num_dispatches",
    "prefill_ms",
    "prefill_tok_s",
    "decode_ms_p10",
    "decode_ms_p50",
    "decode_ms_p90",
    "tok_s",
    "num_tokens_matched",
    "roofline_frac",
    "fp32_agreement",
    "ppl",  # the quality columns (workers.perplexity): a checkpoint with a tokenizer
    "kld_mean",
    "kld_p99",
    "top1_agree",
    "device_ms",
    "host_ms",
    "prompt_text",  # a text prompt and what it gave, shown below the summary
    "output_text",
)
SAMPLES = "decode_samples_ms"  # read only where a verdict needs them: they are most of a row


class ReportError(ValueError):
    """An input error (no results, unknown run or column): `main` prints it, exits 2."""


# --- loading ---------------------------------------------------------------------------


def load_table(
    results_dir: Path,
    grid: str | None = None,
    *,
    samples: bool = False,
    extra: Sequence[str] = (),
) -> pa.Table:
    """The rows under results_dir (of `grid`, when given), with the columns the tables use.

    Token lists are read as their length (`num_reference_tokens`), and only the columns
    the tables show (plus `extra`), so a report over 100,000 rows stays interactive.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ReportError(
            f"results directory {results_dir} does not exist; pass --results DIR "
            "(the results_dir= of the sweep)"
        )
    lists = ["tokens", "reference_tokens", *([SAMPLES] if samples else [])]
    table = read_results(results_dir, list(dict.fromkeys([*_WANTED, *extra, *lists])))
    if not table.num_rows:
        raise ReportError(
            f"results directory {results_dir} holds no result files; run a sweep into it "
            f"first (python -m sweep +grid=smoke results_dir={results_dir})"
        )
    if grid is not None:
        grids = sorted(str(g) for g in pc.unique(table["grid"]).to_pylist())
        table = table.filter(pc.equal(table["grid"], grid))
        if not table.num_rows:
            raise ReportError(f"no rows of grid {grid!r} in {results_dir}; grids: {grids}")
    num_tokens = pc.coalesce(
        pc.list_value_length(table["reference_tokens"]), pc.list_value_length(table["tokens"])
    )
    table = table.drop_columns(["tokens", "reference_tokens"])
    return table.append_column("num_reference_tokens", num_tokens)


def runs_newest_first(table: pa.Table) -> list[str]:
    """Run ids ordered by their newest row, newest first."""
    newest = table.group_by("run_id").aggregate([("created_at", "max")])
    order = newest.sort_by([("created_at_max", "descending"), ("run_id", "descending")])
    return order["run_id"].to_pylist()


def select_run(table: pa.Table, run: str | None) -> tuple[str, list[dict[str, Any]]]:
    """(run label, the run's newest row per point): `run` None is the newest run."""
    runs = runs_newest_first(table)
    run = runs[0] if run is None else run
    if run != "all":
        if run not in runs:
            raise ReportError(unknown_run_message(run, runs))
        table = table.filter(pc.equal(table["run_id"], run))
    return run, analysis.newest_per_point(to_rows(table))


def rows_of_runs(table: pa.Table, wanted: Sequence[str]) -> list[dict[str, Any]]:
    """The rows of the `wanted` runs; an unknown run is an input error."""
    runs = runs_newest_first(table)
    for run in wanted:
        if run not in runs:
            raise ReportError(unknown_run_message(run, runs))
    return to_rows(table.filter(pc.is_in(table["run_id"], pa.array(list(wanted)))))


def _pylist(table: pa.Table) -> list[dict[str, Any]]:
    """`table.to_pylist()`, column by column: three times faster on wide tables."""
    names = table.column_names
    columns = [table[name].to_pylist() for name in names]
    return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]


def to_rows(table: pa.Table) -> list[dict[str, Any]]:
    """Rows as dicts; the decode samples, when read, as numpy views of one buffer (a
    hundred thousand rows of 40 samples would take seconds as Python lists)."""
    if SAMPLES not in table.column_names:
        return _pylist(table)
    samples = table[SAMPLES].combine_chunks()
    flat = samples.flatten().to_numpy(zero_copy_only=False)
    offsets = samples.offsets.to_numpy()
    offsets = offsets - offsets[0]  # flatten() starts at the first referenced value
    valid = samples.is_valid().to_numpy(zero_copy_only=False)
    rows = _pylist(table.drop_columns([SAMPLES]))
    for i, row in enumerate(rows):
        row[SAMPLES] = flat[offsets[i] : offsets[i + 1]] if valid[i] else None
    return rows


def unknown_run_message(run: str, runs: Sequence[str]) -> str:
    listed = ", ".join(runs[:MAX_LISTED_RUNS])
    more = f" (and {len(runs) - MAX_LISTED_RUNS} older)" if len(runs) > MAX_LISTED_RUNS else ""
    return f"unknown run id {run!r}; runs in the results, newest first: {listed}{more}"


def parse_by(text: str) -> list[str]:
    by = [col.strip() for col in text.split(",") if col.strip()]
    unknown = [col for col in by if col not in analysis.BY_COLUMNS]
    if not by or unknown:
        raise ReportError(
            f"unknown --by column {', '.join(unknown) or repr(text)}; "
            f"choose from: {', '.join(analysis.BY_COLUMNS)}"
        )
    return by


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
    lo, hi = record.get("decode_ms_p10"), record.get("decode_ms_p90")
    return "" if lo is None or hi is None else f"{fmt_num(lo)}-{fmt_num(hi)}"


def fmt_matched(record: dict[str, Any]) -> str:
    matched, total = record.get("num_tokens_matched"), record.get("num_tokens")
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
        "group_size",
        "prompt_length",
        "prompt_bucket",
        "max_seq",
        "batch_size",
        "depth",
        "attention_span",
        "steps_per_call",
    )
    return Column(name, lambda r: fmt_value(r.get(name)), right=numeric, fold=name)


def metric(title: str, key: str, fmt: Callable[[Any], str] = fmt_num) -> Column:
    return Column(title, lambda r: fmt(r.get(key)), right=True)


def summary_table(rows: list[dict[str, Any]], by: list[str], header: dict[str, Any]) -> Table:
    records = analysis.summarize(rows, by)
    columns = [key_column(col) for col in by]
    columns += [
        metric("tok/s", "tok_s"),
        metric("ms/tok p50", "decode_ms_p50"),
        Column("p10-p90", fmt_spread, right=True),
    ]
    columns += _roofline_column(records)
    columns += _profile_columns(records)
    if any(r.get("kld_mean") is not None for r in records):
        columns += [
            metric("ppl", "ppl"),
            metric("KLD", "kld_mean", lambda v: "" if v is None else f"{v:.4g}"),
            metric("top-1", "top1_agree", fmt_percent),
        ]
    elif any(r.get("fp32_agreement") is not None for r in records):
        columns.append(metric("vs fp32", "fp32_agreement", fmt_percent))
    columns += [metric("prefill ms", "prefill_ms")]
    if any(r.get("prefill_tok_s") is not None for r in records):
        columns.append(metric("prefill tok/s", "prefill_tok_s"))
    columns += [
        metric("dispatches", "num_dispatches", fmt_value),
        Column("matched", fmt_matched, right=True),
        Column("status", lambda r: fmt_statuses(r["status_counts"])),
    ]
    return Table(records, columns, header)


def flag_study_table(
    rows: list[dict[str, Any]], header: dict[str, Any], dispatches: list[dict[str, Any]]
) -> Table:
    records = analysis.flag_study(rows)
    _add_kinds(records, dispatches)
    columns = [key_column(col) for col in (*analysis.FLAG_CONTEXT, "flag_set", "layout")]
    columns += [
        metric("ms/tok p50", "decode_ms_p50"),
        Column("p10-p90", fmt_spread, right=True),
        metric("speedup", "speedup", lambda v: "" if v is None else f"{v:.2f}x"),
        Column("verdict", lambda r: r.get("verdict") or ""),
    ]
    columns += _roofline_column(records)
    columns += [
        metric("dispatches", "num_dispatches", fmt_value),
        metric(f"vs {analysis.BASELINE_FLAG_SET}", "dispatch_change", fmt_signed),
    ]
    if any(r.get("kinds") for r in records):
        columns += [
            Column("ms/tok by kind", lambda r: profiles.fmt_kinds(r.get("kinds") or {})),
            Column("by kind vs baseline", lambda r: r.get("kind_change") or ""),
        ]
    columns += [
        metric("compile s", "compile_s"),
        metric("vmfb", "vmfb_bytes", fmt_bytes),
        Column("matched", fmt_matched, right=True),
        Column("status", lambda r: fmt_statuses(r["status_counts"])),
    ]
    return Table(records, columns, header)


def _add_kinds(records: list[dict[str, Any]], dispatches: list[dict[str, Any]]) -> None:
    """Each flag-study record's time per kind, and its change against its context's baseline."""
    per_point = profiles.kind_ms(dispatches)
    base: dict[str, float] = {}
    for record in records:
        kinds = [per_point[k] for k in record.pop("point_keys", []) if k in per_point]
        record["kinds"] = profiles.pooled_kind_ms(kinds)
        if record.get("verdict") == "baseline":
            base = record["kinds"]
            continue
        record["kind_change"] = profiles.kind_change(base, record["kinds"])


def _profile_columns(records: list[dict[str, Any]]) -> list[Column]:
    """device and host ms per token when any point was profiled."""
    if not any(r.get("device_ms") is not None for r in records):
        return []
    return [metric("device ms", "device_ms"), metric("host ms", "host_ms")]


def dispatches_table(
    rows: list[dict[str, Any]], header: dict[str, Any], dispatches: list[dict[str, Any]], top: int
) -> Table:
    """`--dispatches`: each point's top dispatches with their share of its dispatch time."""
    points = sorted(
        rows, key=lambda r: analysis.sort_key(tuple(r.get(c) for c in analysis.DEFAULT_BY))
    )
    fields = ("point_key", *analysis.DEFAULT_BY)
    records = profiles.top_dispatches(
        dispatches, [{c: r.get(c) for c in fields} for r in points], top
    )
    columns = [key_column(col) for col in analysis.DEFAULT_BY]
    columns += [
        metric("#", "rank", fmt_value),
        Column("kind", lambda r: r["kind"]),
        metric("ms/tok", "ms_per_token"),
        metric("share", "share", fmt_percent),
        metric("calls/tok", "calls_per_token", fmt_value),
        Column("dispatch", lambda r: r["name"]),
    ]
    notes = [] if records else ["no profiled points: run the sweep with profile=true"]
    return Table(records, columns, header, notes=notes)


def _roofline_column(records: list[dict[str, Any]]) -> list[Column]:
    """A percent column when any record has a roofline fraction (a newer schema)."""
    if not any(r.get("roofline_frac") is not None for r in records):
        return []
    return [metric("roofline", "roofline_frac", fmt_percent)]


def context_header(run: str, rows: list[dict[str, Any]], shown: Sequence[str]) -> dict[str, Any]:
    """The run and the point columns that hold one value over all rows (and are no column)."""
    hidden = [c for c in analysis.POINT_COLUMNS if c not in shown and c != "prompt_bucket"]
    return {"run": run, **analysis.constant_columns(rows, hidden)}


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


# --- command line ----------------------------------------------------------------------


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace | int:
    """Parsed args, or argparse's exit code (2 for a usage error, 0 for --help)."""
    try:
        return parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)


def add_output_args(parser: argparse.ArgumentParser, what: str = "table") -> None:
    """The options every results CLI shares: where the results are, how and where to print."""
    parser.add_argument(
        "--results",
        type=Path,
        default=DEFAULT_RESULTS,
        help=f"results directory (default {DEFAULT_RESULTS})",
    )
    parser.add_argument("--format", choices=FORMATS, default="md")
    parser.add_argument("--out", help=f"write the {what} to this file instead of stdout")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sweep.report", description="Summarise a sweep's results as a table."
    )
    add_output_args(parser)
    parser.add_argument(
        "--run",
        help="run id (default: the newest run); 'all': newest row of every point across runs",
    )
    parser.add_argument("--grid", help="only rows of this grid")
    parser.add_argument(
        "--by",
        default=",".join(analysis.DEFAULT_BY),
        help="comma-separated columns to group by (default %(default)s); "
        "'flag_set' alone: the flag study",
    )
    parser.add_argument(
        "--dispatches",
        nargs="?",
        type=int,
        const=5,
        metavar="N",
        help="each point's top N dispatches (default 5) from its profile (profile=true)",
    )
    parser.add_argument(
        "--search",
        action="store_true",
        help="the searches' studies: best configuration per variant and device, its speedups",
    )
    parser.add_argument(
        "--pareto",
        action="store_true",
        help="every ok row's decode speed against its KLD from fp32, the Pareto front "
        "marked (with --plots: pareto_speed_vs_kld.png)",
    )
    parser.add_argument("--plots", action="store_true", help="also write PNG plots")
    parser.add_argument(
        "--plots-dir", type=Path, help="where the plots go (default <results>/plots/<run>)"
    )
    return parser


def run_cli(
    parser: argparse.ArgumentParser,
    body: Callable[[argparse.Namespace], None],
    argv: list[str] | None,
) -> int:
    """What every results CLI does: parse, run `body`, and on an input error print it and exit 2."""
    args = parse_args(parser, argv)
    if isinstance(args, int):
        return args
    try:
        body(args)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def report(args: argparse.Namespace) -> None:
    if args.search:
        search_report(args)
        return
    by = parse_by(args.by)
    table = load_table(args.results, args.grid, samples=by == ["flag_set"], extra=by)
    run, rows = select_run(table, args.run)
    if args.pareto:
        pareto_report(args, run, rows)
        return
    dispatches = profiles.load(args.results, (r["point_key"] for r in rows))
    if args.dispatches is not None:
        table = dispatches_table(
            rows, context_header(run, rows, analysis.DEFAULT_BY), dispatches, args.dispatches
        )
    elif by == ["flag_set"]:
        shown = (*analysis.FLAG_CONTEXT, "layout")
        table = flag_study_table(rows, context_header(run, rows, shown), dispatches)
    else:
        table = summary_table(rows, by, context_header(run, rows, by))
        table.notes += text_notes(rows) + quality_notes(rows)
    emit(render(table, args.format), args.out)
    if args.plots:
        from sweep.plots import write_plots  # lazy: matplotlib costs a second

        out_dir = args.plots_dir or Path(args.results) / "plots" / run
        context = analysis.constant_columns(rows, ("model", "grid"))
        title = "  ".join([*(f"{k} {v}" for k, v in context.items()), f"run {run}"])
        paths, notes = write_plots(rows, out_dir, title=title, dispatches=dispatches)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        for path in paths:
            print(f"wrote {path}", file=sys.stderr)


def pareto_report(args: argparse.Namespace, run: str, rows: list[dict[str, Any]]) -> None:
    from sweep.pareto import pareto_table, quality_rows, write_pareto_plot

    if not quality_rows(rows):
        raise ReportError(
            f"run {run} has no ok row with the quality columns (kld_mean): they need a "
            "checkpoint with a tokenizer.json (model.path=DIR) and bench.eval_chunks > 0"
        )
    header = context_header(run, rows, ("variant", "layout", "flag_set", "runtime"))
    emit(render(pareto_table(rows, header), args.format), args.out)
    if args.plots:
        out_dir = args.plots_dir or Path(args.results) / "plots" / run
        written = write_pareto_plot(rows, out_dir, title=f"run {run}")
        print(
            f"wrote {written}" if isinstance(written, Path) else f"note: {written}", file=sys.stderr
        )


def quality_notes(rows: list[dict[str, Any]]) -> list[str]:
    """Why the quality columns may be missing or mean nothing."""
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok or any(r.get("kld_mean") is not None for r in ok):
        return []
    if any(r.get("fp32_agreement") is not None for r in ok):
        return [
            "quality: no ppl / KLD columns (seeded weights, or no tokenizer.json); on random "
            "weights `vs fp32` (fp32_agreement) is noise: quality needs a trained checkpoint"
        ]
    return []


MAX_TEXT_NOTES = 8


def text_notes(rows: list[dict[str, Any]]) -> list[str]:
    """What a text prompt gave (bench.prompt on a real checkpoint): prompt -> output."""
    from sweep.grid import point_label

    with_text = [r for r in rows if r.get("output_text")]
    notes = [
        f"{point_label(r)}: {r.get('prompt_text')!r} -> {r['output_text']!r}"
        for r in with_text[:MAX_TEXT_NOTES]
    ]
    if len(with_text) > MAX_TEXT_NOTES:
        notes.append(f"... and {len(with_text) - MAX_TEXT_NOTES} more (column output_text)")
    return notes


def search_report(args: argparse.Namespace) -> None:
    from sweep.studies import best_so_far_figure, load_studies, studies_table

    summaries = load_studies(args.results)
    if not summaries:
        raise ReportError(
            f"no search under {args.results}: run one with e.g. "
            "`python -m sweep +grid=smoke +search=flags search.trials=12`"
        )
    emit(render(studies_table(summaries), args.format), args.out)
    if args.plots:
        out_dir = args.plots_dir or Path(args.results) / "plots"
        figure = best_so_far_figure(summaries)
        if isinstance(figure, str):
            print(f"note: skipped search_best_so_far.png: {figure}", file=sys.stderr)
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "search_best_so_far.png"
        figure.savefig(path, dpi=120)
        print(f"wrote {path}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), report, argv)


if __name__ == "__main__":
    sys.exit(main())
