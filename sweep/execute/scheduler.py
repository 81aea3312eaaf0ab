"""The sweep's scheduler: which graph compiles where, which point runs on which actor, and
what becomes of each failure.

A plain state machine over a `Backend`: Ray in `sweep.execute.cluster`, a simulated cluster
in the tests. Nothing here imports Ray. The rules:

- Every unique graph compiles once: a `CompileJob` is a graph, a device, flags and,
  for `target-cpu=host` code, the CPU kind it must run on (compiled on a node of
  that kind, once per kind, not once per node). vmfbs reach the actors through the
  backend, with no shared filesystem.
- The host rule (`Scheduler._may_measure`, the one place it is decided): no compile on
  a node while it measures; a CPU point measures alone on its node; GPU points measure
  side by side, one per GPU, each on its own share of the node's cores
  (`workers.core.threads.CoreShare`), as many at once as the node has GPUs and cores for
  (`CORES_PER_GPU_POINT` each) and `bench.gpu_concurrency` allows (1: one timed point
  per node, GPU or not, and no core share). A CPU point's timing is the host's CPUs,
  so it shares them with nothing: no other timed point, reference computation (which
  runs inside a point's call, before its clock starts) or compile. A GPU point's
  timing is its GPU's plus one host thread; beside other GPU points it shares only
  the PCIe links and the memory bus, and each row says how many others were timed
  during it (`num_concurrent`, `sweep.execute.overlap`). A free node with compiles
  waiting takes those first, and compiles pack onto a node that already compiles
  (one per CPU slot) before they take another node away from measuring.
- Benchmark actors, one per device slot of each node (one CPU slot per node, one
  per GPU), start at once, so their processes come up while the graphs compile. A
  point goes to an idle actor of its device whose node is free, preferring the actor
  that already holds the point's variant (weight affinity), so each actor uploads a
  variant once. On a free node the device that fewest nodes offer goes first (its
  GPU before its CPU), so CPU points are left to the nodes that have nothing else.
- With `bench.repeats=R` each point comes R times (`Point.repeat`), and an actor takes
  a point of the earliest repeat it can run before any of a later one, weight affinity
  deciding only within a repeat: the grid runs A B C A B C, so drift over the sweep
  lands inside each point's repeats instead of between points. Every repeat is its own
  point and row, written when it ends: an interrupted sweep keeps every finished
  repeat, a resumed one runs only the missing repeats, and the readers merge them
  (`sweep.readers.analysis.merge_repeats`).
- Every point ends as exactly one row, handed to the sink as soon as it is known.
  A compile failure, a timeout, a crashed or lost actor, or a wrong answer costs
  that point's row, never the sweep: a point whose actor died is retried elsewhere
  (up to `max_retries`), a point whose compiled graph was lost with a node gets it
  compiled again, and a point no actor is left to run is `worker_lost`.

Each step costs what changed, not the size of the sweep: points wait on the
compiles they lack and become ready when the last one is done, ready points sit in
queues by device, CPU kind and weights (`sweep.execute.queues`), and nodes and actors are
filed by what they can take as their state changes. benchmarks/cluster_sim.py runs
this class on 1,000 simulated nodes and 100,000 points.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from sweep.execute.overlap import OverlapLedger, Timed
from sweep.execute.queues import OrderedHeap, ReadyQueue
from sweep.plan.grid import Point
from sweep.store.results import Col
from sweep.store.rows import (
    RunContext,
    compile_failure_row,
    dispatch_rows,
    failure_row,
    measured_row,
)
from workers.compile.iree import CompileResult, targets_host
from workers.core.config import LlamaConfig
from workers.core.devices import GPU_RESOURCE, DeviceSpec
from workers.core.kinds import GraphKind, Status
from workers.core.threads import CoreShare
from workers.model.export import GraphSpec
from workers.records import Measurement
from workers.tasks import BenchTask, weights_key

# rows; the profiled points' dispatch rows; their raw .ireeprof files by point key
RowSink = Callable[[list[dict[str, Any]], list[dict[str, Any]], dict[str, bytes]], None]
# one measured point: its row, its dispatch rows, its raw profile by point key
MeasuredRows = tuple[dict[str, Any], list[dict[str, Any]], dict[str, bytes]]
MAX_COMPILE_SUBMITS = 3  # a graph lost with its node is compiled again, this often at most
# Cores a GPU point timed beside others gets at least: the thread that launches its work
# and reads the token back, and one for the rest of its process (Ray's threads, the
# runtime's own, the reference computation before the clock starts).
CORES_PER_GPU_POINT = 2


# --- what the scheduler knows and asks --------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NodeInfo:
    node_id: str
    hostname: str
    resources: dict[str, float]
    cpu_id: str  # hash of the CPU model and features: nodes that can share a "host" vmfb

    def offers(self, device: DeviceSpec) -> int:
        """How many benchmark actors of `device` this node can hold."""
        key = GPU_RESOURCE if device.needs_gpu else device.ray_resource
        return int(self.resources.get(key, 0.0) // device.ray_resource_amount)

    @property
    def num_compile_slots(self) -> int:
        return max(1, int(self.resources.get("CPU", 1)))

    def num_gpu_slots(self, limit: int) -> int:
        """How many GPU points this node times at once: one per GPU, as many as its cores
        give `CORES_PER_GPU_POINT` each, at most `limit` (`bench.gpu_concurrency`, 0: no
        limit); at least one."""
        num_gpus = int(self.resources.get(GPU_RESOURCE, 0))
        by_cores = int(self.resources.get("CPU", 0)) // CORES_PER_GPU_POINT
        return max(1, min(num_gpus, by_cores, limit or num_gpus))


@dataclasses.dataclass(frozen=True)
class CompileJob:
    """One graph to compile; equal jobs compile once and share the vmfb."""

    graph: GraphSpec
    device: DeviceSpec
    flags: tuple[str, ...]
    cpu_group: str | None  # host-targeted code: the CPU kind (NodeInfo.cpu_id) it runs on


class ActorDied(Exception):
    """The actor's process died during the call (Ray restarts it)."""


