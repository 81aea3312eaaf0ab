"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file this project writes where something else may read it at the same time
(compile cache entries, reference tokens, result Parquet, benchmark reports) goes
through `atomic_write`: the data is written to a hidden temporary file in the same
directory, flushed to disk, and renamed over the target with `os.replace`, which is
atomic on POSIX filesystems. A writer killed midway leaves only a `.*.tmp` file that
every reader here ignores.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TMP_PREFIX = "."
TMP_SUFFIX = ".tmp"


def atomic_write(
    path: Path, data: bytes | Callable[[BinaryIO], None], *, fsync: bool = False
) -> Path:
    """Writes `data` (bytes, or a function that writes to the open file) to `path` atomically.

    With `fsync` the file and its directory are flushed to disk before and after the
    rename, so the write survives a power cut, not just a killed process.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f"{TMP_PREFIX}{path.name}.", suffix=TMP_SUFFIX
    )
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a shared cache or results dir must be readable
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        fsync_dir(path.parent)
    return path


def fsync_dir(directory: Path) -> None:
    """Persists a rename; best effort, since some filesystems refuse fsync on a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
