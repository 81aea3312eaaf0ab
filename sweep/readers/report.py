"""`python -m sweep.report`: a run's results as one table, one row per point group.

    python -m sweep.report [--results DIR] [--run RUN_ID|all] [--grid NAME] [--by COLS]
                           [--format md|csv|json] [--plots [--plots-dir DIR]] [--out PATH]

The run defaults to the newest one (by its newest row) in the results dir, of grid
`--grid` when given; `--run all` takes the newest row of every point across runs.
Rows are grouped by variant, device, runtime, flag set and prompt length (`--by`
changes that); a group with several ok rows shows the *median of their
decode_ms_p50* (and of p10, p90, prefill ms, dispatches), see `sweep.readers.analysis`.
Like llama-bench's compare script, the markdown table shows only the columns that
vary: the others are folded into a header line above it. csv and json keep every
column and the raw numbers, for scripts.

A group with rows timed on a disturbed host (the benchmark's threads waited for a CPU
more than `workers.core.host.RUN_WAIT_DISTURBED` of the time, column `disturbed`) shows how
many in a `disturbed` column, a note says so, and the flag study gives it no verdict; rows
whose host could not be judged are counted and treated the same way ("not judged").

`--by flag_set` is the flag study: per variant, device, runtime and prompt length,
each flag set's ms/token, its speedup over the `default` flag set with a verdict
that accounts for the sample spread (`sweep.readers.analysis.verdict`), its dispatch count
and change from default, compile seconds, vmfb size and tokens matched.

Exit codes: 0, or 2 for an input error (no results, unknown run, unknown column).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sweep.readers import analysis
from sweep.readers import dispatches as profiles
from sweep.readers.cli import add_output_args, run_cli
from sweep.readers.load import ReportError, load_table, parse_by, select_run
from sweep.readers.tables import (
    Column,
    Table,
    emit,
    fmt_bytes,
    fmt_kld,
    fmt_matched,
    fmt_percent,
    fmt_ratio,
    fmt_signed,
    fmt_spread,
    fmt_statuses,
    fmt_value,
    key_column,
    metric,
    render,
    render_md,
)
from sweep.store.results import Col
from workers.core.host import RUN_WAIT_DISTURBED
from workers.core.kinds import GraphKind, Runtime, Status


def summary_table(rows: list[dict[str, Any]], by: list[str], header: dict[str, Any]) -> Table:
    records = analysis.summarize(rows, by)
    columns = [key_column(col) for col in by]
    columns += [
        metric("tok/s", Col.TOK_S),
        metric("ms/tok p50", Col.DECODE_MS_P50),
        Column("p10-p90", fmt_spread, right=True),
    ]
    columns += _roofline_column(records)
    columns += _profile_columns(records)
    if any(r.get(Col.KLD_MEAN) is not None for r in records):
        columns += [
            metric(Col.PPL, Col.PPL),
            metric("KLD", Col.KLD_MEAN, fmt_kld),
            metric("top-1", Col.TOP1_AGREE, fmt_percent),
        ]
    elif any(r.get(Col.FP32_AGREEMENT) is not None for r in records):
        columns.append(metric("vs fp32", Col.FP32_AGREEMENT, fmt_percent))
    columns += [metric("prefill ms", Col.PREFILL_MS)]
    if any(r.get(Col.PREFILL_TOK_S) is not None for r in records):
        columns.append(metric("prefill tok/s", Col.PREFILL_TOK_S))
    columns += _load_columns(records)
    columns += [
        metric("dispatches", Col.NUM_DISPATCHES, fmt_value),
        Column("matched", fmt_matched, right=True),
        Column(Col.STATUS, lambda r: fmt_statuses(r["status_counts"])),
    ]
    columns += _disturbed_column(records)
    return Table(records, columns, header)


def _load_columns(records: list[dict[str, Any]]) -> list[Column]:
    """What a point's modules cost to load, where any row says (IREE rows from schema 9):
    the packings hoisted to load, the load's seconds, and the weights' memory after it."""
    if not any(r.get(Col.RESIDENT_BYTES) is not None for r in records):
        return []
    return [
        metric("packed at load", Col.PACKED_AT_LOAD, fmt_value),
        metric("load s", Col.LOAD_S),
        metric("resident", Col.RESIDENT_BYTES, fmt_bytes),
    ]


def _disturbed_column(records: list[dict[str, Any]]) -> list[Column]:
    """How many of a group's ok rows were timed on a disturbed host (and how many could not
    be judged), where any were."""
    columns = []
    for name, key in (
        (analysis.DISTURBED, "num_disturbed"),
        (analysis.NOT_JUDGED, "num_not_judged"),
    ):
        if any(r.get(key) for r in records):
            columns.append(Column(name, lambda r, key=key: _fmt_count(r, key), right=True))
    return columns


def _fmt_count(record: dict[str, Any], key: str) -> str:
    n = record.get(key) or 0
    return f"{n}/{record['num_ok']}" if n else ""


def flag_study_table(
    rows: list[dict[str, Any]], header: dict[str, Any], dispatches: list[dict[str, Any]]
) -> Table:
    records = analysis.flag_study(rows)
    _add_kinds(records, dispatches)
    columns = [key_column(col) for col in (*analysis.FLAG_CONTEXT, Col.FLAG_SET, Col.LAYOUT)]
    columns += [
        metric("ms/tok p50", Col.DECODE_MS_P50),
        Column("p10-p90", fmt_spread, right=True),
        metric("speedup", "speedup", fmt_ratio),
        Column("verdict", lambda r: r.get("verdict") or ""),
    ]
    columns += _disturbed_column(records)
    columns += _roofline_column(records)
    columns += [
        metric("dispatches", Col.NUM_DISPATCHES, fmt_value),
        metric(f"vs {analysis.BASELINE_FLAG_SET}", "dispatch_change", fmt_signed),
    ]
    if any(r.get("kinds") for r in records):
        columns += [
            Column("ms/tok by kind", lambda r: profiles.fmt_kinds(r.get("kinds") or {})),
            Column("by kind vs baseline", lambda r: r.get("kind_change") or ""),
        ]
    columns += [
        metric("compile s", Col.COMPILE_S),
        metric("vmfb", Col.VMFB_BYTES, fmt_bytes),
        Column("matched", fmt_matched, right=True),
        Column(Col.STATUS, lambda r: fmt_statuses(r["status_counts"])),
    ]
    return Table(records, columns, header)


def runtimes_table(rows: list[dict[str, Any]], header: dict[str, Any]) -> Table:
    """IREE's fastest configuration, XLA and llama.cpp side by side, per model, variant
    family (4-bit, 8-bit, fp32, ...), device and prompt length (batch 1, depth 0)."""
    records = analysis.runtime_comparison(rows)
    runtimes = [r for r in Runtime if any(f"{r}_ms" in rec for rec in records)]
    columns = [key_column(col) for col in analysis.RUNTIME_CONTEXT]
    for runtime in runtimes:
        name = RUNTIME_NAMES[runtime]
        columns += [
            Column(name, lambda r, k=f"{runtime}_config": r.get(k) or ""),
            metric(f"{name} ms/tok", f"{runtime}_ms"),
            metric(f"{name} / fastest", f"{runtime}_vs_fastest", fmt_ratio),
        ]
    table = Table(records, columns, header)
    table.notes.append(
        "each runtime's fastest ok row (batch 1, depth 0); IREE's config is variant/layout/"
        "flag set, llama.cpp's the GGUF type it ran"
    )
    return table


RUNTIME_NAMES = {Runtime.IREE: "IREE", Runtime.XLA: "XLA", Runtime.LLAMACPP: "llama.cpp"}


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
    if not any(r.get(Col.DEVICE_MS) is not None for r in records):
        return []
    return [metric("device ms", Col.DEVICE_MS), metric("host ms", Col.HOST_MS)]


def dispatches_table(
    rows: list[dict[str, Any]], header: dict[str, Any], dispatches: list[dict[str, Any]], top: int
) -> Table:
    """`--dispatches`: each point's top dispatches with their share of its dispatch time."""
    points = sorted(
        rows, key=lambda r: analysis.sort_key(tuple(r.get(c) for c in analysis.DEFAULT_BY))
    )
    fields = (Col.POINT_KEY, analysis.REPEAT_KEYS, *analysis.DEFAULT_BY)
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
    if not any(r.get(Col.ROOFLINE_FRAC) is not None for r in records):
        return []
    return [metric("roofline", Col.ROOFLINE_FRAC, fmt_percent)]