class ActorStarting(Exception):
    """The actor is (re)starting and cannot answer yet."""


class ActorGone(Exception):
    """The actor cannot (re)start, e.g. its node left the cluster."""


class GraphLost(Exception):
    """A compiled graph the call needed was lost with the node that held it."""


class PointError(Exception):
    """The point's call raised: `status` is runtime_error or oom."""

    def __init__(self, status: str, error_class: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error_class, self.message = status, error_class, message


class Backend(Protocol):
    """What the scheduler asks of a cluster. `result` raises the exceptions above."""

    def now(self) -> float: ...

    def submit_compile(self, job: CompileJob, node: NodeInfo) -> Any: ...

    def start_actor(self, device: DeviceSpec, node: NodeInfo) -> Any: ...

    def ping(self, actor: Any) -> Any: ...

    def submit_point(
        self, actor: Any, task: BenchTask, compiles: Sequence[Any], share: CoreShare | None
    ) -> Any: ...

    def wait(self, handles: Sequence[Any], timeout_s: float) -> list[Any]: ...

    def result(self, handle: Any) -> Any: ...

    def kill(self, actor: Any, *, restart: bool) -> None: ...

    def node_alive(self, node_id: str) -> bool: ...


# --- the scheduler's own state ----------------------------------------------------------


@dataclasses.dataclass(eq=False)
class Compile:
    """A job's state: queued (no result, not in flight), in flight, or done (a result)."""

    job: CompileJob
    node: NodeInfo | None = None  # where it runs or ran
    handle: Any = None  # the backend's handle of the latest submission: its vmfb, once done
    in_flight: bool = False
    result: CompileResult | None = None
    num_submits: int = 0
    order: int = 0  # its place in the compile queue (see `_queue_compile`)

    @property
    def queued(self) -> bool:
        return self.result is None and not self.in_flight

    @property
    def ok(self) -> bool:
        return self.result is not None and self.result.ok


@dataclasses.dataclass(eq=False)
class Running:
    point: Point
    handle: Any
    started: float
    compiles: tuple[Compile, ...]
    # their results when it started: a graph lost meanwhile (and queued again) must
    # not take the row's compile columns with it
    results: tuple[CompileResult | None, ...] = ()
    handles: tuple[Any, ...] = ()  # the compiles' handles it was sent with
    share: CoreShare | None = None  # a GPU point timed beside others: its cores
    timed: Timed | None = None  # its entry in the scheduler's OverlapLedger


@dataclasses.dataclass(eq=False)
class Actor:
    ref: Any
    device: DeviceSpec
    node: NodeInfo
    resident: tuple[Any, ...] | None = None  # what `_weights_of` a point it holds
    running: Running | None = None
    ping: Any = None  # a pending ping: the actor is (re)starting until it answers

    @property
    def idle(self) -> bool:
        return self.running is None and self.ping is None


@dataclasses.dataclass
class Counters:
    """What the progress display and the summary show."""

    num_points: int = 0
    num_compiles: int = 0
    num_compiled: int = 0
    num_compile_cache_hits: int = 0
    num_benchmarked: int = 0
    num_failed: int = 0
    num_skipped: int = 0
    compile_phase_s: float = 0.0  # wall seconds during which a compile was running
    bench_phase_s: float = 0.0  # wall seconds during which a point was running


class Scheduler:
    def __init__(
        self,
        backend: Backend,
        nodes: list[NodeInfo],
        model_cfg: LlamaConfig,
        ctx: RunContext,
        sink: RowSink,
        *,
        max_retries: int,
        point_timeout_s: float,
        on_progress: Callable[[Counters], None] = lambda c: None,
        admit: Callable[[Point], bool] = lambda point: True,
        gpu_concurrency: int = 0,
    ) -> None:
        """`admit(point)` is asked right before a point is sent to an actor; False means
        another sweep measures it (see `sweep.execute.claims`): the point leaves this run's queue
        without a row, and `run`'s `refill` may hand it back later. `gpu_concurrency`:
        GPU points timed at once per node at most (0: one per GPU; 1: one point per node)."""
        self.admit, self.gpu_concurrency = admit, gpu_concurrency
        self.backend, self.nodes, self.model_cfg = backend, list(nodes), model_cfg
        self.ctx, self.sink, self.on_progress = ctx, sink, on_progress
        self.max_retries, self.point_timeout_s = max_retries, point_timeout_s
        self.counters = Counters()
        self.compiles: dict[CompileJob, Compile] = {}
        self.actors: list[Actor] = []
        # Points not finished and not running, by ticket: new points count up from 1,
        # retried ones down from -1, so a retry runs before any point not yet started.
        self.pending: dict[int, Point] = {}
        self.attempts: dict[str, int] = defaultdict(int)
        self._tickets = itertools.count(1)
        self._retry_tickets = itertools.count(-1, -1)
        self._devices_started: set[str] = set()
        self._needs: dict[tuple[str, str | None], list[Compile]] = {}  # see _compiles_of
        self._groups: dict[tuple[str, tuple[str, ...]], list[str | None]] = {}  # cpu_groups
        self._offering: dict[str, list[NodeInfo]] = {}  # device name -> device_nodes
        # Readiness: a point runs on a node of CPU kind `group` once all its compiles for
        # that group are done. `_missing[(ticket, group)]` counts those not yet done,
        # `_waiters[compile]` lists who waits on it; ready points are in `_ready`.
        self._missing: dict[tuple[int, str | None], int] = {}
        self._waiters: dict[Compile, list[tuple[int, str | None]]] = defaultdict(list)
        self._ready = ReadyQueue()
        self._dirty_buckets: dict[tuple[str, str | None], None] = {}
        # Compiles queued, per CPU kind (None: portable code, any node compiles it).
        self._queued: dict[str | None, OrderedHeap] = defaultdict(OrderedHeap)
        self._compile_order = itertools.count(1)
        self._requeue_order = itertools.count(-1, -1)
        # Nodes and actors by state, kept up to date by `_refresh` as each one changes.
        self._alive: dict[str, NodeInfo] = {n.node_id: n for n in self.nodes}
        self._node_actors: dict[str, list[Actor]] = defaultdict(list)
        self._num_compiling: dict[str, int] = defaultdict(int)  # node_id -> compiles running
        # node_id -> the actors measuring there, each with the core share it was given
        self._measuring: dict[str, dict[Actor, CoreShare | None]] = {}
        self._overlap = OverlapLedger()  # the rows' num_concurrent
        self._free: dict[str, dict[str, None]] = defaultdict(dict)  # cpu_id -> idle nodes
        self._room: dict[str, dict[str, None]] = defaultdict(
            dict
        )  # cpu_id -> compiling, slots left
        self._available: dict[tuple[str, str], dict[Actor, None]] = defaultdict(dict)
        self._dirty_actors: dict[Actor, None] = {}  # became available since the last dispatch
        self._held: dict[str, dict[Any, int]] = defaultdict(lambda: defaultdict(int))
        self._num_actors: dict[str, int] = defaultdict(int)  # device name -> actors
        self._in_flight_handles: dict[Any, Compile | Actor] = {}
        self._num_in_flight_compiles = 0
        self._deadlines: list[tuple[float, int, Actor, Running]] = []  # point timeouts
        self._deadline_seq = itertools.count()
        self._topology_changed = False  # a node or actor left: look for unservable points
        self._repeated = False  # bench.repeats > 1: a repeat of the grid before the next
        for node in self.nodes:
            self._refresh(node)

    # --- the whole sweep -----------------------------------------------------------------

    def run(self, points: list[Point], refill: Callable[[], list[Point]] | None = None) -> None:
        """Runs `points` to one row each; `refill` is asked for more whenever none is pending."""
        self.add(points)
        while True:
            self._dispatch()
            self._fail_unservable()
            if refill is not None and not self.pending and (more := refill()):
                self.add(more)
                continue
            if not self._in_flight_handles:
                assert not self.pending, "points left with nothing in flight"
                return
            self._wait()
            self._check_timeouts()

    def add(self, points: list[Point]) -> None:
        """Queues points: infeasible ones are skipped, the graphs of the rest queued."""
        self.counters.num_points += len(points)
        self._repeated = self._repeated or any(p.num_repeats > 1 for p in points)
        runnable = self._skip_infeasible(points)
        self._start_actors({p.device.name: p.device for p in runnable}.values())
        num_known = len(self.compiles)
        for point in runnable:
            self._enqueue(point, next(self._tickets))
        self.counters.num_compiles += len(self.compiles) - num_known
        self._topology_changed = True  # a point may need what has already left
        self.on_progress(self.counters)

    def emit(
        self,
        rows: list[dict[str, Any]],
        dispatches: list[dict[str, Any]] | None = None,
        profiles: dict[str, bytes] | None = None,
    ) -> None:
        for row in rows:
            if row["status"] == Status.SKIPPED:
                self.counters.num_skipped += 1
            elif row["status"] == Status.OK:
                self.counters.num_benchmarked += 1
            else:
                self.counters.num_failed += 1
        self.sink(rows, dispatches or [], profiles or {})
        self.on_progress(self.counters)

    def shutdown(self) -> None:
        """Ends the actors; rows still waiting for their `num_concurrent` (a sweep stopped
        early) are written without it."""
        for row, dispatches, profiles in self._overlap.held():
            row[Col.NUM_CONCURRENT] = None  # its neighbours' windows never came
            self.emit([row], dispatches, profiles)
        for actor in self.actors:
            self.backend.kill(actor.ref, restart=False)
        self.actors.clear()

    # --- feasibility and actors ----------------------------------------------------------

    def device_nodes(self, device: DeviceSpec) -> list[NodeInfo]:
        if device.name not in self._offering:
            self._offering[device.name] = [n for n in self.nodes if n.offers(device) >= 1]
        return self._offering[device.name]

    def _skip_infeasible(self, points: list[Point]) -> list[Point]:
        """Points on a device that no node offers are `skipped` now instead of hanging."""
        runnable, skipped = [], []
        for point in points:
            if self.device_nodes(point.device):
                runnable.append(point)
                continue
            device = point.device
            need = "num_gpus=1" if device.needs_gpu else f"resource {device.ray_resource!r}"
            reason = (
                f"no node of the Ray cluster offers device {device.name!r} ({need}); "
                f"nodes: {len(self.nodes)}"
            )
            skipped.append(
                failure_row(point, self.ctx, Status.SKIPPED, reason, error_class="no_device")
            )
        if skipped:
            self.emit(skipped)
        return runnable

    def _start_actors(self, devices: Iterable[DeviceSpec]) -> None:
        for device in sorted(devices, key=lambda d: d.name):
            if device.name in self._devices_started:
                continue
            self._devices_started.add(device.name)
            for node in self.device_nodes(device):
                for _ in range(node.offers(device)):
                    actor = Actor(self.backend.start_actor(device, node), device, node)
                    self.actors.append(actor)
                    on_node = self._node_actors[node.node_id]
                    on_node.append(actor)
                    # The device fewest nodes offer measures first on a free node (a GPU
                    # before the CPU): work only some nodes can do goes there, and the
                    # CPU points it leaves run on the nodes that have nothing else.
                    on_node.sort(key=lambda a: len(self.device_nodes(a.device)))
                    self._num_actors[device.name] += 1
                    self._set_ping(actor, self.backend.ping(actor.ref))

    def _set_resident(self, actor: Actor, weights: tuple[Any, ...] | None) -> None:
        held = self._held[actor.device.name]
        if actor.resident is not None:
            held[actor.resident] -= 1
        if weights is not None:
            held[weights] += 1
        actor.resident = weights

    def _remove_actor(self, actor: Actor) -> None:
        self.actors.remove(actor)
        self._node_actors[actor.node.node_id].remove(actor)
        self._num_actors[actor.device.name] -= 1
        self._set_resident(actor, None)
        self._available[(actor.device.name, actor.node.cpu_id)].pop(actor, None)
        self._topology_changed = True

    # --- graphs --------------------------------------------------------------------------

    def cpu_groups(self, device: DeviceSpec, flags: tuple[str, ...]) -> list[str | None]:
        """The CPU kinds a point's host-targeted graphs compile for; [None] if not host code."""
        key = (device.name, flags)
        if key not in self._groups:
            if not targets_host((*device.target_flags, *flags)):
                self._groups[key] = [None]
            else:
                self._groups[key] = sorted({n.cpu_id for n in self.device_nodes(device)})
        return self._groups[key]

    def _group_on(self, point: Point, node: NodeInfo) -> str | None:
        """The CPU kind of the graphs `point` runs on `node` (None: portable code)."""
        return None if self.cpu_groups(point.device, point.flags) == [None] else node.cpu_id

    def _compiles_of(self, point: Point, node: NodeInfo | None = None) -> list[Compile]:
        """The compiles a point needs to run on `node`, or on any node that could run it."""
        if not point.compiled_by_iree:
            return []
        groups = [self._group_on(point, node)] if node is not None else self._point_groups(point)
        return [c for group in groups for c in self._needs_on(point, group)]

    def _point_groups(self, point: Point) -> list[str | None]:
        return self.cpu_groups(point.device, point.flags) if point.compiled_by_iree else [None]

    def _needs_on(self, point: Point, group: str | None) -> list[Compile]:
        """The compiles of a point's graphs for one CPU kind (memoized: asked often)."""
        if not point.compiled_by_iree:
            return []
        key = (point.key, group)
        if key not in self._needs:
            needs = []
            for graph in point.graphs(self.model_cfg):
                job = CompileJob(graph, point.device, point.flags, group)
                if job not in self.compiles:
                    self.compiles[job] = Compile(job)
                    self._queue_compile(self.compiles[job])
                needs.append(self.compiles[job])
            self._needs[key] = needs
        return self._needs[key]

    def _queue_compile(self, compile_: Compile, *, first: bool = False) -> None:
        """Queues a compile, behind the others, or `first` (one a point already waits on)."""
        compile_.order = next(self._requeue_order if first else self._compile_order)
        self._queued[compile_.job.cpu_group].push(compile_.order, compile_)

    def _compile_nodes(self, job: CompileJob) -> list[NodeInfo]:
        return [n for n in self.nodes if job.cpu_group is None or n.cpu_id == job.cpu_group]

    # --- readiness -----------------------------------------------------------------------

    def _enqueue(self, point: Point, ticket: int) -> None:
        """A point joins the pending ones: ready where its graphs are compiled, else it
        waits on the compiles it lacks."""
        self.pending[ticket] = point
        for group in self._point_groups(point):
            if self._register(ticket, point, group):
                return

    def _register(self, ticket: int, point: Point, group: str | None) -> bool:
        """Where (group) `point` stands: ready, waiting, or failed (True: it has a row)."""
        compiles = self._needs_on(point, group)
        failed = next((c for c in compiles if c.result is not None and not c.ok), None)
        if failed is not None:
            assert failed.result is not None
            del self.pending[ticket]
            self.emit([compile_failure_row(point, self.ctx, failed.result)])
            return True
        missing = [c for c in compiles if not c.ok]
        if not missing:
            bucket = (point.device.name, group)
            self._ready.push(bucket, _weights_of(point), ticket)
            self._dirty_buckets[bucket] = None
            return False
        self._missing[(ticket, group)] = len(missing)
        for compile_ in missing:
            self._waiters[compile_].append((ticket, group))
        return False

    def _compiled(self, compile_: Compile) -> None:
        """A compile succeeded: the points that waited only on it are ready."""
        for ticket, group in self._waiters.pop(compile_, []):
            if ticket not in self.pending:
                self._missing.pop((ticket, group), None)
                continue
            left = self._missing[(ticket, group)] - 1
            if left:
                self._missing[(ticket, group)] = left
                continue
            del self._missing[(ticket, group)]
            point = self.pending[ticket]
            bucket = (point.device.name, group)
            self._ready.push(bucket, _weights_of(point), ticket)
            self._dirty_buckets[bucket] = None

    # --- node and actor state ------------------------------------------------------------

    def _refresh(self, node: NodeInfo) -> None:
        """Files a node and its actors by what they can take now: compiles (free, or
        compiling with slots left) and points (idle actors of a free node)."""
        node_id, cpu = node.node_id, node.cpu_id
        alive = node_id in self._alive
        measuring = node_id in self._measuring
        compiling = self._num_compiling[node_id]
        free = alive and not measuring and not compiling  # free to compile
        if free:
            self._free[cpu][node_id] = None
        else:
            self._free[cpu].pop(node_id, None)
        if alive and not measuring and 0 < compiling < node.num_compile_slots:
            self._room[cpu][node_id] = None
        else:
            self._room[cpu].pop(node_id, None)
        for actor in self._node_actors.get(node_id, ()):
            available = self._available[(actor.device.name, cpu)]
            if alive and actor.idle and self._may_measure(actor):
                if actor not in available:
                    available[actor] = None
                    self._dirty_actors[actor] = None
            else:
                available.pop(actor, None)

    def _may_measure(self, actor: Actor) -> bool:
        """The host rule (module docstring): may `actor`'s node give it a point now?
        Nothing beside a compile; a node measuring nothing takes any point; a node timing
        GPU points takes more GPU points up to its GPU slots; a CPU point takes the node."""
        node = actor.node
        if self._num_compiling[node.node_id]:
            return False
        measuring = self._measuring.get(node.node_id)
        if not measuring:
            return True
        return (
            actor.device.needs_gpu
            and next(iter(measuring)).device.needs_gpu
            and len(measuring) < node.num_gpu_slots(self.gpu_concurrency)
        )

    def _core_share(self, actor: Actor) -> CoreShare | None:
        """The cores a GPU point gets on a node that times several at once: a share no
        point measuring there holds. None (the whole host) for a CPU point, or where the
        node times one point at a time."""
        num_slots = actor.node.num_gpu_slots(self.gpu_concurrency)
        if not actor.device.needs_gpu or num_slots == 1:
            return None
        taken = {share.index for share in self._measuring.get(actor.node.node_id, {}).values()}
        index = next(i for i in range(num_slots) if i not in taken)
        return CoreShare(index, num_slots)

    def _set_ping(self, actor: Actor, handle: Any) -> None:
        actor.ping = handle
        if handle is not None:
            self._in_flight_handles[handle] = actor
        self._refresh(actor.node)

    # --- the dispatch rules --------------------------------------------------------------

    def _dispatch(self) -> None:
        """Compiles onto nodes first, then points onto idle actors of free nodes."""
        self._place_compiles()
        while self._dirty_actors:
            actor = next(iter(self._dirty_actors))
            del self._dirty_actors[actor]
            if actor in self._available[(actor.device.name, actor.node.cpu_id)]:
                self._take_point(actor)
        while self._dirty_buckets:
            device, group = next(iter(self._dirty_buckets))
            del self._dirty_buckets[(device, group)]
            cpus = [group] if group is not None else list(self._free)
            for cpu in cpus:
                for actor in list(self._available.get((device, cpu), ())):
                    if actor in self._available[(device, cpu)] and not self._take_point(actor):
                        break  # nothing left that this kind of node can run

    def _place_compiles(self) -> None:
        """Each queued compile onto a node of its CPU kind: one already compiling with
        slots left first, else a free one. Packing compiles keeps the other nodes
        free to measure (a node measures only when it compiles nothing)."""
        for group in list(self._queued):
            heap = self._queued[group]
            while heap.peek(_still_queued) is not None:
                node = self._compile_node(group)
                if node is None:
                    break
                self._submit_compile(heap.pop(_still_queued), node)

    def _compile_node(self, group: str | None) -> NodeInfo | None:
        cpus = [group] if group is not None else list(self._free)
        for nodes in [self._room.get(cpu) for cpu in cpus] + [self._free.get(cpu) for cpu in cpus]:
            if nodes:
                return self._alive[next(iter(nodes))]
        return None

    def _take_point(self, actor: Actor) -> bool:
        """Gives an available actor its next ready point; False if none is left for it."""
        device, node = actor.device.name, actor.node
        held = self._held[device]
        while True:
            picked = self._ready.pick(
                [(device, node.cpu_id), (device, None)],
                actor.resident,
                lambda w: held.get(w, 0) - (w == actor.resident) > 0,
                self.pending.__contains__,
                self._round_of if self._repeated else None,
            )
            if picked is None:
                return False
            ticket, (_, group) = picked
            point = self.pending[ticket]
            compiles = self._needs_on(point, group)
            if not all(c.ok for c in compiles):  # a graph lost since: wait for it again
                self._register(ticket, point, group)
                continue
            if self.admit(point):
                self._submit_point(actor, ticket, point, tuple(compiles))
                return True
            del self.pending[ticket]  # another sweep measures it
            self.counters.num_points -= 1

    def _round_of(self, ticket: int) -> int:
        return self.pending[ticket].repeat

    def _submit_compile(self, compile_: Compile, node: NodeInfo) -> None:
        compile_.node, compile_.in_flight = node, True
        compile_.num_submits += 1
        compile_.handle = self.backend.submit_compile(compile_.job, node)
        self._in_flight_handles[compile_.handle] = compile_
        self._num_in_flight_compiles += 1
        self._num_compiling[node.node_id] += 1
        self._refresh(node)

    def _submit_point(
        self, actor: Actor, ticket: int, point: Point, compiles: tuple[Compile, ...]
    ) -> None:
        del self.pending[ticket]
        handles = [c.handle for c in compiles]
        share = self._core_share(actor)
        handle = self.backend.submit_point(actor.ref, point.task(), handles, share)
        results = tuple(c.result for c in compiles)
        running = Running(point, handle, self.backend.now(), compiles, results, tuple(handles))
        running.share, running.timed = share, self._overlap.start(actor.node.node_id)
        actor.running = running
        self._set_resident(actor, _weights_of(point))
        self._measuring.setdefault(actor.node.node_id, {})[actor] = share
        self._in_flight_handles[handle] = actor
        heapq.heappush(
            self._deadlines,
            (running.started + self.point_timeout_s, next(self._deadline_seq), actor, running),
        )
        self.attempts[point.key] += 1
        self._refresh(actor.node)

    # --- waiting and outcomes ------------------------------------------------------------

    def _wait(self) -> None:
        compiling = self._num_in_flight_compiles > 0
        measuring = bool(self._measuring)
        start = self.backend.now()
        done = self.backend.wait(list(self._in_flight_handles), timeout_s=1.0)
        elapsed = self.backend.now() - start
        self.counters.compile_phase_s += elapsed if compiling else 0.0
        self.counters.bench_phase_s += elapsed if measuring else 0.0
        for handle in done:
            owner = self._in_flight_handles.pop(handle, None)
            if owner is None:
                continue  # abandoned: a timed-out point's call
            if isinstance(owner, Compile):
                self._compile_done(owner)
            elif owner.running is not None and owner.running.handle == handle:
                self._point_done(owner)
            elif owner.ping is not None and owner.ping == handle:
                self._ping_done(owner)

    def _compile_done(self, compile_: Compile) -> None:
        compile_.in_flight = False
        self._num_in_flight_compiles -= 1
        node = compile_.node
        if node is not None:
            self._num_compiling[node.node_id] -= 1
            self._refresh(node)
        try:
            result = self.backend.result(compile_.handle)
        except Exception as e:  # the task itself died: on a lost node, compile elsewhere
            if node is not None and not self.backend.node_alive(node.node_id):
                self._forget_node(node)
                if compile_.num_submits < MAX_COMPILE_SUBMITS:
                    self._queue_compile(compile_, first=True)  # on another node
                    return
            result = CompileResult.failed(Status.COMPILE_ERROR, f"compile task failed: {e}")
        compile_.result = result
        self.counters.num_compiled += 1
        self.counters.num_compile_cache_hits += bool(result.cache_hit)
        self.on_progress(self.counters)
        if result.ok:
            self._compiled(compile_)
        else:
            self._fail_dependents(compile_)

    def _fail_dependents(self, failed: Compile) -> None:
        """The points waiting on a compile that failed end as its row. (A point found
        ready before its graph was lost and then failed again ends when it is picked.)"""
        assert failed.result is not None
        rows = []
        for ticket, group in self._waiters.pop(failed, []):
            self._missing.pop((ticket, group), None)
            point = self.pending.pop(ticket, None)
            if point is not None:
                rows.append(compile_failure_row(point, self.ctx, failed.result))
        if rows:
            self.emit(rows)

    def _point_done(self, actor: Actor) -> None:
        running = self._stop_measuring(actor)
        try:
            measurement: Measurement = self.backend.result(running.handle)
        except Exception as e:
            self._end_timed(running)
            self._point_failed(actor, running, e)
            return
        self._end_timed(running, measurement)

    def _point_failed(self, actor: Actor, running: Running, e: Exception) -> None:
        point = running.point
        if isinstance(e, ActorDied | ActorStarting | ActorGone):  # unavailable mid-call: it died
            self._actor_lost(actor, point, f"benchmark actor died: {e}")
            return
        if isinstance(e, GraphLost):
            self._graph_lost(running, str(e))
            return
        # PointError, or anything the backend did not expect
        error = (
            e
            if isinstance(e, PointError)
            else PointError(Status.RUNTIME_ERROR, type(e).__name__, str(e))
        )
        if error.status == Status.OOM:
            self._set_resident(actor, None)
        row = failure_row(
            point,
            self.ctx,
            error.status,
            error.message,
            error_class=error.error_class,
            attempt=self.attempts[point.key],
        )
        self.emit([row])

    def _measured_rows(self, running: Running, measurement: Measurement) -> MeasuredRows:
        point = running.point
        compiled = None
        if running.compiles:  # prefill and decode (then score, if any), or one module
            compiled = tuple(running.results[: 1 if point.task().one_module else 2])
        row = measured_row(
            point,
            self.ctx,
            measurement,
            attempt=self.attempts[point.key],
            compiled=compiled,  # type: ignore[arg-type]
            decode_graph=point.graph(self.model_cfg, GraphKind.DECODE) if compiled else None,
        )
        raw = {
            f"{point.key}{suffix}": profile.raw
            for suffix, profile in (
                ("", measurement.profile),
                (".prefill", measurement.prefill_profile),
            )
            if profile is not None and profile.raw
        }
        return row, dispatch_rows(point, self.ctx, measurement), raw

    def _stop_measuring(self, actor: Actor) -> Running:
        """The actor's point ended (a row, a failure, a timeout): its slot is free."""
        running, actor.running = actor.running, None
        assert running is not None
        node_id = actor.node.node_id
        measuring = self._measuring.get(node_id, {})
        measuring.pop(actor, None)
        if not measuring:
            self._measuring.pop(node_id, None)
        self._refresh(actor.node)
        return running

    def _end_timed(self, running: Running, measurement: Measurement | None = None) -> None:
        """Tells the overlap ledger the point ended, and emits the rows whose
        `num_concurrent` is now known: its own (if measured) and those that waited on it.
        A point without a measurement (failed, lost, timed out) counts for nobody."""
        assert running.timed is not None
        window, out = None, None
        if measurement is not None:
            window = (measurement.timed_started_at, measurement.timed_finished_at)
            out = self._measured_rows(running, measurement)
        for (row, dispatches, profiles), count in self._overlap.end(running.timed, window, out):
            row[Col.NUM_CONCURRENT] = count
            self.emit([row], dispatches, profiles)

    def _ping_done(self, actor: Actor) -> None:
        handle = actor.ping
        self._set_ping(actor, None)
        try:
            self.backend.result(handle)
        except ActorStarting:
            self._set_ping(actor, self.backend.ping(actor.ref))
        except Exception:  # ActorGone, ActorDied, ...: it cannot (re)start
            if actor in self._node_actors.get(actor.node.node_id, ()):
                self._remove_actor(actor)

    # --- failures ------------------------------------------------------------------------

    def _actor_lost(self, actor: Actor, point: Point, why: str) -> None:
        """Retry the point elsewhere up to max_retries; drop the actor if its node is gone."""
        self._set_resident(actor, None)
        if self.backend.node_alive(actor.node.node_id):
            self._set_ping(actor, self.backend.ping(actor.ref))  # it restarts; points wait
        else:
            self._forget_node(actor.node)
            self.attempts[point.key] -= 1  # a node that left is not the point's fault
        if self.attempts[point.key] <= self.max_retries:
            self._enqueue(point, next(self._retry_tickets))
            return
        message = f"{why} (after {self.attempts[point.key]} attempts)"
        self.emit(
            [
                failure_row(
                    point, self.ctx, Status.WORKER_LOST, message, attempt=self.attempts[point.key]
                )
            ]
        )

    def _graph_lost(self, running: Running, why: str) -> None:
        """The point's vmfb went with a node: compile it again and run the point again."""
        self.attempts[running.point.key] -= 1  # not the point's fault
        # Compiles redone since the point was sent explain the loss already; of the
        # others, those whose node left are redone, or all of them if none left.
        current = [
            c
            for c, sent in zip(running.compiles, running.handles, strict=True)
            if c.handle is sent and c.result is not None
        ]
        gone = [c for c in current if not self._node_alive(c.node)]
        redo = gone or (current if len(current) == len(running.compiles) else [])
        for compile_ in redo:
            if compile_.num_submits >= MAX_COMPILE_SUBMITS:
                message = f"compiled graph lost {compile_.num_submits} times: {why}"
                self.emit([failure_row(running.point, self.ctx, Status.WORKER_LOST, message)])
                return
            if compile_.node is not None and not self._node_alive(compile_.node):
                self._forget_node(compile_.node)
            if compile_.result is not None:
                compile_.result = None
                self.counters.num_compiled -= 1
                self._queue_compile(compile_, first=True)
        self._enqueue(running.point, next(self._retry_tickets))

    def _node_alive(self, node: NodeInfo | None) -> bool:
        return node is not None and self.backend.node_alive(node.node_id)

    def _forget_node(self, node: NodeInfo) -> None:
        """A node that left: no compile or actor is placed there again."""
        node_id = node.node_id
        if self._alive.pop(node_id, None) is None:
            return
        self.nodes = [n for n in self.nodes if n.node_id != node_id]
        self._offering.clear()
        self._measuring.pop(node_id, None)
        for actor in list(self._node_actors.get(node_id, ())):
            if not actor.running:
                self._remove_actor(actor)
        self._refresh(node)
        self._topology_changed = True

    def _check_timeouts(self) -> None:
        now = self.backend.now()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, actor, running = heapq.heappop(self._deadlines)
            if actor.running is not running:
                continue  # it finished in time
            self._stop_measuring(actor)
            self._end_timed(running)
            self._set_resident(actor, None)
            self._in_flight_handles.pop(running.handle, None)
            self.backend.kill(actor.ref, restart=True)  # restarts empty: weights upload again
            self._set_ping(actor, self.backend.ping(actor.ref))
            message = f"benchmark took longer than bench.point_timeout_s={self.point_timeout_s:g}"
            attempt = self.attempts[running.point.key]
            self.emit(
                [
                    failure_row(
                        running.point, self.ctx, Status.BENCH_TIMEOUT, message, attempt=attempt
                    )
                ]
            )

    def _fail_unservable(self) -> None:
        """Points that nothing can run any more: no actor left for their device, or a
        graph no node is left to compile. Looked for only after a node or an actor left
        (or points came), so a normal step does not look at every pending point."""
        if not self._topology_changed:
            return
        self._topology_changed = False
        cpus = {n.cpu_id for n in self.nodes}

        def compilable(group: str | None) -> bool:
            return bool(self.nodes) if group is None else group in cpus

        if all(self._num_actors[name] for name in self._devices_started) and all(
            compilable(group) for group in self._queued
        ):
            return
        rows = []
        for ticket, point in list(self.pending.items()):
            if not self._num_actors[point.device.name]:
                reason = f"no benchmark actor left for device {point.device.name!r}"
            elif any(
                c.queued and not compilable(c.job.cpu_group) for c in self._compiles_of(point)
            ):
                reason = "no node left to compile its graphs"
            else:
                continue
            del self.pending[ticket]
            rows.append(failure_row(point, self.ctx, Status.WORKER_LOST, reason))
        if rows:
            self.emit(rows)


def _still_queued(compile_: Compile, order: int) -> bool:
    return compile_.queued and compile_.order == order


def _weights_of(point: Point) -> tuple[str, str]:
    """What an actor must hold resident to run `point` (and in which runtime)."""
    return weights_key(point.model_id, point.variant, point.layout), point.runtime
