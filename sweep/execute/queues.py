"""The scheduler's queues, so that each scheduling step costs what changed, not the sweep.

At 1,000 nodes and 100,000 points (benchmarks/cluster_sim.py) a step that looks at
every pending point or every actor costs tens of milliseconds, and there are several
steps per point. These structures answer the scheduler's questions in time that does
not grow with the points or the nodes:

- `ReadyQueue`: which ready point an actor takes, by weight affinity (its resident
  weights first, then weights no other actor holds, then any), oldest first; with
  repeats (`bench.repeats`), among the points of the earliest repeat only.
- `OrderedHeap`: queued compiles per CPU kind, oldest first, a requeued one first of all.

Entries are removed lazily: the owner says which are still current, so removing a
point or a compile from elsewhere costs nothing here. Plain data, no Ray.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable, Iterable
from typing import Any

Weights = Hashable  # what an actor holds resident (the scheduler's `_weights_of`)
Bucket = tuple[str, str | None]  # (device name, CPU kind or None for portable code)


class ReadyQueue:
    """Ready points as tickets (ints: lower runs first), per bucket and weights."""

    def __init__(self) -> None:
        self._buckets: dict[Bucket, dict[Weights, list[int]]] = {}

    def push(self, bucket: Bucket, weights: Weights, ticket: int) -> None:
        heapq.heappush(self._buckets.setdefault(bucket, {}).setdefault(weights, []), ticket)

    def pick(
        self,
        buckets: Iterable[Bucket],
        resident: Weights,
        held_elsewhere: Callable[[Weights], bool],
        current: Callable[[int], bool],
        round_of: Callable[[int], int] | None = None,
    ) -> tuple[int, Bucket] | None:
        """Pops the ticket an actor holding `resident` takes from `buckets`, or None.

        Weight affinity: the oldest ticket of the resident weights, else the oldest of
        weights that no other actor holds (`held_elsewhere` False), else the oldest.
        With `round_of` (a ticket's repeat), only tickets of the lowest round among the
        heads compete: a repeat of the grid runs before the next one starts, whatever
        that costs in uploads. Tickets that are not `current` any more are dropped on
        the way."""
        heads: list[tuple[int, Weights, Bucket]] = []
        for bucket in buckets:
            by_weights = self._buckets.get(bucket)
            if not by_weights:
                continue
            for weights, heap in list(by_weights.items()):
                while heap and not current(heap[0]):
                    heapq.heappop(heap)
                if heap:
                    heads.append((heap[0], weights, bucket))
                else:
                    del by_weights[weights]
        if not heads:
            return None
        if round_of is not None:
            first = min(round_of(head[0]) for head in heads)
            heads = [head for head in heads if round_of(head[0]) == first]
        for wanted in (
            lambda w: w == resident,
            lambda w: not held_elsewhere(w),
            lambda w: True,
        ):
            chosen = [head for head in heads if wanted(head[1])]
            if chosen:
                ticket, weights, bucket = min(chosen, key=lambda head: head[0])
                heapq.heappop(self._buckets[bucket][weights])
                return ticket, bucket
        raise AssertionError("unreachable: the last rule takes any head")


class OrderedHeap:
    """Items by an order number, lowest first; an item is current while `current` says
    so for the order it was pushed with (a requeued item is pushed again)."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Any]] = []
        self._seq = 0

    def push(self, order: int, item: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (order, self._seq, item))

    def pop(self, current: Callable[[Any, int], bool]) -> Any | None:
        while self._heap:
            order, _, item = heapq.heappop(self._heap)
            if current(item, order):
                return item
        return None

    def peek(self, current: Callable[[Any, int], bool]) -> Any | None:
        while self._heap:
            order, _, item = self._heap[0]
            if current(item, order):
                return item
            heapq.heappop(self._heap)
        return None

    def __len__(self) -> int:
        return len(self._heap)
