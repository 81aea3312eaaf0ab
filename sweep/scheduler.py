"""The sweep's scheduler: which graph compiles where, which point runs on which actor, and
what becomes of each failure.

A plain state machine over a `Backend`: Ray in `sweep.cluster`, a simulated cluster
in the tests. Nothing here imports Ray. The rules:

- Every unique graph compiles once: a `CompileJob` is a graph, a device, flags and,
  for `target-cpu=host` code, the CPU kind it must run on (compiled on a node of
  that kind, once per kind, not once per node). vmfbs reach the actors through the
  backend, with no shared filesystem.
- One measurement per node at a time, and no compile on a node while it measures:
  a timed point never shares its host's CPUs with another timed point, a reference
  computation (which runs inside the point's call, before its clock starts) or a
  compile. A free node with compiles waiting takes those first.
- Benchmark actors, one per device slot of each node (one CPU slot per node, one
  per GPU), start at once, so their processes come up while the graphs compile. A
  point goes to an idle actor of its device whose node is free, preferring the actor
  that already holds the point's variant (weight affinity), so each actor uploads a
  variant once.
- Every point ends as exactly one row, handed to the sink as soon as it is known.
  A compile failure, a timeout, a crashed or lost actor, or a wrong answer costs
  that point's row, never the sweep: a point whose actor died is retried elsewhere
  (up to `max_retries`), a point whose compiled graph was lost with a node gets it
  compiled again, and a point no actor is left to run is `worker_lost`.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from sweep.grid import Point
from sweep.rows import (
    RunContext,
    compile_failure_row,
    dispatch_rows,
    failure_row,
    measured_row,
)
from workers.compile import CompileResult, targets_host
from workers.devices import GPU_RESOURCE, DeviceSpec
from workers.export import GraphSpec
from workers.llama_config import LlamaConfig
from workers.measurement import Measurement
from workers.point import BenchTask

# rows; the profiled points' dispatch rows; their raw .ireeprof files by point key
RowSink = Callable[[list[dict[str, Any]], list[dict[str, Any]], dict[str, bytes]], None]
MAX_COMPILE_SUBMITS = 3  # a graph lost with its node is compiled again, this often at most


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

    def submit_point(self, actor: Any, task: BenchTask, compiles: Sequence[Any]) -> Any: ...

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

    @property
    def queued(self) -> bool:
        return self.result is None and not self.in_flight


@dataclasses.dataclass(eq=False)
class Running:
    point: Point
    handle: Any
    started: float
    compiles: tuple[Compile, ...]


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
    ) -> None:
        """`admit(point)` is asked right before a point is sent to an actor; False means
        another sweep measures it (see `sweep.claims`): the point leaves this run's queue
        without a row, and `run`'s `refill` may hand it back later."""
        self.admit = admit
        self.backend, self.nodes, self.model_cfg = backend, list(nodes), model_cfg
        self.ctx, self.sink, self.on_progress = ctx, sink, on_progress
        self.max_retries, self.point_timeout_s = max_retries, point_timeout_s
        self.counters = Counters()
        self.compiles: dict[CompileJob, Compile] = {}
        self.actors: list[Actor] = []
        self.pending: list[Point] = []  # not finished and not running
        self.attempts: dict[str, int] = defaultdict(int)
        self._devices_started: set[str] = set()
        self._needs: dict[tuple[str, str | None], list[Compile]] = {}  # see _compiles_of
        self._measuring: dict[str, Actor] = {}  # node_id -> the actor measuring there

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
            waiting = self._in_flight()
            if not waiting:
                assert not self.pending, "points left with nothing in flight"
                return
            self._wait(waiting)
            self._check_timeouts()

    def add(self, points: list[Point]) -> None:
        """Queues points: infeasible ones are skipped, the graphs of the rest queued."""
        self.counters.num_points += len(points)
        runnable = self._skip_infeasible(points)
        self._start_actors({p.device for p in runnable})
        num_known = len(self.compiles)
        for point in runnable:
            self._compiles_of(point)  # creates the new jobs
        self.counters.num_compiles += len(self.compiles) - num_known
        self.pending += runnable
        self.on_progress(self.counters)

    def emit(
        self,
        rows: list[dict[str, Any]],
        dispatches: list[dict[str, Any]] | None = None,
        profiles: dict[str, bytes] | None = None,
    ) -> None:
        for row in rows:
            if row["status"] == "skipped":
                self.counters.num_skipped += 1
            elif row["status"] == "ok":
                self.counters.num_benchmarked += 1
            else:
                self.counters.num_failed += 1
        self.sink(rows, dispatches or [], profiles or {})
        self.on_progress(self.counters)

    def shutdown(self) -> None:
        for actor in self.actors:
            self.backend.kill(actor.ref, restart=False)
        self.actors.clear()

    # --- feasibility and actors ----------------------------------------------------------

    def device_nodes(self, device: DeviceSpec) -> list[NodeInfo]:
        return [n for n in self.nodes if n.offers(device) >= 1]

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
            skipped.append(failure_row(point, self.ctx, "skipped", reason, error_class="no_device"))
        if skipped:
            self.emit(skipped)
        return runnable

    def _start_actors(self, devices: set[DeviceSpec]) -> None:
        for device in sorted(devices, key=lambda d: d.name):
            if device.name in self._devices_started:
                continue
            self._devices_started.add(device.name)
            for node in self.device_nodes(device):
                for _ in range(node.offers(device)):
                    actor = Actor(self.backend.start_actor(device, node), device, node)
                    actor.ping = self.backend.ping(actor.ref)
                    self.actors.append(actor)

    # --- graphs --------------------------------------------------------------------------

    def cpu_groups(self, device: DeviceSpec, flags: tuple[str, ...]) -> list[str | None]:
        """The CPU kinds a point's host-targeted graphs compile for; [None] if not host code."""
        if not targets_host((*device.target_flags, *flags)):
            return [None]
        return sorted({n.cpu_id for n in self.device_nodes(device)})

    def _compiles_of(self, point: Point, node: NodeInfo | None = None) -> list[Compile]:
        """The compiles a point needs to run on `node`, or on any node that could run it."""
        if not point.compiled_by_iree:
            return []
        groups = self.cpu_groups(point.device, point.flags)
        if node is not None:
            groups = [node.cpu_id] if groups != [None] else [None]
        return [c for group in groups for c in self._needs_on(point, group)]

    def _needs_on(self, point: Point, group: str | None) -> list[Compile]:
        """The compiles of a point's graphs for one CPU kind (memoized: asked often)."""
        key = (point.key, group)
        if key not in self._needs:
            jobs = [
                CompileJob(g, point.device, point.flags, group)
                for g in point.graphs(self.model_cfg)
            ]
            self._needs[key] = [self.compiles.setdefault(job, Compile(job)) for job in jobs]
        return self._needs[key]

    def _compile_nodes(self, job: CompileJob) -> list[NodeInfo]:
        return [n for n in self.nodes if job.cpu_group is None or n.cpu_id == job.cpu_group]

    def _running_compiles(self, node: NodeInfo) -> int:
        return sum(
            1
            for c in self.compiles.values()
            if c.in_flight and c.node is not None and c.node.node_id == node.node_id
        )

    # --- the dispatch rules --------------------------------------------------------------

    def _dispatch(self) -> None:
        """Compiles onto free nodes first, then points onto idle actors of free nodes."""
        queued = [c for c in self.compiles.values() if c.queued]
        assigned = True
        while queued and assigned:  # one job per node per round: spreads them out
            assigned = False
            for node in self.nodes:
                if node.node_id in self._measuring:
                    continue
                if self._running_compiles(node) >= node.num_compile_slots:
                    continue
                job = next((c for c in queued if node in self._compile_nodes(c.job)), None)
                if job is not None:
                    self._submit_compile(job, node)
                    queued.remove(job)
                    assigned = True
        for actor in self.actors:
            node = actor.node
            if not actor.idle or node.node_id in self._measuring or self._running_compiles(node):
                continue
            ready = [p for p in self.pending if p.device == actor.device and self._ready(p, actor)]
            while ready:
                point = self._pick(actor, ready)
                ready.remove(point)
                if self.admit(point):
                    self._submit_point(actor, point)
                    break
                self.pending.remove(point)  # another sweep measures it
                self.counters.num_points -= 1

    def _ready(self, point: Point, actor: Actor) -> bool:
        compiles = self._compiles_of(point, actor.node)
        return all(c.result is not None and c.result.ok for c in compiles)

    def _pick(self, actor: Actor, ready: list[Point]) -> Point:
        """Weight affinity: the actor's resident variant first, then one no other actor holds."""
        held = {a.resident for a in self.actors if a is not actor and a.device == actor.device}
        for wanted in (
            lambda p: _weights_of(p) == actor.resident,
            lambda p: _weights_of(p) not in held,
            lambda p: True,
        ):
            for point in ready:
                if wanted(point):
                    return point
        raise AssertionError("pick from no ready point")

    def _submit_compile(self, compile_: Compile, node: NodeInfo) -> None:
        compile_.node, compile_.in_flight = node, True
        compile_.num_submits += 1
        compile_.handle = self.backend.submit_compile(compile_.job, node)

    def _submit_point(self, actor: Actor, point: Point) -> None:
        self.pending.remove(point)
        compiles = tuple(self._compiles_of(point, actor.node))
        handles = [c.handle for c in compiles]
        handle = self.backend.submit_point(actor.ref, point.task(), handles)
        actor.running = Running(point, handle, self.backend.now(), compiles)
        actor.resident = _weights_of(point)
        self._measuring[actor.node.node_id] = actor
        self.attempts[point.key] += 1

    # --- waiting and outcomes ------------------------------------------------------------

    def _in_flight(self) -> dict[Any, Any]:
        waiting: dict[Any, Any] = {}
        for compile_ in self.compiles.values():
            if compile_.in_flight:
                waiting[compile_.handle] = compile_
        for actor in self.actors:
            if actor.running is not None:
                waiting[actor.running.handle] = actor
            elif actor.ping is not None:
                waiting[actor.ping] = actor
        return waiting

    def _wait(self, waiting: dict[Any, Any]) -> None:
        compiling = any(isinstance(v, Compile) for v in waiting.values())
        measuring = bool(self._measuring)
        start = self.backend.now()
        done = self.backend.wait(list(waiting), timeout_s=1.0)
        elapsed = self.backend.now() - start
        self.counters.compile_phase_s += elapsed if compiling else 0.0
        self.counters.bench_phase_s += elapsed if measuring else 0.0
        for handle in done:
            owner = waiting[handle]
            if isinstance(owner, Compile):
                self._compile_done(owner)
            elif owner.running is not None and owner.running.handle == handle:
                self._point_done(owner)
            else:
                self._ping_done(owner)

    def _compile_done(self, compile_: Compile) -> None:
        compile_.in_flight = False
        try:
            result = self.backend.result(compile_.handle)
        except Exception as e:  # the task itself died: on a lost node, compile elsewhere
            node = compile_.node
            if node is not None and not self.backend.node_alive(node.node_id):
                self._forget_node(node)
                if compile_.num_submits < MAX_COMPILE_SUBMITS:
                    return  # queued again: `_dispatch` places it on another node
            result = CompileResult.failed("compile_error", f"compile task failed: {e}")
        compile_.result = result
        self.counters.num_compiled += 1
        self.counters.num_compile_cache_hits += bool(result.cache_hit)
        self.on_progress(self.counters)
        if not result.ok:
            self._fail_dependents(compile_)

    def _fail_dependents(self, failed: Compile) -> None:
        assert failed.result is not None
        rows = []
        for point in list(self.pending):
            if failed in self._compiles_of(point):
                self.pending.remove(point)
                rows.append(compile_failure_row(point, self.ctx, failed.result))
        if rows:
            self.emit(rows)

    def _point_done(self, actor: Actor) -> None:
        running, actor.running = actor.running, None
        assert running is not None
        self._measuring.pop(actor.node.node_id, None)
        point = running.point
        try:
            measurement: Measurement = self.backend.result(running.handle)
        except (ActorDied, ActorStarting, ActorGone) as e:  # unavailable mid-call: it died
            self._actor_lost(actor, point, f"benchmark actor died: {e}")
            return
        except GraphLost as e:
            self._graph_lost(running, str(e))
            return
        except Exception as e:  # PointError, or anything the backend did not expect
            error = (
                e
                if isinstance(e, PointError)
                else PointError("runtime_error", type(e).__name__, str(e))
            )
            if error.status == "oom":
                actor.resident = None
            row = failure_row(
                point,
                self.ctx,
                error.status,
                error.message,
                error_class=error.error_class,
                attempt=self.attempts[point.key],
            )
            self.emit([row])
            return
        compiled = None
        if running.compiles:
            prefill, decode = (c.result for c in running.compiles[:2])  # then score, if any
            compiled = (prefill, decode)
        row = measured_row(
            point,
            self.ctx,
            measurement,
            attempt=self.attempts[point.key],
            compiled=compiled,  # type: ignore[arg-type]
            decode_graph=point.graph(self.model_cfg, "decode") if compiled else None,
        )
        profile = measurement.profile
        profiles = {point.key: profile.raw} if profile is not None and profile.raw else {}
        self.emit([row], dispatch_rows(point, self.ctx, measurement), profiles)

    def _ping_done(self, actor: Actor) -> None:
        handle, actor.ping = actor.ping, None
        try:
            self.backend.result(handle)
        except ActorStarting:
            actor.ping = self.backend.ping(actor.ref)
        except Exception:  # ActorGone, ActorDied, ...: it cannot (re)start
            self.actors.remove(actor)

    # --- failures ------------------------------------------------------------------------

    def _actor_lost(self, actor: Actor, point: Point, why: str) -> None:
        """Retry the point elsewhere up to max_retries; drop the actor if its node is gone."""
        actor.resident = None
        if self.backend.node_alive(actor.node.node_id):
            actor.ping = self.backend.ping(actor.ref)  # it restarts; points wait for it
        else:
            self._forget_node(actor.node)
        if self.attempts[point.key] <= self.max_retries:
            self.pending.insert(0, point)
            return
        message = f"{why} (after {self.attempts[point.key]} attempts)"
        self.emit(
            [failure_row(point, self.ctx, "worker_lost", message, attempt=self.attempts[point.key])]
        )

    def _graph_lost(self, running: Running, why: str) -> None:
        """The point's vmfb went with a node: compile it again and run the point again."""
        self.attempts[running.point.key] -= 1  # not the point's fault
        gone = [c for c in running.compiles if not self._alive(c.node)]
        for compile_ in gone or running.compiles:  # none gone: redo them all to be sure
            if compile_.num_submits >= MAX_COMPILE_SUBMITS:
                message = f"compiled graph lost {compile_.num_submits} times: {why}"
                self.emit([failure_row(running.point, self.ctx, "worker_lost", message)])
                return
            if compile_.node is not None and not self._alive(compile_.node):
                self._forget_node(compile_.node)
            compile_.result = None
            self.counters.num_compiled -= 1
        self.pending.insert(0, running.point)

    def _alive(self, node: NodeInfo | None) -> bool:
        return node is not None and self.backend.node_alive(node.node_id)

    def _forget_node(self, node: NodeInfo) -> None:
        """A node that left: no compile or actor is placed there again."""
        self.nodes = [n for n in self.nodes if n.node_id != node.node_id]
        self.actors = [a for a in self.actors if a.node.node_id != node.node_id or a.running]
        self._measuring.pop(node.node_id, None)

    def _check_timeouts(self) -> None:
        now = self.backend.now()
        for actor in self.actors:
            running = actor.running
            if running is None or now - running.started < self.point_timeout_s:
                continue
            actor.running, actor.resident = None, None
            self._measuring.pop(actor.node.node_id, None)
            self.backend.kill(actor.ref, restart=True)  # restarts empty: weights upload again
            actor.ping = self.backend.ping(actor.ref)
            message = f"benchmark took longer than bench.point_timeout_s={self.point_timeout_s:g}"
            attempt = self.attempts[running.point.key]
            self.emit(
                [failure_row(running.point, self.ctx, "bench_timeout", message, attempt=attempt)]
            )

    def _fail_unservable(self) -> None:
        """Points that nothing can run any more: no actor left for their device, or a
        graph no node is left to compile."""
        rows = []
        for point in list(self.pending):
            if not any(a.device == point.device for a in self.actors):
                reason = f"no benchmark actor left for device {point.device.name!r}"
            elif any(c.queued and not self._compile_nodes(c.job) for c in self._compiles_of(point)):
                reason = "no node left to compile its graphs"
            else:
                continue
            self.pending.remove(point)
            rows.append(failure_row(point, self.ctx, "worker_lost", reason))
        if rows:
            self.emit(rows)


def _weights_of(point: Point) -> tuple[Any, ...]:
    """What an actor must hold resident to run `point`."""
    return (point.variant, point.runtime)
