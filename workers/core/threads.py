"""The threads axis: a point measured on N cores (`grid.threads`).

A point with `threads=N` pins every thread of the benchmark actor's process to the first
N CPUs it may use (`os.sched_setaffinity` per thread: Linux applies an affinity to one
thread, and a thread inherits its creator's when it starts), and IREE's local-task
driver runs N workers (`workers.runtimes.iree.IreeRunner.use_threads`). After the point
each thread gets back the affinity it had, so the next point starts from the actor's own.

A GPU point timed beside other GPU points of its host (`bench.gpu_concurrency`, see
`sweep.execute.scheduler`) runs on its own share of the host's cores (`CoreShare`): the
scheduler hands each of the points it times at once a different share, so their host
threads (the one that launches work and reads the token back, the reference computation
before the clock starts) never compete for a core. `grid.threads=N` then takes the first
N cores of that share.

XLA's CPU client sizes its intra-op thread pool once per process, when JAX first makes
it, from the CPUs it may use then; JAX 0.10 offers no setting per client or per call.
An XLA point with `threads=N` therefore runs that pool pinned to N cores: the threads
compete for N cores, rather than N threads running. (The per-compile option
`xla_cpu_multi_thread_eigen=False`, which JAX 0.10 accepts, could serve N = 1 alone.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator


@dataclasses.dataclass(frozen=True)
class CoreShare:
    """Share `index` of `count` equal, disjoint shares of the cores a process may use.

    The scheduler sizes `count` from the node's Ray CPUs; a process that may use fewer
    cores than there are shares (a Ray node that claims more CPUs than its host has) gets
    one core, shared with another share's: the point still runs, its row's `threads`
    says on how many cores."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"core share {self.index} of {self.count}")

    def cores(self, cpus: list[int]) -> list[int]:
        if len(cpus) < self.count:
            return [cpus[self.index % len(cpus)]]
        size = len(cpus) // self.count
        return cpus[self.index * size : (self.index + 1) * size]


def thread_ids() -> list[int]:
    """The ids of this process's threads (0, the calling thread, without procfs)."""
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # no procfs: the calling thread only
        return [0]


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on, in order."""
    return sorted(os.sched_getaffinity(0))


def cores_for(num_threads: int, share: CoreShare | None = None) -> list[int]:
    """The CPUs a point of `num_threads` runs on: all allowed ones (or all of its `share`)
    for 0, else the first `num_threads` of them (a clear error when there are fewer)."""
    cpus = allowed_cpus()
    where = "this benchmark actor may run on"
    if share is not None:
        cpus = share.cores(cpus)
        where = f"a GPU point timed beside others (core share {share.index} of {share.count}) has"
    if num_threads == 0:
        return cpus
    if num_threads > len(cpus):
        raise ValueError(
            f"grid.threads={num_threads} but {where} {len(cpus)} CPUs ({cpus}); list at most "
            f"{len(cpus)} in grid.threads, or set bench.gpu_concurrency lower"
        )
    return cpus[:num_threads]


@contextlib.contextmanager
def pinned(num_threads: int, share: CoreShare | None = None) -> Iterator[int]:
    """Every thread of the process on `cores_for(num_threads, share)` inside the block;
    yields how many cores that is. 0 without a share pins nothing (what runs without
    the axis)."""
    cores = cores_for(num_threads, share)
    if num_threads == 0 and share is None:
        yield len(cores)
        return
    own = os.sched_getaffinity(0)
    saved: dict[int, set[int]] = {}
    for tid in thread_ids():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            saved[tid] = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, cores)
    try:
        yield len(cores)
    finally:
        _restore(saved, set(cores), own)


def _restore(saved: dict[int, set[int]], cores: set[int], own: set[int]) -> None:
    """Each pinned thread back to its own affinity; a thread started inside the block
    that inherited the pin gets the calling thread's (`own`) back. A thread that pinned
    itself elsewhere (an IREE worker on its core) keeps that."""
    for tid in thread_ids():
        with contextlib.suppress(OSError):
            if tid in saved:
                os.sched_setaffinity(tid, saved[tid])
            elif os.sched_getaffinity(tid) == cores:
                os.sched_setaffinity(tid, own)
