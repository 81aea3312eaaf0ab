"""The Parquet results store of a sweep: one row per benchmarked point.

Why Parquet files and not a database: a sweep runs on many hosts and for hours, and
may be killed at any moment. Parquet files cannot be appended to, so every `write`
produces a new, complete file, written under a temporary name that starts with '.'
and ends with '.tmp', fsynced, then renamed into place with `os.replace`. A reader
that globs `*.parquet` therefore sees whole files or nothing, and a writer killed
mid-write leaves only a temp file that every reader here ignores.

Layout: `<results_dir>/run_id=<run_id>/part-<utc time>-<counter>-<uuid8>.parquet`; when
a run ends its parts are compacted into one file (`sweep.store.compaction`), since every file
costs each query a footer read (about 35 KB of Parquet overhead per one-row file).
Anything else under results_dir is not a result: a file there that is not readable
Parquet is moved to `_unreadable/` with a warning, never fatal.
The folder name looks like a Hive partition, but `run_id` is also stored in every
file, so readers must *not* discover partitions (pyarrow and pandas default to Hive
discovery and then fail with "Field run_id has incompatible types: string vs
dictionary"). The readers below turn discovery off; from pandas use
`read_results(results_dir).to_pandas()`, or
`pd.read_parquet(results_dir, partitioning=None, schema=SCHEMA)` (without `schema=`
pyarrow takes the columns of the first file it finds, so an older file first would
hide newer columns).

The schema is explicit and versioned (`SCHEMA_VERSION`, also in the file metadata):
a file written by an older version that lacks a column reads back with nulls there.
"""

from __future__ import annotations

import datetime as dt
import enum
import itertools
import os
import uuid
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from workers.core.files import TMP_PREFIX, TMP_SUFFIX, atomic_write
from workers.core.kinds import Status

if TYPE_CHECKING:
    import duckdb

SCHEMA_VERSION: int = 10
# What each version added; a file of an older version reads back with nulls there.
SCHEMA_HISTORY: dict[int, str] = {
    1: "the first schema",
    2: "bench_s, bytes_per_token, peak_gbps, roofline_frac, started_at, finished_at, layout, "
    "fp32_agreement, fp32_logit_error, steps_per_call, device_ms, host_ms, batch_size, depth, "
    "attention_span, prefill_tok_s, prompt_text, output_text",
    3: "replica",
    4: "dequant_fused, ppl, kld_mean, kld_p99, top1_agree, num_eval_tokens",
    5: "bits, llamacpp_type, runtime_decode_ms, threads, repeat, repeat_of",
    6: "niceness, host_busy_frac, disturbed, timed_started_at, timed_finished_at, "
    "prefill_compile_started_at, prefill_compile_finished_at, decode_compile_started_at, "
    "decode_compile_finished_at",
    7: "run_wait_frac, run_wait_ms; disturbed from the run-queue wait, null where unknown; "
    "llamacpp_extra_bufts, llamacpp_flash_attn, llamacpp_n_ubatch",
    8: "num_concurrent",
    9: "weights, packed_at_load, packed_per_call, load_s, load_bytes, resident_bytes",
    10: "architecture",
}

_REQUIRED = ("run_id", "point_key", "status", "created_at", "schema_version")


