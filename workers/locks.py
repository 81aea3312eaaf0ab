"""Advisory file locks (`flock`) that several processes, sweeps and hosts respect.

Two kinds:

- `key_lock(path)`: one holder at a time, e.g. one compile of a cache key, so two
  sweeps sharing a compile cache never write the same files at once; the second
  waits and then finds the first one's result in the cache. On a shared filesystem
  it serialises across hosts wherever the filesystem honours `flock` (local disks,
  NFSv4).
- `host_lock(exclusive)`: the host's measurement lock. A benchmark takes it
  exclusively for the whole point (weights, reference, timed steps) and a compile
  takes it shared, so on one host a timed point never runs beside a compile or
  another timed point, whichever sweep started them. Within one sweep the
  scheduler already keeps them apart; this lock covers sweeps that do not know of
  each other. A reader-writer lock alone would starve the measurement while compiles
  overlap (seen here: a sweep waited 35 minutes behind other sweeps' compiles), so a
  turnstile beside it puts a waiting measurement first: the measurement holds the
  turnstile while it waits and measures, and a compile passes through the turnstile
  before it takes its shared lock.

A lock is released when its holder exits, however it exits: a crash leaves no stale
lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

HOST_LOCK_ENV = "SWEEP_HOST_LOCK"  # where the host lock lives, if not in the temp directory


def host_lock_path() -> Path:
    default = Path(tempfile.gettempdir()) / "sweep-host-measure.lock"
    return Path(os.environ.get(HOST_LOCK_ENV) or default)


@contextlib.contextmanager
def file_lock(path: Path, *, exclusive: bool = True) -> Iterator[None]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def key_lock(path: Path) -> contextlib.AbstractContextManager[None]:
    return file_lock(path, exclusive=True)


@contextlib.contextmanager
def host_lock(*, exclusive: bool) -> Iterator[None]:
    """The host's measurement lock (exclusive) or compile lock (shared), fair to both."""
    path = host_lock_path()
    turnstile = path.with_name(path.name + ".turnstile")
    if exclusive:
        with file_lock(turnstile), file_lock(path):
            yield
        return
    with file_lock(turnstile):
        pass  # a measurement waiting or running holds it: wait behind it
    with file_lock(path, exclusive=False):
        yield
