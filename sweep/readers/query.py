"""`python -m sweep.query "SQL"`: DuckDB SQL over the results, as a table named `results`.

    python -m sweep.query [--results DIR] [--format md|csv|json] [--out PATH] "SQL"

e.g. `python -m sweep.query "SELECT variant, device, median(decode_ms_p50) AS ms
FROM results WHERE status = 'ok' GROUP BY ALL ORDER BY ms"`. The view covers every
run (filter on run_id) and every schema column, including those older files lack
(`sweep.store.results.duckdb_connect`). Exit codes: 0, or 2 for a missing results dir or
an SQL error (DuckDB's message is printed).
"""

from __future__ import annotations

import argparse
import decimal
import sys
from pathlib import Path
from typing import Any

from sweep.readers.cli import add_output_args, run_cli
from sweep.readers.load import ReportError
from sweep.readers.tables import Column, Table, emit, render
from sweep.store.results import duckdb_connect

MAX_CELL_CHARS = 60  # markdown cells: long lists and error messages are cut


def run_query(results_dir: Path, sql: str) -> tuple[list[str], list[dict[str, Any]]]:
    """(column names, rows as dicts) of `sql` over the view `results`."""
    import duckdb  # lazy, as in sweep.store.results

    if not Path(results_dir).is_dir():
        raise ReportError(f"results directory {results_dir} does not exist; pass --results DIR")
    con = duckdb_connect(Path(results_dir))
    try:
        cursor = con.execute(sql)
        if cursor.description is None:
            return [], []
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, map(_plain, row), strict=True)) for row in cursor.fetchall()]
    except duckdb.Error as e:
        raise ReportError(f"SQL error: {e}") from None
    finally:
        con.close()
    return names, rows


def _plain(value: Any) -> Any:
    """DuckDB's Decimals (e.g. from round()) as floats, so json and csv show numbers."""
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _cell(value: Any) -> str:
    if value is None:
        return ""
    text = f"{value:.6g}" if isinstance(value, float) else str(value)
    return text if len(text) <= MAX_CELL_CHARS else text[: MAX_CELL_CHARS - 3] + "..."


def query_table(names: list[str], rows: list[dict[str, Any]]) -> Table:
    columns = [
        Column(
            name,
            lambda r, n=name: _cell(r[n]),
            right=all(isinstance(r[name], int | float) for r in rows if r[name] is not None),
        )
        for name in names
    ]
    return Table(records=rows, columns=columns, header={})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sweep.query", description="Run DuckDB SQL over the table `results`."
    )
    parser.add_argument("sql", metavar="SQL", help="a query over the table named results")
    add_output_args(parser, "result")
    return parser


def query(args: argparse.Namespace) -> None:
    names, rows = run_query(args.results, args.sql)
    if names:
        emit(render(query_table(names, rows), args.format), args.out)


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), query, argv)


if __name__ == "__main__":
    sys.exit(main())