def context_header(run: str, rows: list[dict[str, Any]], shown: Sequence[str]) -> dict[str, Any]:
    """The run and the point columns that hold one value over all rows (and are no column)."""
    hidden = [c for c in analysis.POINT_COLUMNS if c not in shown and c != Col.PROMPT_BUCKET]
    return {"run": run, **analysis.constant_columns(rows, hidden)}


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
        help="the searches' studies: per variant and device the answer (the fastest "
        "configuration inside the bound, listed or proposed), then each study's details",
    )
    parser.add_argument(
        "--pareto",
        action="store_true",
        help="every ok row's decode speed against its KLD from fp32, the Pareto front "
        "marked over quality levels (KLDs closer than their noise are one level; with "
        "--plots: pareto_speed_vs_kld.png)",
    )
    parser.add_argument(
        "--runtimes",
        action="store_true",
        help="only the runtimes side by side: IREE's fastest configuration, XLA and llama.cpp "
        "per model, variant family, device and prompt length (markdown shows it below the "
        "summary whenever a run has more than one runtime)",
    )
    parser.add_argument(
        "--llamabench",
        action="store_true",
        help="llama-bench's table: per configuration pp<prompt> and tg<steps> in tokens/s, "
        "mean ± sd over the repetitions (+grid=llamabench), with size and quality",
    )
    parser.add_argument("--plots", action="store_true", help="also write PNG plots")
    parser.add_argument(
        "--plots-dir", type=Path, help="where the plots go (default <results>/plots/<run>)"
    )
    return parser


