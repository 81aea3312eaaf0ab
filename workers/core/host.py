"""What else the host does while a point is timed, and the priority a benchmark runs at.

A benchmark shares its host with whatever else runs there: another sweep, a build,
other users. Two things keep a number honest:

- Priority: a benchmark process asks for niceness `bench.priority` (0, normal, or
  below 0, higher, as llama-bench's `--prio`) for all its threads. Linux keeps a
  niceness per thread and a new thread inherits its creator's, so every existing
  thread is set, and threads made later inherit it. Raising priority (a lower
  niceness than now) needs CAP_SYS_NICE or a raised RLIMIT_NICE (`ulimit -e`); where
  that is not permitted the point still runs, at the niceness it has, and its row
  records that niceness (a recorded fallback rather than an error, so a cluster
  whose workers start niced still measures and says so; see `set_niceness`).
- Disturbance: what a timed phase suffered from everything else on the host. The
  measure is the run-queue wait of the benchmark's own threads (`run_wait_frac`): the
  kernel's per-thread schedstat (`/proc/self/task/<tid>/schedstat`: nanoseconds on a
  CPU, nanoseconds runnable but waiting for one) read before and after the phase. Wait
  over run plus wait is the share of the time the benchmark wanted a core and did not
  get one, whatever took it (another process, a compile, the sweep's own Ray daemons),
  at nanosecond resolution, so it holds for a phase of a few milliseconds as for one of
  minutes. Only wait that other processes caused counts: at most the CPU time they used
  in the phase (the cgroup CPU counter, `host_cpu_ns`; where it is missing, all of the
  wait counts, and in a container it sees the container's processes only). A runtime's
  threads also wait on each other, and for an idle vCPU to wake: on the quiet 2-core VM
  the tiny model's IREE workers, woken onto the CPU of a busy caller thread, waited up
  to 40% of their runnable time with nothing else running. That is the point's own
  behaviour, the same in every run, not a disturbance. A decode's untimed warm-up calls
  are left out (`HostSampler.paused`). Above `RUN_WAIT_DISTURBED` the row is
  `disturbed`. A GPU point timed beside others on its own share of the cores
  (`workers.core.threads.CoreShare`) has its threads pinned there, so its neighbours add
  little wait to it, and the tick fallback counts its own cores only (`/proc/stat`'s
  per-CPU lines).

  Where schedstat is missing (a kernel without CONFIG_SCHEDSTATS, not Linux), the
  fallback is `busy_frac`: the share of the host's CPU ticks (`/proc/stat`, USER_HZ:
  100 per second per CPU) that other processes at normal or higher priority took
  during the phase (time of processes niced above 0, `/proc/stat`'s `nice` column, is
  left out while this process runs at niceness <= 0). Ticks resolve a window of W
  seconds on C CPUs only to 1 / (100 W C): under `MIN_TICKS` ticks the fallback cannot
  tell, and the verdict is unknown (None), which the readers treat as "not judged",
  never as quiet. Above `DISTURBED_FRAC` the fallback calls the row `disturbed`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator
from pathlib import Path

from workers.core.threads import thread_ids

# Above this share of its threads' runnable time spent waiting for CPUs other processes
# held, a timed phase is `disturbed`. A busy competitor at normal priority on every core
# costs the benchmark about half its runnable time (the scheduler shares each core
# fairly); on the quiet 2-core VM the mid model's phases sit at 0.02-0.07 and the tiny
# model's mostly below 0.10 (docs/results.md, "Disturbance").
RUN_WAIT_DISTURBED = 0.15

# The tick fallback: above this share of the host's CPU time spent by other processes at
# normal priority during a timed phase, a row is `disturbed`. One busy competing thread
# takes 1/C of a C-core host (50% on 2 cores, 10% on 10); a benchmark whose threads fill every core
# slows down by about that share or more (a dispatch waits for its slowest worker).
# The sweep's own background is not zero: an idle local Ray (GCS, raylet, agents, idle
# workers that poll at about 1% of a core each, counted since they run at niceness 0)
# took 3.1% of the 2-core dev VM (docs/results.md, "Disturbance"). 10% is three times
# that, so a quiet host's tick noise (module docstring) rarely crosses it, and it still flags one
# competing thread on hosts of up to 10 cores; on larger hosts a single competitor can
# pass unflagged.
DISTURBED_FRAC = 0.10
# Fewer host ticks than this in a window and the tick fallback cannot tell: 20 ticks
# resolve busy_frac to 5%, half the threshold.
MIN_TICKS = 20

# /proc/stat's cpu line: user nice system idle iowait irq softirq steal [guest guest_nice];
# guest time is already inside user and nice, so it is not added again.
_USER, _NICE, _SYSTEM, _IDLE, _IOWAIT, _IRQ, _SOFTIRQ, _STEAL = range(8)


def niceness() -> int:
    """This thread's niceness (the process's, as long as all its threads share it)."""
    return os.getpriority(os.PRIO_PROCESS, 0)


def set_niceness(target: int) -> tuple[int, str | None]:
    """Sets every thread of this process to niceness `target`; returns (the niceness now,
    why not where it could not be set). Lowering priority is always allowed; raising it
    needs CAP_SYS_NICE or RLIMIT_NICE, and where that is refused the process keeps its
    niceness (the fallback: the caller records what it ran at)."""
    if target > 0:
        raise ValueError(f"bench.priority={target}: must be 0 (normal) or below (higher)")
    current = niceness()
    if current == target:
        return current, None
    try:
        for tid in thread_ids():
            os.setpriority(os.PRIO_PROCESS, tid, target)  # on Linux a tid names one thread
    except PermissionError as e:  # raising priority: refused at the first thread already
        why = (
            f"niceness {current} -> {target} not permitted ({e.strerror}): raising priority "
            "needs CAP_SYS_NICE or `ulimit -e`; start Ray workers at niceness 0 "
            "(RAY_worker_niceness=0 for `ray start`, see docs/deploy.md)"
        )
        return niceness(), why
    return niceness(), None


@dataclasses.dataclass(frozen=True)
class HostWindow:
    """The wall-clock span of a timed phase and what the rest of the host took from it."""

    started_at: float  # epoch seconds
    finished_at: float
    busy_frac: float | None  # the tick figure; None where /proc is not readable
    run_wait_frac: float | None = None  # None where schedstat is missing (the fallback)
    run_wait_ms: float | None = None  # the benchmark's threads' total run-queue wait
    num_ticks: int = 0  # host CPU ticks in the window: the tick figure's resolution

    @property
    def disturbed(self) -> bool | None:
        """True or False where the window can tell, None where it cannot (module docstring)."""
        if self.run_wait_frac is not None:
            return self.run_wait_frac > RUN_WAIT_DISTURBED
        if self.busy_frac is None or self.num_ticks < MIN_TICKS:
            return None
        return self.busy_frac > DISTURBED_FRAC


class HostSampler:
    """`with HostSampler() as s: ...timed...`, then `s.window`: see the module docstring;
    `s.waits`: the run and the caused wait behind it (None without schedstat).

    Inside the window, `s.paused()` leaves a stretch out of the run-queue figure (a decode's
    untimed warm-up calls, whose first-call costs are not the measurement's). `cores`:
    the tick fallback counts only these CPUs (a point pinned to its core share); None: all."""

    def __init__(self, cores: list[int] | None = None) -> None:
        self.cores = cores

    def __enter__(self) -> HostSampler:
        self._own_nice = niceness()
        self._start = _counters(self.cores)
        self.waits: Waits | None = Waits(0, 0)
        self._snapshot = Snapshot.now()
        self._started_at = time.time()
        return self

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self._add_waits()
        try:
            yield
        finally:
            self._snapshot = Snapshot.now()

    def _add_waits(self) -> None:
        waits = run_wait(self._snapshot, Snapshot.now())
        self.waits = None if waits is None or self.waits is None else self.waits + waits

    def __exit__(self, *exc: object) -> None:
        finished_at = time.time()
        self._add_waits()
        end = _counters(self.cores)
        frac, ticks = None, 0
        if self._start is not None and end is not None:
            frac = busy_frac(self._start, end, include_niced=self._own_nice > 0)
            ticks = sum(b - a for a, b in list(zip(self._start[0], end[0], strict=False))[:8])
        waits = self.waits
        self.window = HostWindow(
            self._started_at,
            finished_at,
            frac,
            run_wait_frac=None if waits is None else waits.frac,
            run_wait_ms=None if waits is None else waits.wait_ns / 1e6,
            num_ticks=ticks,
        )


Schedstats = dict[int, tuple[int, int]]  # thread id -> (ns on a CPU, ns waiting for one)


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """This process's threads' schedstat and the CPU time every process has used, in ns."""

    threads: Schedstats | None
    host_cpu_ns: int | None

    @classmethod
    def now(cls) -> Snapshot:
        return cls(thread_schedstats(), host_cpu_ns())


@dataclasses.dataclass(frozen=True)
class Waits:
    """The benchmark threads' time on a CPU and their wait for one that other processes
    caused, in ns, summed over the threads and the stretches of a window."""

    run_ns: int
    wait_ns: int

    def __add__(self, other: Waits) -> Waits:
        return Waits(self.run_ns + other.run_ns, self.wait_ns + other.wait_ns)

    @property
    def frac(self) -> float:
        """Wait over run plus wait: the share of their runnable time spent waiting."""
        total = self.run_ns + self.wait_ns
        return self.wait_ns / total if total > 0 else 0.0


def thread_schedstats() -> Schedstats | None:
    """Every thread of this process: its time on a CPU and on a run queue, in ns; None
    where the kernel keeps no schedstat (or there is no procfs)."""
    if not Path("/proc/self/schedstat").exists():
        return None
    stats = {}
    for tid in thread_ids():
        try:
            fields = Path(f"/proc/self/task/{tid}/schedstat").read_text().split()
        except OSError:
            continue  # the thread ended meanwhile
        stats[tid] = (int(fields[0]), int(fields[1]))
    return stats


# The CPU controller's counter of every process's CPU time, at the root of the cgroup
# tree this process sees: cgroup v1 (ns), cgroup v2 (us).
_CPUACCT_V1 = (
    Path("/sys/fs/cgroup/cpuacct/cpuacct.usage"),
    Path("/sys/fs/cgroup/cpu,cpuacct/cpuacct.usage"),
)
_CPU_STAT_V2 = Path("/sys/fs/cgroup/cpu.stat")


def host_cpu_ns() -> int | None:
    """The CPU time all processes have used, in ns; None where no cgroup CPU counter is
    mounted. In a container it counts the container's processes only."""
    for path in _CPUACCT_V1:
        try:
            return int(path.read_text())
        except (OSError, ValueError):
            continue
    try:
        for line in _CPU_STAT_V2.read_text().splitlines():
            key, value = line.split()
            if key == "usage_usec":
                return int(value) * 1000
    except (OSError, ValueError):
        pass
    return None


def run_wait(start: Snapshot, end: Snapshot) -> Waits | None:
    """The threads' run time between two snapshots, and their run-queue wait that other
    processes caused: at most the CPU time those processes used meanwhile (a thread that
    waits behind a sibling of its own process, or for an idle CPU to wake, is not
    disturbed by the host). Where the host counter is missing, all of the wait. A thread
    that started in between counts whole; one that ended in between is not seen (the
    kernel keeps no figures for it: a runtime's thread pool outlives its calls)."""
    if start.threads is None or end.threads is None:
        return None
    run = wait = 0
    for tid, (run_ns, wait_ns) in end.threads.items():
        run0, wait0 = start.threads.get(tid, (0, 0))
        run, wait = run + run_ns - run0, wait + wait_ns - wait0
    if start.host_cpu_ns is not None and end.host_cpu_ns is not None:
        others = max(0, end.host_cpu_ns - start.host_cpu_ns - run)
        wait = min(wait, others)
    return Waits(run, wait)


# Before a timed phase the worker waits, up to SETTLE_MAX_S, for a stretch of SETTLE_S in
# which other processes at normal priority took under DISTURBED_FRAC of the host (the
# tick figure: 20 ticks per stretch on 2 CPUs). At a sweep's start the quiet VM showed
# its first IREE points waiting 16-24% of their phase, from Ray's workers starting and
# importing beside them; on a busy host the wait costs SETTLE_MAX_S a point, once.
SETTLE_S = 0.1
SETTLE_MAX_S = 3.0


def settle(max_wait_s: float = SETTLE_MAX_S, stretch_s: float = SETTLE_S) -> float:
    """Waits until the host is quiet for `stretch_s`, at most `max_wait_s`; returns the
    seconds waited beyond the first stretch. For a point timed alone on its host: GPU
    points timed side by side on core shares do not wait for each other."""
    started = time.monotonic()
    include_niced = niceness() > 0
    while True:
        start = _counters()
        time.sleep(stretch_s)
        end = _counters()
        quiet = (
            start is None
            or end is None
            or (busy_frac(start, end, include_niced=include_niced) < DISTURBED_FRAC)
        )
        waited = time.monotonic() - started - stretch_s
        if quiet or waited + stretch_s >= max_wait_s:
            return max(0.0, waited)


Counters = tuple[tuple[int, ...], int, int]  # (/proc/stat cpu fields, own utime, own stime)


def _counters(cores: list[int] | None = None) -> Counters | None:
    """The host's CPU counters (of `cores` only, summed, if given) and this process's."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
        own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if cores is None:
        host = tuple(int(v) for v in lines[0].split()[1:])
    else:
        names = {f"cpu{c}" for c in cores}
        per_cpu = [[int(v) for v in f[1:]] for f in map(str.split, lines) if f[0] in names]
        host = tuple(sum(column) for column in zip(*per_cpu, strict=True))
    # after the ")" of comm: state is field 3, utime 14 and stime 15 (1-based, proc(5))
    return host, int(own[11]), int(own[12])


def busy_frac(start: Counters, end: Counters, *, include_niced: bool = False) -> float:
    """Share of the host's CPU ticks between two counter readings spent by other processes
    (and the kernel for them) at niceness <= 0, or at any niceness with `include_niced`
    (for a process that itself runs niced, which niced processes do compete with)."""
    host = [b - a for a, b in zip(start[0], end[0], strict=False)][:8]
    host += [0] * (8 - len(host))
    total = sum(host)
    if total <= 0:
        return 0.0
    utime, stime = end[1] - start[1], end[2] - start[2]
    busy = host[_USER] + host[_SYSTEM] + host[_IRQ] + host[_SOFTIRQ] + host[_STEAL]
    # this process's user time is under `nice` while it runs niced, else under `user`
    own = stime + (0 if include_niced else utime)
    others = busy - own + (host[_NICE] - utime if include_niced else 0)
    return min(1.0, max(0.0, others / total))
