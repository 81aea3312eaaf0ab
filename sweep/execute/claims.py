"""Claims: which sweep measures which point, when several share one results directory.

Two sweeps of overlapping grids started side by side (or a second one started to
help) must not measure a point twice. Before a point is sent to a benchmark actor
its sweep claims it: a file `<results_dir>/_claims/<point_key>.json` made as
a hard link to a file already written, so exactly one sweep wins and nobody ever reads
a half-written claim (a driver killed in the middle of taking one leaves none). The
file names its run, host and process and is refreshed while the run lives; it is
removed once the point's row is written or the run ends. A claim is stale, and may
be taken over, when its process is gone (same host), it has not been refreshed for
`STALE_S` (another host), or it cannot be read for `UNREADABLE_S` (left by something
else). A point someone else holds is deferred: the sweep comes back to it when the
claim is gone, and counts it as done elsewhere if the results by then hold it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from sweep.plan.grid import Point

CLAIMS_DIR = "_claims"
REFRESH_S = 20.0
STALE_S = 120.0
UNREADABLE_S = 10.0  # a claim nobody can read is garbage after this
DONE_READ_S = 2.0


class Claims:
    def __init__(self, results_dir: Path, run_id: str, done: Callable[[], set[str]]) -> None:
        """`done()` gives the keys the results already hold (as finished)."""
        self.dir = Path(results_dir) / CLAIMS_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run_id, self._done = run_id, done
        self.held: set[str] = set()
        self.deferred: dict[str, Point] = {}  # points another live run holds
        self.done_elsewhere: list[Point] = []
        self._refreshed = time.monotonic()
        self._me = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid()}
        self._done_keys: set[str] = set()
        self._done_read = -float("inf")

    def done(self) -> set[str]:
        """The finished keys in the results, read at most every few seconds."""
        if time.monotonic() - self._done_read > DONE_READ_S:
            self._done_keys, self._done_read = self._done(), time.monotonic()
        return self._done_keys

    # --- the scheduler's side --------------------------------------------------------------

    def admit(self, point: Point) -> bool:
        """True when this run may measure `point` now; otherwise it is deferred."""
        self.refresh()
        if point.key in self.held:
            return True
        if not self._take(point.key):
            self.deferred[point.key] = point
            return False
        if point.key in self.done():  # measured by another run since this one planned
            self.release(point.key)
            self.done_elsewhere.append(point)
            return False
        return True

    def refill(self) -> list[Point]:
        """Deferred points whose claim has gone: this run measures them after all,
        unless the results hold them by now."""
        self.refresh()
        free = [p for k, p in self.deferred.items() if not self._held_by_other(k)]
        if not free:
            return []
        self._done_read = -float("inf")  # a claim went away: its row may be new
        done = self.done()
        for point in free:
            del self.deferred[point.key]
            if point.key in done:
                self.done_elsewhere.append(point)
        return [p for p in free if p.key not in done]

    def release(self, key: str) -> None:
        self.held.discard(key)
        with contextlib.suppress(FileNotFoundError):
            (self.dir / f"{key}.json").unlink()

    def release_all(self) -> None:
        for key in list(self.held):
            self.release(key)

    def refresh(self) -> None:
        """Touches this run's claims, so other hosts see they are alive."""
        if time.monotonic() - self._refreshed < REFRESH_S:
            return
        self._refreshed = time.monotonic()
        for key in self.held:
            with contextlib.suppress(OSError):
                os.utime(self.dir / f"{key}.json")

    # --- files ---------------------------------------------------------------------------

    def _take(self, key: str) -> bool:
        path = self.dir / f"{key}.json"
        draft = self.dir / f".{key}.{self.run_id}.draft"  # not a claim until linked
        try:
            draft.write_text(json.dumps({**self._me, "time": time.time()}))
            for _ in range(2):  # a stale claim is removed, then taken on the second try
                try:
                    os.link(draft, path)  # fails if the claim exists: exactly one wins
                except FileExistsError:
                    if self._held_by_other(key):
                        return False
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                    continue
                self.held.add(key)
                return True
            return False
        finally:
            draft.unlink(missing_ok=True)

    def _held_by_other(self, key: str) -> bool:
        """True while another live run holds `key`'s claim."""
        path = self.dir / f"{key}.json"
        try:
            age = time.time() - path.stat().st_mtime
            holder = json.loads(path.read_text())
        except FileNotFoundError:
            return False
        except ValueError:  # claims are written whole: this is not one of ours
            return age < UNREADABLE_S
        if holder.get("run_id") == self.run_id:
            return False
        if holder.get("host") == self._me["host"]:
            return _pid_alive(int(holder.get("pid", -1)))
        return age < STALE_S


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
