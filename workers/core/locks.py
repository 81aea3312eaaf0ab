"""Advisory file locks (`flock`) that several processes, sweeps and hosts respect.

Two kinds:

- `key_lock(path)`: one holder at a time, e.g. one compile of a cache key, so two
  sweeps sharing a compile cache never write the same files at once; the second
  waits and then finds the first one's result in the cache. On a shared filesystem
  it serialises across hosts wherever the filesystem honours `flock` (local disks,
  NFSv4).
- `host_lock(use)`: the host's measurement lock. A timed point that owns the host (a CPU
  point, or any point with `bench.gpu_concurrency=1`) takes it exclusively for the
  whole point (weights, reference, timed steps); a GPU point timed beside others takes
  it shared plus its own GPU's device lock exclusively; a compile takes it shared plus
  every device lock shared. So on one host a timed point never runs beside a compile,
  a host-owning point never beside any other, and two GPU points share the host only on
  different GPUs, whichever sweep started them. Within one sweep the scheduler already
  keeps them apart; this lock covers sweeps that do not know of each other. A
  reader-writer lock alone would starve the measurement while compiles overlap (seen
  here: a sweep waited 35 minutes behind other sweeps' compiles), so a turnstile beside
  it puts a waiting measurement first: a measurement holds the turnstile while it waits
  (a host-owning one also while it measures), and a compile passes through the
  turnstile before it takes its shared locks. Locks are always taken in one order
  (turnstile, host, devices by index), so no two holders wait on each other.

A lock is released when its holder exits, however it exits: a crash leaves no stale
lock behind.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

HOST_LOCK_ENV = "SWEEP_HOST_LOCK"  # where the host lock lives, if not in the temp directory
# Device locks per host: a compile takes all of them. A GPU numbered past the last
# shares a lock with a lower one (index modulo this), so those two take turns.
NUM_DEVICE_LOCKS = 16


class HostUse(enum.StrEnum):
    """What a holder of the host lock does on the host."""

    COMPILE = "compile"  # beside other compiles, never beside a timed point
    HOST = "host"  # a timed point alone on the host
    DEVICE = "device"  # a timed point on one GPU, beside timed points on other GPUs


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
def host_lock(use: HostUse, device: int = 0) -> Iterator[None]:
    """The host's measurement lock for `use` (`device`: the GPU index, for DEVICE), fair
    to measurements: see the module docstring."""
    path = host_lock_path()
    turnstile = path.with_name(path.name + ".turnstile")
    with contextlib.ExitStack() as held:
        if use == HostUse.HOST:
            held.enter_context(file_lock(turnstile))
            held.enter_context(file_lock(path))
        elif use == HostUse.DEVICE:
            with file_lock(turnstile):  # waits first, then lets the next measurement queue
                held.enter_context(file_lock(path, exclusive=False))
                held.enter_context(file_lock(_device_lock(path, device)))
        else:
            with file_lock(turnstile):
                pass  # a measurement waiting or running holds it: wait behind it
            held.enter_context(file_lock(path, exclusive=False))
            for index in range(NUM_DEVICE_LOCKS):
                held.enter_context(file_lock(_device_lock(path, index), exclusive=False))
        yield


def _device_lock(path: Path, device: int) -> Path:
    return path.with_name(f"{path.name}.gpu{device % NUM_DEVICE_LOCKS}")