def _build_schema() -> pa.Schema:
    """The columns, in order; only `_REQUIRED` are non-null (a failed point has no timings)."""
    f64, i32, i64, s = pa.float64(), pa.int32(), pa.int64(), pa.string()
    ts = pa.timestamp("us", tz="UTC")
    columns: list[tuple[str, pa.DataType]] = [
        # identity of the point
        ("run_id", s),
        ("point_key", s),
        ("grid", s),
        ("model", s),
        ("architecture", s),  # the model's family as llama.cpp names it: llama, qwen2, qwen3
        ("variant", s),
        ("layout", s),
        ("weights", s),  # IREE: the graphs' weights as arguments or parameters
        ("group_size", i32),
        ("bits", i32),  # the quantized linears' bits (4, 8); null for a float variant
        ("device", s),
        ("driver", s),
        ("runtime", s),
        ("prompt_length", i32),
        ("prompt_bucket", i32),
        ("max_seq", i32),
        ("flag_set", s),
        ("flags", pa.list_(s)),
        ("llamacpp_type", s),  # llama.cpp points: the GGUF tensor type it ran (Q4_1, ...)
        # ... and its switches as it ran them (workers.tasks.LlamaCppSettings)
        ("llamacpp_extra_bufts", pa.bool_()),
        ("llamacpp_flash_attn", s),
        ("llamacpp_n_ubatch", i32),
        # outcome
        ("status", s),
        ("error_class", s),
        ("error_message", s),
        ("returncode", i32),
        # compile
        ("compile_s", f64),
        ("decode_compile_s", f64),
        ("prefill_compile_s", f64),
        ("vmfb_bytes", i64),
        ("num_dispatches", i32),
        # every quantized linear's dequant inside a matvec/matmul dispatch of the decode
        # graph (workers/compile/dispatches.py); null: unquantized, XLA, or names unknown
        ("dequant_fused", pa.bool_()),
        # data tiling's packings (workers.compile.iree): hoisted into initializers (prefill
        # and decode graphs together; run once at load) and left in decode's entry point
        ("packed_at_load", i32),
        ("packed_per_call", i32),
        ("compile_cache_hit", pa.bool_()),
        # when each graph's compile task held the host's compile lock (a cache hit: its
        # lookup); with timed_*: no compile overlaps a timed phase on one host
        ("prefill_compile_started_at", ts),
        ("prefill_compile_finished_at", ts),
        ("decode_compile_started_at", ts),
        ("decode_compile_finished_at", ts),
        # weights
        ("weight_bytes", i64),
        ("quant_error", f64),
        ("fp32_agreement", f64),
        ("fp32_logit_error", f64),
        # quality on the eval text, as llama-perplexity (workers.measure.perplexity); null without
        ("ppl", f64),
        ("kld_mean", f64),
        ("kld_p99", f64),
        ("top1_agree", f64),
        ("num_eval_tokens", i32),
        ("upload_s", f64),
        # loading the point's modules (initializers, so packing, included): seconds, the
        # process's growth (CPU drivers: the packed copies), and weights plus that growth
        ("load_s", f64),
        ("load_bytes", i64),
        ("resident_bytes", i64),
        ("bench_s", f64),
        # timings
        ("prefill_ms", f64),
        ("prefill_tok_s", f64),  # prompt tokens (every sequence's) per second of prefill
        ("prefill_samples_ms", pa.list_(f64)),
        ("decode_ms_p10", f64),
        ("decode_ms_p50", f64),
        ("decode_ms_p90", f64),
        ("decode_ms_p99", f64),
        ("decode_ms_mean", f64),
        ("decode_ms_std", f64),
        ("decode_samples_ms", pa.list_(f64)),
        ("tok_s", f64),
        # the runtime's own ms per timed decode token, where it keeps one (llama.cpp's
        # performance counters: its decode calls without the readback and argmax)
        ("runtime_decode_ms", f64),
        ("num_warmup_steps", i32),
        ("num_decode_steps", i32),
        ("steps_per_call", i32),  # greedy steps per decode call (samples are per token)
        ("batch_size", i32),  # sequences per step: tok_s counts them all
        ("depth", i32),  # context tokens beyond the prompt when decode starts
        ("attention_span", i32),  # cache slots decode attends over; null: all max_seq
        ("replica", i32),  # > 0: a configuration measured again (a search's ablation)
        ("threads", i32),  # cores the point ran on (IREE local-task workers, the actor's pin)
        # bench.repeats > 1: which measurement of the point (from 0), and the key the
        # repeats share (the point's key when measured once); readers merge them
        ("repeat", i32),
        ("repeat_of", s),
        # where a step's time goes (profile=true): dispatch time and the rest, per token
        ("device_ms", f64),
        ("host_ms", f64),
        # roofline: how far decode is from reading its bytes at the device's copy bandwidth
        ("bytes_per_token", i64),
        ("peak_gbps", f64),
        ("roofline_frac", f64),
        # the host during the timed phase (workers.core.host): the niceness the worker ran at,
        # the run-queue wait of the benchmark's threads (share of their runnable time, and
        # ms), the share of host CPU ticks other processes at niceness <= 0 took, and the
        # verdict: the wait above RUN_WAIT_DISTURBED (the ticks above DISTURBED_FRAC where
        # schedstat is missing), null where the window cannot tell; the point still ran
        ("niceness", i32),
        ("run_wait_frac", f64),
        ("run_wait_ms", f64),
        ("host_busy_frac", f64),
        ("disturbed", pa.bool_()),
        # the most other points of the sweep timed on its node at once with this one (GPU
        # points side by side, bench.gpu_concurrency); 0: timed alone; null: not measured,
        # or the sweep stopped before its neighbours ended (sweep.execute.overlap)
        ("num_concurrent", i32),
        # correctness
        ("prompt_ids", pa.list_(i32)),
        ("tokens", pa.list_(i32)),
        ("reference_tokens", pa.list_(i32)),
        ("num_tokens_matched", i32),
        ("prompt_text", s),  # a text prompt, and the first sequence's output decoded
        ("output_text", s),
        # provenance
        ("node_id", s),
        ("hostname", s),
        ("device_name", s),
        ("iree_version", s),
        ("jax_version", s),
        ("ray_version", s),
        ("started_at", pa.timestamp("us", tz="UTC")),  # the worker's wall-clock span of the point
        ("finished_at", ts),
        ("timed_started_at", ts),  # the timed phase: prefill runs, warmup, timed steps
        ("timed_finished_at", ts),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("repro_command", s),
        ("attempt", i32),
        ("schema_version", i32),
    ]
    fields = [pa.field(name, t, nullable=name not in _REQUIRED) for name, t in columns]
    return pa.schema(fields, metadata={"sweep.schema_version": str(SCHEMA_VERSION)})


