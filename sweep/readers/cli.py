"""What every results command shares: `--results`, `--format`, `--out`, and exit code 2
for an input error."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from sweep.readers.load import DEFAULT_RESULTS, ReportError

FORMATS = ("md", "csv", "json")


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