def report(args: argparse.Namespace) -> None:
    if args.search:
        search_report(args)
        return
    if args.llamabench:
        llamabench_report(args)
        return
    by = parse_by(args.by)
    table = load_table(args.results, args.grid, samples=by == [Col.FLAG_SET], extra=by)
    run, rows = select_run(table, args.run)
    if args.pareto:
        pareto_report(args, run, rows)
        return
    dispatches = profiles.load(args.results, (k for r in rows for k in analysis.profile_keys(r)))
    runtimes_header = context_header(run, rows, (*analysis.RUNTIME_CONTEXT, Col.RUNTIME))
    side = ""  # the runtimes side by side, below the summary when it has any
    if args.dispatches is not None:
        table = dispatches_table(
            rows, context_header(run, rows, analysis.DEFAULT_BY), dispatches, args.dispatches
        )
    elif by == [Col.FLAG_SET]:
        shown = (*analysis.FLAG_CONTEXT, Col.LAYOUT)
        table = flag_study_table(rows, context_header(run, rows, shown), dispatches)
        table.notes += host_notes(rows)
    elif args.runtimes:
        table = runtimes_table(rows, runtimes_header)
    else:
        table = summary_table(rows, by, context_header(run, rows, by))
        table.notes += text_notes(rows) + quality_notes(rows) + host_notes(rows)
        if args.format == "md" and (runtimes := runtimes_table(rows, runtimes_header)).records:
            side = "\n\nRuntimes side by side:\n\n" + render_md(runtimes)
    emit(render(table, args.format) + side, args.out)
    if args.plots:
        from sweep.readers.plots import write_plots  # lazy: matplotlib costs a second

        out_dir = args.plots_dir or Path(args.results) / "plots" / run
        context = analysis.constant_columns(rows, (Col.MODEL, Col.ARCHITECTURE, Col.GRID))
        title = "  ".join([*(f"{k} {v}" for k, v in context.items()), f"run {run}"])
        paths, notes = write_plots(rows, out_dir, title=title, dispatches=dispatches)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        for path in paths:
            print(f"wrote {path}", file=sys.stderr)


