"""Results loaded for the readers: the columns their tables show, one run's newest rows.

Token lists are read as their length and decode samples only when a verdict needs
them, so a report over 100,000 rows stays interactive.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from sweep.readers import analysis
from sweep.store.results import Col, newest_per_point, read_results

DEFAULT_RESULTS = Path("outputs/results")
MAX_LISTED_RUNS = 10
# What the tables need; the roofline columns are read once the schema has them.
_WANTED = (
    Col.POINT_KEY,
    Col.STATUS,
    Col.CREATED_AT,
    Col.RUN_ID,
    *analysis.POINT_COLUMNS,
    Col.COMPILE_S,
    Col.VMFB_BYTES,
    Col.NUM_DISPATCHES,
    Col.DEQUANT_FUSED,
    Col.PACKED_AT_LOAD,  # the weights as parameters: packed at load, and what loading cost
    Col.LOAD_S,
    Col.RESIDENT_BYTES,
    Col.PREFILL_MS,
    Col.PREFILL_TOK_S,
    Col.DECODE_MS_P10,
    Col.DECODE_MS_P50,
    Col.DECODE_MS_P90,
    Col.TOK_S,
    Col.NUM_TOKENS_MATCHED,
    Col.ROOFLINE_FRAC,
    Col.FP32_AGREEMENT,
    Col.PPL,  # the quality columns (workers.measure.perplexity): a checkpoint with a tokenizer
    Col.KLD_MEAN,
    Col.KLD_P99,
    Col.TOP1_AGREE,
    Col.DEVICE_MS,
    Col.HOST_MS,
    Col.NICENESS,  # the host during the timed phase (workers.core.host)
    Col.RUN_WAIT_FRAC,
    Col.RUN_WAIT_MS,
    Col.HOST_BUSY_FRAC,
    Col.DISTURBED,
    Col.SCHEMA_VERSION,  # from 7 a null `disturbed` means "could not tell"
    Col.PROMPT_TEXT,  # a text prompt and what it gave, shown below the summary
    Col.OUTPUT_TEXT,
    Col.BITS,  # the runtimes side by side: variant family, and the type llama.cpp ran
    Col.LLAMACPP_TYPE,
    Col.LLAMACPP_EXTRA_BUFTS,
    Col.LLAMACPP_FLASH_ATTN,
    Col.LLAMACPP_N_UBATCH,
    Col.RUNTIME_DECODE_MS,
    Col.REPEAT,  # bench.repeats: merged into one row per point (analysis.merge_repeats)
    Col.REPEAT_OF,
)
SAMPLES = Col.DECODE_SAMPLES_MS  # read only where a verdict needs them: they are most of a row


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
    lists = [Col.TOKENS, Col.REFERENCE_TOKENS, *([SAMPLES] if samples else [])]
    table = read_results(results_dir, list(dict.fromkeys([*_WANTED, *extra, *lists])))
    if not table.num_rows:
        raise ReportError(
            f"results directory {results_dir} holds no result files; run a sweep into it "
            f"first (python -m sweep +grid=smoke results_dir={results_dir})"
        )
    if grid is not None:
        grids = sorted(str(g) for g in pc.unique(table[Col.GRID]).to_pylist())
        table = table.filter(pc.equal(table[Col.GRID], grid))
        if not table.num_rows:
            raise ReportError(f"no rows of grid {grid!r} in {results_dir}; grids: {grids}")
    num_tokens = pc.coalesce(
        pc.list_value_length(table[Col.REFERENCE_TOKENS]), pc.list_value_length(table[Col.TOKENS])
    )
    table = table.drop_columns([Col.TOKENS, Col.REFERENCE_TOKENS])
    return table.append_column("num_reference_tokens", num_tokens)


def runs_newest_first(table: pa.Table) -> list[str]:
    """Run ids ordered by their newest row, newest first."""
    newest = table.group_by(Col.RUN_ID).aggregate([(Col.CREATED_AT, "max")])
    order = newest.sort_by([("created_at_max", "descending"), (Col.RUN_ID, "descending")])
    return order[Col.RUN_ID].to_pylist()


def select_run(
    table: pa.Table, run: str | None, *, merge: bool = True
) -> tuple[str, list[dict[str, Any]]]:
    """(run label, the run's newest row per point, its repeats merged unless `merge` is
    False): `run` None is the newest run."""
    runs = runs_newest_first(table)
    run = runs[0] if run is None else run
    if run != "all":
        if run not in runs:
            raise ReportError(unknown_run_message(run, runs))
        table = table.filter(pc.equal(table[Col.RUN_ID], run))
    rows = newest_per_point(to_rows(table))
    return run, analysis.merge_repeats(rows) if merge else rows


def rows_of_runs(table: pa.Table, wanted: Sequence[str]) -> list[dict[str, Any]]:
    """The rows of the `wanted` runs; an unknown run is an input error."""
    runs = runs_newest_first(table)
    for run in wanted:
        if run not in runs:
            raise ReportError(unknown_run_message(run, runs))
    return to_rows(table.filter(pc.is_in(table[Col.RUN_ID], pa.array(list(wanted)))))


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
