"""Compaction: a finished run's one-file-per-write Parquet parts become one file.

Why: a sweep writes each batch of rows as its own file the moment it is known (so a
crash loses nothing), but every file costs each later query a footer read and about
35 KB of Parquet overhead per one-row file. 10,000 one-row files are 352 MB and a
query over them takes seconds; the same rows in one file are 84 KB.

How, without a reader ever seeing a row twice or missing one: the compacted file is
written into a hidden sibling folder `.run_id=<id>.compact-<uuid>/` (readers ignore
hidden folders), and then the two folders swap places in one atomic step
(`renameat2(RENAME_EXCHANGE)`, Linux). Before the swap readers see the parts, after
it the compacted file; the hidden folder, now holding the parts, is removed. A crash
at any point leaves a readable dataset: at worst a hidden folder that the next
compaction removes. Where the filesystem cannot exchange two folders atomically, the
run is left as it is (still correct, only slower to query).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import time
import uuid
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from sweep.store.results import SCHEMA, dataset_of, set_aside_unreadable
from workers.core.files import atomic_write

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
STALE_S = 3600.0  # a hidden compaction folder this old was left by a crash


def compact_run(results_dir: Path, run_id: str, schema: pa.Schema = SCHEMA) -> Path | None:
    """Replaces the run's part files by one file; returns it (None: nothing to do)."""
    root = Path(results_dir)
    run_dir = root / f"run_id={run_id}"
    _remove_stale(root)
    parts = sorted(str(p) for p in run_dir.glob("*.parquet") if not p.name.startswith("."))
    if len(parts) < 2:
        return None
    parts = set_aside_unreadable(root, parts)
    table = dataset_of(parts, schema).to_table().sort_by([("created_at", "ascending")])
    staging = root / f".run_id={run_id}.compact-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    compacted = staging / f"part-compacted-{time.strftime('%Y%m%dT%H%M%S')}-{len(parts)}.parquet"
    atomic_write(compacted, lambda f: _write(table, schema, f), fsync=True)
    if not _exchange(run_dir, staging):
        shutil.rmtree(staging, ignore_errors=True)
        warnings.warn(
            f"{root}: this filesystem cannot swap two folders atomically; run {run_id} "
            "keeps its part files (queries over it stay correct, only slower)",
            stacklevel=2,
        )
        return None
    shutil.rmtree(staging, ignore_errors=True)  # now holds the old parts
    return run_dir / compacted.name


def _write(table: pa.Table, schema: pa.Schema, f: object) -> None:
    pq.write_table(table.cast(schema), f, compression="zstd", row_group_size=65536)


def _exchange(a: Path, b: Path) -> bool:
    """Swaps two directories in one atomic rename; False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def _remove_stale(root: Path) -> None:
    """Hidden compaction folders a crash left behind (readers never saw them)."""
    now = time.time()
    for folder in root.glob(".run_id=*.compact-*"):
        try:
            if now - folder.stat().st_mtime > STALE_S:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass
