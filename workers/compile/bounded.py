"""A child process bounded in time and in memory: killed, with all it started, past either.

Why a memory bound beside the timeout: some graphs make iree-compile grow without end
rather than run long (the grouped 4-bit prefill graph under data tiling passed 16 GB in
five minutes on SmolLM2-135M, see benchmarks/repro/grouped_int4_data_tiling.md). On a
shared host that takes every other process down with it long before a timeout fires;
bounded, it is one failed point with its reason.

The child runs in its own session, so the bound covers what it starts (iree-compile
runs its linker as a child): the resident memory (RSS) of every process of the session,
summed, sampled every `POLL_S` by a watcher thread from /proc. Shared pages count once
per process, so the sum can only overstate. Where /proc is missing (not Linux) only
the timeout holds.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

POLL_S = 0.25  # how often the watcher sums the session's memory (a scan of /proc: a few ms)
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class Bound(enum.StrEnum):
    """Which bound killed a child."""

    TIME = "time"
    MEMORY = "memory"


@dataclass(frozen=True)
class Finished:
    """How a bounded child ended."""

    returncode: int | None  # None when a bound killed it
    output: str  # stdout and stderr together
    wall_s: float
    peak_rss_bytes: int | None  # the session's largest sampled RSS; None without /proc
    killed_by: Bound | None = None


def run_bounded(
    cmd: Sequence[str], *, timeout_s: float, max_rss_bytes: int | None = None
) -> Finished:
    """Runs `cmd` in a new session until it exits or passes `timeout_s` or `max_rss_bytes`
    (None: no memory bound; the peak is still measured); then the whole session is killed,
    so nothing it started outlives the call, on an interrupt too."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        list(cmd),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    watcher = _Watcher(proc, max_rss_bytes)
    watcher.start()
    killed_by = None
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_session(proc)
        output, _ = proc.communicate()  # reaps the child; the pipe closes with the session
        killed_by = Bound.TIME
    except BaseException:
        kill_session(proc)
        proc.wait()
        raise
    finally:
        watcher.stop()
    if watcher.exceeded:
        killed_by = Bound.MEMORY
    return Finished(
        returncode=None if killed_by else proc.returncode,
        output=output.decode(errors="replace"),
        wall_s=time.perf_counter() - start,
        peak_rss_bytes=watcher.peak_rss_bytes,
        killed_by=killed_by,
    )


def kill_session(proc: subprocess.Popen) -> None:
    # start_new_session=True made the child a group leader: its pgid is its pid.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def session_rss_bytes(session_id: int) -> int | None:
    """The summed RSS of every process in session `session_id`; None without /proc."""
    try:
        entries = [e for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:
        return None
    total = 0
    for entry in entries:
        try:
            stat = Path(entry.path, "stat").read_bytes()
            # fields after "(comm)": state ppid pgrp session ...
            if int(stat.rsplit(b")", 1)[1].split()[3]) != session_id:
                continue
            total += int(Path(entry.path, "statm").read_bytes().split()[1]) * _PAGE_BYTES
        except (OSError, IndexError, ValueError):
            continue  # exited while it was read
    return total


class _Watcher(threading.Thread):
    """Samples the child's session every POLL_S; kills it the first time it passes the limit."""

    def __init__(self, proc: subprocess.Popen, max_rss_bytes: int | None) -> None:
        super().__init__(name=f"rss-watch-{proc.pid}", daemon=True)
        self.proc, self.max_rss_bytes = proc, max_rss_bytes
        self.peak_rss_bytes: int | None = None
        self.exceeded = False
        self._stop_event = threading.Event()

    def run(self) -> None:
        while True:
            rss = session_rss_bytes(self.proc.pid)
            if rss is None:
                if self.max_rss_bytes is not None:
                    logger.warning("no /proc here: %s runs without its memory bound", self.proc)
                return
            self.peak_rss_bytes = max(rss, self.peak_rss_bytes or 0)
            if self.max_rss_bytes is not None and rss > self.max_rss_bytes:
                self.exceeded = True
                kill_session(self.proc)
                return
            if self._stop_event.wait(POLL_S):
                return

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