def llamabench_report(args: argparse.Namespace) -> None:
    """`--llamabench`: the repeats of each point are its repetitions, so they stay apart."""
    from sweep.readers.llamabench import NEEDED, gap_table, llamabench_table

    run, rows = select_run(load_table(args.results, args.grid, extra=NEEDED), args.run, merge=False)
    header = context_header(run, rows, (Col.MODEL, Col.RUNTIME, Col.VARIANT, Col.THREADS))
    table = llamabench_table(rows, header)
    keys = (k for r in rows for k in analysis.profile_keys(r))
    gap = gap_table(rows, profiles.load(args.results, keys, (GraphKind.DECODE, GraphKind.PREFILL)))
    if args.format == "json":
        table.json_obj = {"tests": table.records, "against_llamacpp": gap.records}
    if args.format != "md":  # csv: llama-bench's table alone
        emit(render(table, args.format), args.out)
        return
    side = "\n\nIREE against llama.cpp, per family:\n\n" + render_md(gap) if gap.records else ""
    emit(render_md(table) + side, args.out)


def pareto_report(args: argparse.Namespace, run: str, rows: list[dict[str, Any]]) -> None:
    from sweep.readers.pareto import pareto_table, quality_rows, write_pareto_plot

    if not quality_rows(rows):
        raise ReportError(
            f"run {run} has no ok row with the quality columns (kld_mean): they need a "
            "checkpoint with a tokenizer (model.path: a GGUF file, or a directory with a "
            "tokenizer.json) and bench.eval_chunks > 0"
        )
    header = context_header(run, rows, (Col.VARIANT, Col.LAYOUT, Col.FLAG_SET, Col.RUNTIME))
    emit(render(pareto_table(rows, header), args.format), args.out)
    if args.plots:
        out_dir = args.plots_dir or Path(args.results) / "plots" / run
        written = write_pareto_plot(rows, out_dir, title=f"run {run}")
        print(
            f"wrote {written}" if isinstance(written, Path) else f"note: {written}", file=sys.stderr
        )


def quality_notes(rows: list[dict[str, Any]]) -> list[str]:
    """Why the quality columns may be missing or mean nothing."""
    ok = [r for r in rows if r[Col.STATUS] == Status.OK]
    if not ok or any(r.get(Col.KLD_MEAN) is not None for r in ok):
        return []
    if any(r.get(Col.FP32_AGREEMENT) is not None for r in ok):
        return [
            "quality: no ppl / KLD columns (seeded weights, or a checkpoint without a "
            "tokenizer); on random weights `vs fp32` (fp32_agreement) is noise: quality needs "
            "a trained checkpoint"
        ]
    return []


