"""The Parquet results store, read back by every reader a user will reach for.

Real files in tmp_path, read with pyarrow, pandas and DuckDB: the `run_id=` folders look
like Hive partitions and the default pyarrow/pandas discovery trips over them, so each
reader is exercised with the call the module documents.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sweep.store.results import (
    COLUMNS,
    SCHEMA,
    SCHEMA_VERSION,
    ResultsWriter,
    completed_point_keys,
    duckdb_connect,
    newest_per_point,
    read_results,
)
from tests.helpers.rows import T0, make_row
from workers.records import decode_stats


def latest_rows(results_dir: Path) -> dict[str, dict[str, Any]]:
    """point_key -> its newest row, as a resume and the reports see it."""
    rows = newest_per_point(read_results(results_dir).to_pylist())
    return {row["point_key"]: row for row in rows}


@pytest.fixture
def two_runs(tmp_path: Path) -> Path:
    """3 files over 2 runs: fp32 p50s 10, 12, 14 and int4 p50s 20, 30."""
    run_a = ResultsWriter(tmp_path, "a")
    run_a.write([make_row("p1", "fp32", [9, 10, 11]), make_row("p2", "int4", [20.0])])
    run_a.write([make_row("p3", "fp32", [12.0])])
    ResultsWriter(tmp_path, "b").write(
        [make_row("p4", "fp32", [14.0, 14.0]), make_row("p5", "int4", [30.0])]
    )
    return tmp_path


def test_schema_is_explicit() -> None:
    assert tuple(SCHEMA.names) == COLUMNS and len(set(COLUMNS)) == len(COLUMNS)
    assert SCHEMA.metadata == {b"sweep.schema_version": str(SCHEMA_VERSION).encode()}
    expected = {
        "run_id": pa.string(),
        "group_size": pa.int32(),
        "flags": pa.list_(pa.string()),
        "returncode": pa.int32(),
        "vmfb_bytes": pa.int64(),
        "compile_cache_hit": pa.bool_(),
        "decode_samples_ms": pa.list_(pa.float64()),
        "prompt_ids": pa.list_(pa.int32()),
        "tok_s": pa.float64(),
        "created_at": pa.timestamp("us", tz="UTC"),
        "schema_version": pa.int32(),
    }
    for name, type_ in expected.items():
        assert SCHEMA.field(name).type == type_, name
    required = {f.name for f in SCHEMA if not f.nullable}
    assert required == {"run_id", "point_key", "status", "schema_version", "created_at"}


def test_three_files_two_runs_read_by_pyarrow_pandas_duckdb(two_runs: Path) -> None:
    files = sorted(two_runs.glob("run_id=*/*.parquet"))
    assert len(files) == 3, "one file per write call"

    table = read_results(two_runs)
    assert table.schema.equals(SCHEMA, check_metadata=True)
    assert table.num_rows == 5
    assert sorted(table["run_id"].to_pylist()) == ["a", "a", "a", "b", "b"]
    assert table["schema_version"].to_pylist() == [SCHEMA_VERSION] * 5

    # each file carries the full schema and its version (Parquet names list items
    # "element", which only a check_metadata=True comparison looks at)
    assert pq.read_schema(files[0]).equals(SCHEMA)
    assert pq.read_schema(files[0]).metadata == SCHEMA.metadata
    direct = pq.read_table(two_runs, partitioning=None)
    assert direct.schema.field("run_id").type == pa.string() and direct.num_rows == 5

    frame = pd.read_parquet(two_runs, partitioning=None, schema=SCHEMA)
    assert len(frame) == 5 and list(frame.columns) == list(COLUMNS)
    assert read_results(two_runs).to_pandas().shape == (5, len(COLUMNS))

    con = duckdb_connect(two_runs)
    names = [r[0] for r in con.execute("DESCRIBE results").fetchall()]
    assert names == list(COLUMNS), "no second run_id column from the folder names"
    medians = dict(
        con.execute(
            "SELECT variant, median(decode_ms_p50) FROM results GROUP BY variant"
        ).fetchall()
    )
    assert medians == pytest.approx({"fp32": 12.0, "int4": 25.0})
    assert con.execute("SELECT count(*) FROM results WHERE run_id = 'b'").fetchone() == (2,)


def test_duckdb_view_sees_files_written_after_connect(tmp_path: Path) -> None:
    writer = ResultsWriter(tmp_path, "r")
    writer.write([make_row("p1", "fp32", [1.0])])
    con = duckdb_connect(tmp_path)
    writer.write([make_row("p2", "fp32", [1.0])])
    assert con.execute("SELECT count(*) FROM results").fetchone() == (2,)


def test_empty_results_dir(tmp_path: Path) -> None:
    assert read_results(tmp_path / "nothing").schema.equals(SCHEMA)
    assert read_results(tmp_path).num_rows == 0
    assert latest_rows(tmp_path) == {}
    assert completed_point_keys(tmp_path) == set()
    con = duckdb_connect(tmp_path)
    assert [r[0] for r in con.execute("DESCRIBE results").fetchall()] == list(COLUMNS)
    assert con.execute("SELECT count(*) FROM results").fetchone() == (0,)


def test_unknown_column_is_rejected_and_nothing_written(tmp_path: Path) -> None:
    writer = ResultsWriter(tmp_path, "r")
    with pytest.raises(ValueError, match=r"unknown result columns \['decode_ms_median', 'oops'\]"):
        writer.write([make_row("p1", "fp32", [1.0], oops=1, decode_ms_median=2.0)])
    assert not writer.run_dir.exists(), "nothing written, not even the run folder"


def test_bad_rows_name_the_column(tmp_path: Path) -> None:
    writer = ResultsWriter(tmp_path, "r")
    row = make_row("p1", "fp32", [1.0])
    with pytest.raises(ValueError, match="'status' is required"):
        writer.write([{k: v for k, v in row.items() if k != "status"}])
    with pytest.raises(ValueError, match="'prompt_length' must hold int32"):
        writer.write([{**row, "prompt_length": "seven"}])
    with pytest.raises(ValueError, match="'num_dispatches' must hold integers"):
        writer.write([{**row, "num_dispatches": 1.5}])
    with pytest.raises(ValueError, match="run_id"):
        writer.write([{**row, "run_id": "someone-else"}])
    with pytest.raises(ValueError, match="no rows"):
        writer.write([])
    assert not writer.run_dir.exists(), "nothing written, not even the run folder"


def test_missing_keys_are_null(tmp_path: Path) -> None:
    ResultsWriter(tmp_path, "r").write(
        [{"point_key": "p1", "status": "compile_error", "error_class": "CompileTimeout"}]
    )
    (row,) = read_results(tmp_path).to_pylist()
    assert row["decode_ms_p50"] is None and row["flags"] is None and row["returncode"] is None
    assert row["run_id"] == "r" and row["schema_version"] == SCHEMA_VERSION
    assert row["created_at"].tzinfo is not None


def test_decode_stats_matches_numpy() -> None:
    samples = list(range(1, 101))
    stats = decode_stats(samples)
    ref = np.asarray(samples, dtype=np.float64)
    for q in (10, 50, 90, 99):
        assert stats[f"decode_ms_p{q}"] == pytest.approx(np.percentile(ref, q))
    assert stats["decode_ms_p50"] == pytest.approx(50.5)
    assert stats["decode_ms_p99"] == pytest.approx(99.01)
    assert stats["decode_ms_mean"] == pytest.approx(50.5)
    assert stats["decode_ms_std"] == pytest.approx(np.std(ref, ddof=1))
    assert stats["tok_s"] == pytest.approx(1000 / 50.5)
    assert set(stats) <= set(COLUMNS)
    assert decode_stats([4.0])["decode_ms_std"] == 0.0
    with pytest.raises(ValueError, match="non-empty"):
        decode_stats([])
    with pytest.raises(ValueError, match="positive finite"):
        decode_stats([1.0, float("nan")])


def test_leftover_temp_file_is_ignored_by_all_readers(two_runs: Path) -> None:
    # what a writer killed between open() and os.replace leaves behind
    (two_runs / "run_id=a" / ".part-xxx.parquet.tmp").write_bytes(b"PAR1 garbage")
    assert read_results(two_runs).num_rows == 5
    assert pq.read_table(two_runs, partitioning=None).num_rows == 5
    assert len(pd.read_parquet(two_runs, partitioning=None, schema=SCHEMA)) == 5
    assert len(latest_rows(two_runs)) == 5
    assert duckdb_connect(two_runs).execute("SELECT count(*) FROM results").fetchone() == (5,)


def test_writer_leaves_only_complete_files(two_runs: Path) -> None:
    names = [p.name for p in two_runs.rglob("*")]
    assert not [n for n in names if n.startswith(".")], "no temp or probe file left behind"
    for name in (p.name for p in two_runs.glob("run_id=a/*.parquet")):
        assert name.startswith("part-") and name.count("-") == 3


def test_latest_rows_picks_newest_across_runs(tmp_path: Path) -> None:
    later = T0 + dt.timedelta(hours=1)
    # run "b" is older but sorts after "a": the newest row must win by created_at
    ResultsWriter(tmp_path, "b").write([make_row("p1", "fp32", [5.0], created_at=T0)])
    ResultsWriter(tmp_path, "a").write(
        [
            make_row("p1", "fp32", [7.0], created_at=later, attempt=2),
            make_row("p2", "int4", [3.0], status="error", created_at=later),
        ]
    )
    ResultsWriter(tmp_path, "c").write([make_row("p2", "int4", [3.0], created_at=T0)])

    rows = latest_rows(tmp_path)
    assert set(rows) == {"p1", "p2"}
    assert rows["p1"]["run_id"] == "a" and rows["p1"]["decode_ms_p50"] == 7.0
    assert rows["p1"]["attempt"] == 2 and rows["p1"]["created_at"] == later
    assert rows["p2"]["status"] == "error", "an older ok row must not mask a newer failure"

    assert completed_point_keys(tmp_path) == {"p1"}
    assert completed_point_keys(tmp_path, statuses=("ok", "error")) == {"p1", "p2"}
    assert completed_point_keys(tmp_path, statuses="error") == {"p2"}


def test_unwritable_results_dir_fails_at_construction(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    bad = blocker / "results"
    with pytest.raises(ValueError, match="choose another results_dir=") as info:
        ResultsWriter(bad, "r")
    assert str(bad) in str(info.value)


@pytest.mark.parametrize("run_id", ["", "a/b", "..", ".hidden"])
def test_bad_run_id_is_rejected(tmp_path: Path, run_id: str) -> None:
    with pytest.raises(ValueError, match="run_id"):
        ResultsWriter(tmp_path, run_id)


def test_older_file_without_a_column_reads_as_null(two_runs: Path) -> None:
    # a file from an older schema: no tok_s, no flags, and no schema metadata
    old_fields = [SCHEMA.field(n) for n in ("run_id", "point_key", "variant", "status")]
    old_fields += [SCHEMA.field("decode_ms_p50"), SCHEMA.field("created_at")]
    old_fields += [SCHEMA.field("schema_version")]
    old = pa.table(
        {
            "run_id": ["old"],
            "point_key": ["p0"],
            "variant": ["fp32"],
            "status": ["ok"],
            "decode_ms_p50": [11.0],
            "created_at": [T0],
            "schema_version": [0],
        },
        schema=pa.schema(old_fields),
    )
    (two_runs / "run_id=old").mkdir()
    pq.write_table(old, two_runs / "run_id=old" / "part-old.parquet")

    table = read_results(two_runs)
    assert table.schema.equals(SCHEMA) and table.num_rows == 6
    (row,) = [r for r in table.to_pylist() if r["point_key"] == "p0"]
    assert row["tok_s"] is None and row["flags"] is None and row["decode_ms_p50"] == 11.0
    assert latest_rows(two_runs)["p0"]["tok_s"] is None

    con = duckdb_connect(two_runs)
    got = con.execute("SELECT tok_s, flags FROM results WHERE point_key = 'p0'").fetchall()
    assert got == [(None, None)]
    medians = dict(
        con.execute("SELECT variant, median(decode_ms_p50) FROM results GROUP BY 1").fetchall()
    )
    assert medians["fp32"] == pytest.approx(11.5)


def test_duckdb_has_every_column_even_if_all_files_are_old(tmp_path: Path) -> None:
    old = pa.table({"run_id": ["old"], "point_key": ["p0"], "status": ["ok"]})
    (tmp_path / "run_id=old").mkdir()
    pq.write_table(old, tmp_path / "run_id=old" / "part-old.parquet")
    con = duckdb_connect(tmp_path)
    assert [r[0] for r in con.execute("DESCRIBE results").fetchall()] == list(COLUMNS)
    assert con.execute("SELECT point_key, tok_s FROM results").fetchall() == [("p0", None)]


def test_import_does_not_pull_heavy_modules() -> None:
    code = (
        "import sys, sweep.store.results; "
        "print(sorted(m for m in ('ray', 'jax', 'iree', 'duckdb') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- files that are not results, older schemas, compaction ------------------------------


def test_a_stray_file_is_set_aside_with_a_warning_never_fatal(two_runs: Path, capsys) -> None:
    from sweep.readers import report

    stray = two_runs / "run_id=x" / "part.parquet"
    stray.parent.mkdir()
    stray.write_text("a word, not Parquet")
    with pytest.warns(UserWarning, match=r"run_id=x/part.parquet is not a readable result file"):
        assert read_results(two_runs).num_rows == 5
    assert not stray.exists() and (two_runs / "_unreadable" / "run_id=x" / "part.parquet").exists()
    assert completed_point_keys(two_runs) == {"p1", "p2", "p3", "p4", "p5"}

    stray.write_text("again")
    with pytest.warns(UserWarning, match="not a readable result file"):
        con = duckdb_connect(two_runs)
    assert con.execute("SELECT count(*) FROM results").fetchone() == (5,)
    stray.write_text("and again")
    with pytest.warns(UserWarning):
        assert report.main(["--results", str(two_runs), "--run", "all"]) == 0
    assert "fp32" in capsys.readouterr().out


def test_a_version_1_file_reads_with_nulls_in_the_new_columns(tmp_path: Path) -> None:
    """A file as schema version 1 wrote it: no roofline, bench_s or timestamps."""
    from sweep.readers import report
    from sweep.store.results import SCHEMA_HISTORY

    added = {c.strip() for c in SCHEMA_HISTORY[2].split(",")}
    v1_fields = [f for f in SCHEMA if f.name not in added]
    v1 = pa.schema(v1_fields, metadata={"sweep.schema_version": "1"})
    row = {**make_row("old", "int4", [5.0, 6.0]), "run_id": "v1", "schema_version": 1}
    table = pa.Table.from_pylist([{k: row.get(k) for k in v1.names}], schema=v1)
    (tmp_path / "run_id=v1").mkdir()
    pq.write_table(table, tmp_path / "run_id=v1" / "part-v1.parquet")
    ResultsWriter(tmp_path, "v2").write([make_row("new", "int4", [4.0], bench_s=1.5)])

    rows = {r["point_key"]: r for r in read_results(tmp_path).to_pylist()}
    assert rows["old"]["schema_version"] == 1 and rows["new"]["schema_version"] == SCHEMA_VERSION
    assert rows["old"]["bench_s"] is None and rows["old"]["roofline_frac"] is None
    assert rows["old"]["decode_ms_p50"] == 5.5 and rows["new"]["bench_s"] == 1.5
    con = duckdb_connect(tmp_path)
    got = con.execute("SELECT point_key, bench_s FROM results ORDER BY point_key").fetchall()
    assert got == [("new", 1.5), ("old", None)]
    assert report.main(["--results", str(tmp_path), "--run", "all"]) == 0


def test_compaction_keeps_every_row_once_in_one_file(tmp_path: Path) -> None:
    from sweep.store.compaction import compact_run

    writer = ResultsWriter(tmp_path, "run")
    for i in range(5):
        writer.write([make_row(f"p{i}", "fp32", [float(i + 1)])])
    ResultsWriter(tmp_path, "other").write([make_row("q", "fp32", [1.0])])
    before = sorted(read_results(tmp_path)["point_key"].to_pylist())
    compacted = compact_run(tmp_path, "run")
    assert compacted is not None and [p.name for p in (tmp_path / "run_id=run").iterdir()] == [
        compacted.name
    ]
    assert sorted(read_results(tmp_path)["point_key"].to_pylist()) == before
    assert duckdb_connect(tmp_path).execute("SELECT count(*) FROM results").fetchone() == (6,)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no hidden folder left"
    assert compact_run(tmp_path, "run") is None, "one file: nothing to do"
    assert compact_run(tmp_path, "other") is None


def test_a_crash_mid_compaction_leaves_a_readable_dataset(tmp_path: Path, monkeypatch) -> None:
    from sweep.store import compaction

    writer = ResultsWriter(tmp_path, "run")
    for i in range(3):
        writer.write([make_row(f"p{i}", "fp32", [1.0])])
    monkeypatch.setattr(
        compaction, "_exchange", lambda a, b: (_ for _ in ()).throw(KeyboardInterrupt)
    )
    with pytest.raises(KeyboardInterrupt):
        compaction.compact_run(tmp_path, "run")
    hidden = [p for p in tmp_path.iterdir() if p.name.startswith(".run_id=run.compact-")]
    assert len(hidden) == 1 and list(hidden[0].glob("*.parquet")), "the compacted file, unseen"
    assert read_results(tmp_path).num_rows == 3, "readers see the parts, once each"
    assert duckdb_connect(tmp_path).execute("SELECT count(*) FROM results").fetchone() == (3,)
    monkeypatch.undo()
    old = time.time() - compaction.STALE_S - 1
    os.utime(hidden[0], (old, old))
    assert compaction.compact_run(tmp_path, "run") is not None
    assert not hidden[0].exists(), "the next compaction removes what the crash left"
    assert read_results(tmp_path).num_rows == 3


def test_completed_keys_since_a_time(tmp_path: Path) -> None:
    later = T0 + dt.timedelta(minutes=5)
    ResultsWriter(tmp_path, "a").write(
        [
            make_row("old", "fp32", [1.0], created_at=T0),
            make_row("new", "fp32", [1.0], created_at=later),
        ]
    )
    assert completed_point_keys(tmp_path) == {"old", "new"}
    assert completed_point_keys(tmp_path, since=T0 + dt.timedelta(minutes=1)) == {"new"}
