"""`python -m sweep.compare RUN_A RUN_B`: two runs side by side, point by point.

    python -m sweep.compare RUN_A RUN_B [--results DIR] [--format md|csv|json] [--out PATH]

Points are matched by point_key (the same point on any run), taking each run's newest
row of a point; only points ok in both are compared. Per point: ms/token (decode
p50) in A and in B, the ratio B/A (below 1: B is faster) and a verdict, "faster",
"slower" or "same" for B against A, from a Mann-Whitney test on the two rows' decode
samples plus a 2 % minimum effect (`sweep.readers.analysis.verdict` documents the rule), so
a CPU's noise does not read as a regression. Points measured at least 3 times in both
runs (`bench.repeats`) are judged on their repeats' medians instead
(`sweep.readers.analysis.repeat_verdict`), which hold the host's drift across a run. A
point whose row in either run is `disturbed` (its threads waited for a CPU while it was
timed, `workers.core.host`) gets "disturbed (A|B)" instead of a verdict, and one whose host
could not be judged "not judged (A|B)". Points in only
one run, and points that failed in one of them, are listed below the table (in json:
their own lists; with csv: on stderr).

Exit codes: 0, or 2 for an input error (no results, an unknown run id).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sweep.readers import analysis
from sweep.readers import dispatches as profiles
from sweep.readers.cli import add_output_args, run_cli
from sweep.readers.load import load_table, rows_of_runs
from sweep.readers.tables import Column, Table, emit, fmt_num, key_column, metric, render
from sweep.store.results import Col
from workers.core.host import RUN_WAIT_DISTURBED


def describe(point: dict[str, Any]) -> str:
    """A one-line name of a point: its key and the point columns that say what it is."""
    cols = (Col.MODEL, Col.VARIANT, Col.DEVICE, Col.RUNTIME, Col.FLAG_SET)
    parts = [str(point[c]) for c in cols if point.get(c) is not None]
    if point.get(Col.PROMPT_LENGTH) is not None:
        parts.append(f"prompt {point['prompt_length']}")
    if point.get(Col.MAX_SEQ) is not None:
        parts.append(f"max_seq {point['max_seq']}")
    return f"{point['point_key']} ({' '.join(parts)})"


def compare_table(
    run_a: str,
    run_b: str,
    rows: list[dict[str, Any]],
    kinds: dict[tuple[str, str], dict[str, float]] | None = None,
) -> Table:
    """The compare table of two runs whose rows `rows` holds; with their profiles' time
    per kind (`sweep.readers.dispatches.kinds_of_runs`), what changed kind by kind."""
    kinds = kinds or {}
    result = analysis.compare_runs(
        [r for r in rows if r[Col.RUN_ID] == run_a], [r for r in rows if r[Col.RUN_ID] == run_b]
    )
    for point in result["points"]:
        a, b = kinds.get((run_a, point[Col.POINT_KEY])), kinds.get((run_b, point[Col.POINT_KEY]))
        if a and b:
            point["kind_change"] = profiles.kind_change(a, b)
    shown = [c for c in analysis.POINT_COLUMNS if c not in (Col.DRIVER, Col.PROMPT_BUCKET)]
    columns = [key_column(col) for col in shown]  # the driver follows the device
    columns += [
        metric("A ms/tok", "decode_ms_p50_a"),
        metric("B ms/tok", "decode_ms_p50_b"),
        metric("B/A", "ratio", lambda v: "" if v is None else f"{v:.2f}"),
        Column("verdict", _verdict_cell),
    ]
    if any(r["basis"] == "repeats" for r in result["points"]):
        columns.append(Column("from", lambda r: r["basis"]))  # repeats' medians or samples
    if any(r.get("kind_change") for r in result["points"]):
        columns.append(Column("B-A by kind, ms/tok", lambda r: r.get("kind_change") or ""))
    return Table(
        records=result["points"],
        columns=columns,
        header={"A": run_a, "B": run_b},
        notes=_notes(result),
        json_obj={"run_a": run_a, "run_b": run_b, **result},
    )


def _verdict_cell(point: dict[str, Any]) -> str:
    """The verdict, or which run's row was measured on a disturbed host (or on one that
    could not be judged) instead."""
    if point["verdict"] not in (analysis.DISTURBED, analysis.NOT_JUDGED):
        return point["verdict"]
    sides = " and ".join(point.get("disturbed") or "")
    return f"{point['verdict']} ({sides})"


def _notes(result: dict[str, list[dict[str, Any]]]) -> list[str]:
    notes = []
    for side, label in (("only_in_a", "only in A"), ("only_in_b", "only in B")):
        notes += [f"{label}: {describe(p)} [{p['status']}]" for p in result[side]]
    notes += [
        f"not ok: {describe(p)} [A {p['status_a']}, B {p['status_b']}]" for p in result["not_ok"]
    ]
    verdicts = [p["verdict"] for p in result["points"]]
    kinds = ("faster", "slower", "same", "n/a", analysis.DISTURBED, analysis.NOT_JUDGED)
    counts = {v: verdicts.count(v) for v in kinds if v in verdicts}
    if counts:
        ratios = [p["ratio"] for p in result["points"] if p["ratio"] is not None]
        summary = ", ".join(f"{n} {v}" for v, n in counts.items())
        mid = analysis.median(ratios)
        notes.insert(0, f"{len(verdicts)} points in both: {summary}; median B/A {fmt_num(mid)}")
    if analysis.DISTURBED in counts:
        notes.append(DISTURBED_NOTE)
    if analysis.NOT_JUDGED in counts:
        notes.append(NOT_JUDGED_NOTE)
    return notes


DISTURBED_NOTE = (
    f"{analysis.DISTURBED}: the benchmark's threads waited for a CPU more than "
    f"{RUN_WAIT_DISTURBED:.0%} of the time while that row was timed (column run_wait_frac), "
    "so no verdict; measure it again on a quiet host (rerun=true)"
)
NOT_JUDGED_NOTE = (
    f"{analysis.NOT_JUDGED}: that row's host could not be judged (no schedstat, and a timed "
    "phase too short for the CPU tick counters), so no verdict"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sweep.compare", description="Compare two runs point by point."
    )
    parser.add_argument("run_a", metavar="RUN_A", help="the reference run")
    parser.add_argument("run_b", metavar="RUN_B", help="the run compared with it")
    add_output_args(parser)
    return parser


def compare(args: argparse.Namespace) -> None:
    rows = rows_of_runs(load_table(args.results, samples=True), [args.run_a, args.run_b])
    kinds = profiles.kinds_of_runs(args.results, [args.run_a, args.run_b])
    table = compare_table(args.run_a, args.run_b, rows, kinds)
    emit(render(table, args.format), args.out)
    if args.format == "csv":
        for note in table.notes:
            print(note, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), compare, argv)


if __name__ == "__main__":
    sys.exit(main())