def host_notes(rows: list[dict[str, Any]], priority: int | None = None) -> list[str]:
    """What the host did to the numbers (workers.core.host): rows timed while other processes
    were busy there, and rows measured at a niceness other than asked (`priority`: the
    sweep's bench.priority; without it, any niceness above 0)."""
    ok = [r for r in rows if r[Col.STATUS] == Status.OK]
    notes = []
    disturbed = [r for r in ok if analysis.disturbance(r)]
    if disturbed:
        waits = [r[Col.RUN_WAIT_FRAC] for r in disturbed if r.get(Col.RUN_WAIT_FRAC) is not None]
        share = f" {fmt_percent(min(waits))}-{fmt_percent(max(waits))} of the time" if waits else ""
        notes.append(
            f"{analysis.DISTURBED}: {len(disturbed)} of {len(ok)} ok rows were timed while their "
            f"threads waited for a CPU{share} (above {RUN_WAIT_DISTURBED:.0%}; column "
            "run_wait_frac): their numbers carry the host's load and get no verdict; measure "
            "them again on a quiet host (rerun=true)"
        )
    unjudged = analysis.num_not_judged(ok)
    if unjudged:
        notes.append(
            f"{analysis.NOT_JUDGED}: {unjudged} of {len(ok)} ok rows were timed where the host "
            "could not be judged (no schedstat, and a phase too short for the tick counters): "
            "they get no verdict"
        )
    expected = (lambda n: n != priority) if priority is not None else (lambda n: n > 0)
    niced = sorted(
        {
            r[Col.NICENESS]
            for r in ok
            if r.get(Col.NICENESS) is not None and expected(r[Col.NICENESS])
        }
    )
    if niced:
        asked = f"bench.priority={priority}" if priority is not None else "niceness 0"
        notes.append(
            f"priority: rows measured at niceness {', '.join(map(str, niced))}, not {asked} "
            "(column niceness): the host refused the change; start Ray workers at niceness 0 "
            "(RAY_worker_niceness=0 for `ray start`), and a negative bench.priority needs "
            "CAP_SYS_NICE or `ulimit -e`"
        )
    return notes


def fp32_notes(rows: list[dict[str, Any]]) -> list[str]:
    """One line per device that ran fp32 and another variant: the fastest variant and its
    ms/token against fp32's, then the others (`analysis.versus_fp32`), e.g.
    `cpu: int4-fac-g64 decodes at 0.52x fp32's ms/token (int4 2.31x; 2 points each)`."""
    notes = []
    for (device,), records in analysis.group_rows(analysis.versus_fp32(rows), [Col.DEVICE]):
        if len(records) < 2:
            continue
        best, others = records[0], [r for r in records[1:] if r[Col.VARIANT] != analysis.FP32]
        rest = "; ".join(f"{r[Col.VARIANT]} {r['ratio']:.2f}x" for r in others)
        points = f"median of {best['num_points']} points" if best["num_points"] > 1 else "1 point"
        if best[Col.VARIANT] == analysis.FP32:
            notes.append(f"{device}: fp32 decodes fastest ({rest} its ms/token; {points})")
        else:
            tail = f"; {rest}" if rest else ""
            notes.append(
                f"{device}: {best[Col.VARIANT]} decodes at {best['ratio']:.2f}x fp32's ms/token "
                f"({points}{tail})"
            )
    return notes


MAX_TEXT_NOTES = 8


def text_notes(rows: list[dict[str, Any]]) -> list[str]:
    """What a text prompt gave (bench.prompt on a real checkpoint): prompt -> output."""
    from sweep.plan.grid import point_label

    with_text = [r for r in rows if r.get(Col.OUTPUT_TEXT)]
    notes = [
        f"{point_label(r)}: {r.get('prompt_text')!r} -> {r['output_text']!r}"
        for r in with_text[:MAX_TEXT_NOTES]
    ]
    if len(with_text) > MAX_TEXT_NOTES:
        notes.append(f"... and {len(with_text) - MAX_TEXT_NOTES} more (column output_text)")
    return notes


def search_report(args: argparse.Namespace) -> None:
    from sweep.search.summaries import (
        best_so_far_figure,
        load_studies,
        studies_table,
        studies_text,
    )

    summaries = load_studies(args.results)
    if not summaries:
        raise ReportError(
            f"no search under {args.results}: run one with e.g. "
            "`python -m sweep +grid=smoke +search=flags search.trials=12`"
        )
    text = studies_text(summaries) if args.format == "md" else None
    emit(text or render(studies_table(summaries), args.format), args.out)
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