SCHEMA: pa.Schema = _build_schema()
# Every column by name, from the schema itself: code that reads a row says
# `row[Col.DECODE_MS_P50]`, so a column renamed or dropped here fails where it is read.
Col = enum.StrEnum("Col", {name.upper(): name for name in SCHEMA.names})
COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)

# The dispatches dataset (`profile=true`): one row per dispatch function of a profiled
# point, in `<results_dir>/dispatches/`, written and read exactly like the results.
DISPATCHES = "dispatches"
DISPATCH_SCHEMA_VERSION: int = 2  # 2: graph (prefill profiles beside decode's)


def _build_dispatch_schema() -> pa.Schema:
    f64, i32, s = pa.float64(), pa.int32(), pa.string()
    columns: list[tuple[str, pa.DataType]] = [
        ("run_id", s),
        ("point_key", s),
        # what the point is, so a query needs no join for the usual questions
        ("variant", s),
        ("layout", s),
        ("device", s),
        ("runtime", s),
        ("flag_set", s),
        ("prompt_length", i32),
        ("steps_per_call", i32),
        ("graph", s),  # decode or prefill; null (version 1): decode
        # the dispatch
        ("name", s),  # the compiled dispatch function, e.g. main_dispatch_3_vecmat_8192x2048_f32
        ("kind", s),  # matmul, attention, transpose, reduction, elementwise, pack, copy, other
        # per token: a generated one (decode), a prompt token (prefill: a call / its tokens)
        ("calls_per_token", f64),
        ("ms_per_token", f64),  # its spans per token (overlapping spans each count)
        ("share", f64),  # of the point's summed dispatch time
        ("num_calls_profiled", i32),
        ("profile_mode", s),  # host-execution (CPU drivers) or dispatch-events (CUDA)
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("schema_version", i32),
    ]
    fields = [pa.field(name, t, nullable=name not in _REQUIRED_DISPATCH) for name, t in columns]
    return pa.schema(fields, metadata={"sweep.schema_version": str(DISPATCH_SCHEMA_VERSION)})


_REQUIRED_DISPATCH = ("run_id", "point_key", "name", "created_at", "schema_version")
DISPATCH_SCHEMA: pa.Schema = _build_dispatch_schema()

# A killed writer leaves `.part-*.parquet.*.tmp` (workers.core.files): hidden *and* not
# `*.parquet`, so both pyarrow's default ignore_prefixes and DuckDB's `**/*.parquet`
# glob skip it.


