"""The `num_concurrent` column: the most other points timed on a point's host at any one
moment of its own timed phase, counted from the timed windows themselves.

GPU points of one host are timed at once (`bench.gpu_concurrency`), and a report that
compares a point timed alone with one timed beside seven others needs to know which is
which. The scheduler's state at dispatch would only say how many calls were in flight
(uploads and references included); the measured truth is the overlap of the points'
timed windows (`timed_started_at`, `timed_finished_at`), which the workers record on
the host's own clock. The most at once, not how many overlapped at all: a long point
beside short ones overlaps many of them in turn, yet shares its host with at most one
per other GPU at a time (0: timed alone; at most the host's GPU slots less one).
A row's count is known only once every point that could overlap it has ended, so its
row waits here until then: the points still running on its node when it ended (a point
sent later starts after it ended). That is at most one point's
duration, and only on a node that times several points at once; a point timed alone
has nobody to wait for. A point that ends without a timed window (a failure, a lost
actor) counts for nobody. Plain data, no Ray: the scheduler keeps one `OverlapLedger`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

Window = tuple[float, float]  # a timed phase: epoch seconds on its host's clock


@dataclasses.dataclass(eq=False)
class Timed:
    """One point's call on a node, from the moment it is sent until its row is released."""

    node_id: str
    window: Window | None = None
    neighbours: list[Timed] = dataclasses.field(default_factory=list)  # overlapped its call
    waits: set[Timed] = dataclasses.field(default_factory=set)  # still running when it ended
    waiters: list[Timed] = dataclasses.field(default_factory=list)  # wait for it to end
    out: Any = None  # what the owner emits once the count is known


class OverlapLedger:
    def __init__(self) -> None:
        self._running: dict[str, dict[Timed, None]] = {}  # node id -> calls in flight

    def start(self, node_id: str) -> Timed:
        call = Timed(node_id)
        self._running.setdefault(node_id, {})[call] = None
        return call

    def end(self, call: Timed, window: Window | None, out: Any = None) -> list[tuple[Any, int]]:
        """`call` ended with its timed `window` (None: no timed phase) and `out` to emit
        once its count is known (None: nothing). Returns every (out, count) now known,
        this call's and those that waited on it."""
        running = self._running[call.node_id]
        del running[call]
        if not running:
            del self._running[call.node_id]
        call.window, call.out = window, out
        for other in running:
            other.neighbours.append(call)  # it ended while `other` ran
            call.neighbours.append(other)
            other.waiters.append(call)
        call.waits = set(running)
        released = []
        for waiter in call.waiters:
            waiter.waits.discard(call)
            if not waiter.waits:
                released += _release(waiter)
        call.waiters = []
        if not call.waits:
            released += _release(call)
        return released

    def held(self) -> list[Any]:
        """What still waits for a count (when a sweep stops early), in no order."""
        calls = {w for running in self._running.values() for c in running for w in c.waiters}
        return [c.out for c in calls if c.out is not None]

    def __len__(self) -> int:
        return sum(len(running) for running in self._running.values())


def _release(call: Timed) -> list[tuple[Any, int]]:
    out, neighbours = call.out, call.neighbours
    call.out, call.neighbours = None, []  # let the finished calls go
    if out is None or call.window is None:
        return []
    return [(out, most_at_once(call.window, [n.window for n in neighbours]))]


def most_at_once(own: Window, others: list[Window | None]) -> int:
    """The most of `others` that overlap `own` at one instant (an end before a start at
    the same instant: windows that only touch do not overlap)."""
    events = []
    for window in others:
        if window is not None and window[0] < own[1] and own[0] < window[1]:
            events += [(max(window[0], own[0]), 1), (min(window[1], own[1]), -1)]
    now = most = 0
    for _, step in sorted(events):
        now += step
        most = max(most, now)
    return most