def _check_run_id(run_id: str) -> None:
    """run_id becomes a folder name, so it must be one path component."""
    bad = not run_id or run_id in (".", "..") or "/" in run_id or os.sep in run_id
    if bad or run_id.startswith((".", "_")):
        raise ValueError(
            f"run_id={run_id!r} cannot name a results folder: use a non-empty name "
            "without '/' that does not start with '.' or '_'"
        )


def _ensure_writable(directory: Path) -> None:
    """Create `directory` and prove it takes a file, so a bad path fails before any work."""
    probe = directory / f"{TMP_PREFIX}probe-{uuid.uuid4().hex[:8]}{TMP_SUFFIX}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(
            f"results directory {directory} is not writable ({type(e).__name__}: "
            f"{e.strerror or e}); choose another results_dir="
        ) from e


def _to_table(
    rows: Sequence[dict[str, Any]], defaults: dict[str, Any], schema: pa.Schema = SCHEMA
) -> pa.Table:
    """Rows -> a table of exactly `schema`, with errors that name the offending column."""
    unknown = sorted({key for row in rows for key in row} - set(schema.names))
    if unknown:
        raise ValueError(
            f"unknown result columns {unknown}; add them to the schema in sweep.store.results "
            "(and bump its version) or drop them from the row"
        )
    arrays = [
        _column(field, [row.get(field.name, defaults.get(field.name)) for row in rows])
        for field in schema
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def _column(field: pa.Field, values: list[Any]) -> pa.Array:
    """One column of `field`'s type; refuses what pyarrow would silently truncate."""
    if not field.nullable and any(v is None for v in values):
        raise ValueError(f"result column {field.name!r} is required but a row lacks it")
    if pa.types.is_integer(field.type):
        lossy = [v for v in values if isinstance(v, float) and not v.is_integer()]
        if lossy:  # pyarrow casts 1.5 to 1 without a word
            raise ValueError(f"result column {field.name!r} must hold integers, got {lossy[:3]}")
    try:
        return pa.array(values, type=field.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as e:
        raise ValueError(f"result column {field.name!r} must hold {field.type}: {e}") from e


class ResultsWriter:
    """Writes batches of result rows of one run as new Parquet files, atomically.

    One file per `write` call: the driver should batch rows (e.g. every few seconds)
    rather than write one file per point, since every file costs each query a footer
    read (100k rows in 100 files query in ~0.1 s; in 1,000 files, ~1 s on 2 cores).
    Safe to use from several processes or hosts at once on the same results_dir:
    names carry a uuid, and nothing is ever appended or overwritten.
    """

    def __init__(self, results_dir: Path, run_id: str, schema: pa.Schema = SCHEMA) -> None:
        """`schema`: SCHEMA for the results, DISPATCH_SCHEMA for `results_dir/dispatches`."""
        _check_run_id(run_id)
        self.results_dir = Path(results_dir)
        self.run_id = run_id
        self.schema = schema
        self.run_dir = self.results_dir / f"run_id={run_id}"  # made by the first write
        _ensure_writable(self.results_dir)
        self._counter = itertools.count()

    def write(self, rows: Sequence[dict[str, Any]]) -> Path:
        """Write `rows` as one new file and return its path.

        Missing keys become null; `run_id`, `schema_version` and `created_at` (now,
        UTC; naive datetimes are taken as UTC) are filled in when absent.
        """
        if not rows:
            raise ValueError("ResultsWriter.write got no rows; call it with at least one")
        now = dt.datetime.now(dt.UTC)
        version = int(self.schema.metadata[b"sweep.schema_version"])
        defaults = {"run_id": self.run_id, "schema_version": version, "created_at": now}
        foreign = sorted({r["run_id"] for r in rows if r.get("run_id", self.run_id) != self.run_id})
        if foreign:
            raise ValueError(
                f"rows carry run_id {foreign} but this writer writes run_id={self.run_id!r}; "
                "use one ResultsWriter per run"
            )
        table = _to_table(rows, defaults, self.schema)
        name = f"part-{now:%Y%m%dT%H%M%S%fZ}-{next(self._counter):06d}-{uuid.uuid4().hex[:8]}"
        final = self.run_dir / f"{name}.parquet"
        return atomic_write(
            final, lambda f: pq.write_table(table, f, compression="zstd"), fsync=True
        )


RESULT_GLOB = "run_id=*/*.parquet"  # what the writer makes; the only files readers read


def _result_files(results_dir: Path) -> list[str]:
    """Complete result files, sorted (run folder, then write time).

    Only `run_id=*/*.parquet`: temp files (`.*.tmp`), hidden folders (a compaction
    in progress) and `_`-folders (run records, files set aside) are not results.
    """
    root = Path(results_dir)
    if not root.is_dir():
        return []
    return sorted(str(p) for p in root.glob(RESULT_GLOB) if not p.name.startswith("."))


UNREADABLE_DIR = "_unreadable"  # where files under results_dir that are not result files go


def dataset_of(files: list[str], schema: pa.Schema = SCHEMA) -> ds.Dataset:
    """Result files as one dataset of `schema` (missing columns read as null).

    An explicit file list means no partition discovery, so the `run_id=` folders do
    not add a second, dictionary-typed `run_id` column.
    """
    return ds.dataset(files, schema=schema, format="parquet")


def set_aside_unreadable(results_dir: Path, files: Sequence[str]) -> list[str]:
    """Moves the files that are not readable Parquet to `<results_dir>/_unreadable/`,
    warning for each, and returns the readable ones. Nothing is deleted: a stray or
    damaged file is kept where a person can look at it, and readers go on without it."""
    root, readable = Path(results_dir), []
    for name in files:
        try:
            pq.read_metadata(name)
            readable.append(name)
            continue
        except (OSError, pa.ArrowException) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        target = root / UNREADABLE_DIR / Path(name).relative_to(root)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(name, target)
            where = f"moved to {target}"
        except OSError:
            where = "skipped (could not be moved)"
        warnings.warn(f"{name} is not a readable result file ({reason}); {where}", stacklevel=3)
    return readable


def read_results(
    results_dir: Path, columns: Sequence[str] | None = None, schema: pa.Schema = SCHEMA
) -> pa.Table:
    """Every complete row under results_dir as a table of `schema` (or of `columns`).

    Columns that an older file lacks are null; columns not in the schema are dropped,
    so callers always get the current schema. No files: an empty table. A file that is
    not readable Parquet is set aside with a warning, never fatal. For the dispatches:
    `read_results(results_dir / DISPATCHES, schema=DISPATCH_SCHEMA)`.
    """
    names = list(schema.names if columns is None else columns)
    unknown = sorted(set(names) - set(schema.names))
    if unknown:
        raise ValueError(f"unknown result columns {unknown}; choose from {schema.names}")
    files = _result_files(results_dir)
    if not files:
        return schema.empty_table().select(names)
    try:
        return dataset_of(files, schema).to_table(columns=names)
    except (OSError, pa.ArrowException):
        files = set_aside_unreadable(results_dir, files)
        if not files:
            return schema.empty_table().select(names)
        return dataset_of(files, schema).to_table(columns=names)


def newest_per_point(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest row (by created_at; a tie goes to the later row) of each point_key: the
    one definition of "a point's result" for rows already read (`_newest_indices` is the
    same rule on an Arrow table)."""
    newest: dict[str, dict[str, Any]] = {}
    for row in rows:
        old = newest.get(row["point_key"])
        if old is None or row["created_at"] >= old["created_at"]:
            newest[row["point_key"]] = row
    return list(newest.values())


def _newest_indices(table: pa.Table) -> pa.Array:
    """Row indices of the newest row (by created_at) of each point_key.

    Ties on created_at go to the row read last (later file), since the sort is stable.
    """
    order = pc.sort_indices(table, [("point_key", "ascending"), ("created_at", "ascending")])
    keys = table["point_key"].take(order)
    if len(keys) == 0:
        return order
    # last index of each run of equal keys in the sorted order
    is_last = pc.not_equal(keys[:-1], keys[1:])
    is_last = pa.concat_arrays([is_last.combine_chunks(), pa.array([True])])
    return order.filter(is_last)


def _newest(results_dir: Path, columns: Sequence[str]) -> pa.Table:
    """The newest row of each point_key, reading only `columns` plus the sort keys."""
    names = list(dict.fromkeys(["point_key", "created_at", *columns]))
    table = read_results(results_dir, names)
    return table.take(_newest_indices(table))


def newest_rows(
    results_dir: Path, columns: Sequence[str], statuses: Iterable[str] | None = None
) -> dict[str, dict[str, Any]]:
    """The newest row of each point (`columns` of it), by point key; with `statuses`,
    only points whose newest row has one of them."""
    newest = _newest(results_dir, ["status", *columns]).to_pylist()
    wanted = None if statuses is None else set(statuses)
    return {r["point_key"]: r for r in newest if wanted is None or r["status"] in wanted}


def completed_point_keys(
    results_dir: Path, statuses: Iterable[str] = (Status.OK,), since: dt.datetime | None = None
) -> set[str]:
    """Keys whose newest row has one of `statuses`: the points a resumed sweep skips.

    Only the newest row counts, so a point that once passed and then failed on a
    rerun (e.g. after a flag change) is run again; with `since`, only rows written
    after it count. Reads point_key, status, created_at.
    """
    wanted = [statuses] if isinstance(statuses, str) else list(statuses)
    newest = _newest(results_dir, ["status"])
    done = pc.is_in(newest["status"], value_set=pa.array(wanted, type=pa.string()))
    if since is not None:
        done = pc.and_(
            done, pc.greater(newest["created_at"], pa.scalar(since, newest["created_at"].type))
        )
    return set(newest["point_key"].filter(done).to_pylist())


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _sql_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _view_columns(
    con: duckdb.DuckDBPyConnection, files_sql: str, empty: str, schema: pa.Schema
) -> str:
    """The view's select list: schema columns in order, typed NULL for any no file has yet.

    Fixed at connect time (one pass over the footers) rather than a `UNION ALL BY NAME`
    with an empty table, which costs that pass again on every query.
    """
    present = [row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {files_sql}").fetchall()]
    types = {row[0]: row[1] for row in con.execute(f"DESCRIBE {empty}").fetchall()}
    items = [
        _sql_name(name) if name in present else f"CAST(NULL AS {types[name]}) AS {_sql_name(name)}"
        for name in schema.names
    ]
    items += [_sql_name(name) for name in present if name not in schema.names]
    return ", ".join(items)


def duckdb_connect(results_dir: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with a view `results` over every complete result file, and a
    view `dispatches` over the profiles' dispatch rows (`results_dir/dispatches`).

    `union_by_name=true` reads older files that miss columns (as NULL); every schema
    column exists even if all files predate it. A file that is not Parquet is set aside
    (`set_aside_unreadable`) before the view is made. `hive_partitioning=false` because
    run_id is in the files. The view globs at query time, so files written after
    connecting show up (a folder that was empty at connect time needs a new connection).
    The footer cache is safe because result files are never rewritten.
    """
    import duckdb  # lazy: only queries need it

    con = duckdb.connect(":memory:")
    con.execute("SET parquet_metadata_cache = true")
    _create_view(con, "results", Path(results_dir), SCHEMA)
    _create_view(con, DISPATCHES, Path(results_dir) / DISPATCHES, DISPATCH_SCHEMA)
    return con


def _create_view(
    con: duckdb.DuckDBPyConnection, name: str, folder: Path, schema: pa.Schema
) -> None:
    import duckdb

    empty = f"_{name}_empty"
    con.register("_schema", schema.empty_table())
    con.execute(f"CREATE TABLE {empty} AS SELECT * FROM _schema")
    con.unregister("_schema")
    files = _result_files(folder)
    if not files:
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM {empty}")
        return
    pattern = _sql_string(str(folder.resolve() / RESULT_GLOB))
    files_sql = f"read_parquet({pattern}, union_by_name=true, hive_partitioning=false)"
    try:
        select = _view_columns(con, files_sql, empty, schema)
    except duckdb.Error:  # a file that is not Parquet: set it aside and look again
        if not set_aside_unreadable(folder, files):
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM {empty}")
            return
        select = _view_columns(con, files_sql, empty, schema)
    con.execute(f"CREATE VIEW {name} AS SELECT {select} FROM {files_sql}")
