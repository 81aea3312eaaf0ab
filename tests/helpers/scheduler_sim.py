"""A simulated cluster for the scheduler: no Ray, no compiler, milliseconds per test.

`SimBackend` is a deterministic stand-in for `sweep.execute.cluster.RayBackend`: a clock that
jumps to the next event, compiles and points that take a fixed simulated time, and
failures scripted per test (a compile that fails, an actor that dies, a node that
leaves, a point that hangs). It records every compile and measurement interval, so a
test can check the scheduler's rules themselves (tests/test_scheduler.py,
tests/test_scheduler_scale.py, tests/test_repeats.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from sweep.execute.scheduler import ActorDied, ActorStarting, CompileJob, NodeInfo, Scheduler
from sweep.plan.grid import Point
from sweep.store.rows import RunContext
from tests.helpers import fake_measurement
from workers.compile.iree import CompileResult
from workers.core.config import preset
from workers.core.devices import CPU_BENCH_RESOURCE, DeviceSpec
from workers.core.threads import CoreShare
from workers.records import Measurement
from workers.tasks import BenchTask

TINY = preset("tiny")
COMPILE_S, POINT_S = 1.0, 2.0


def node(name: str, cpu: str = "epyc", cpus: int = 2, gpus: int = 0) -> NodeInfo:
    resources = {"CPU": float(cpus), CPU_BENCH_RESOURCE: 1.0}
    if gpus:
        resources["GPU"] = float(gpus)
    return NodeInfo(name, f"host-{name}", resources, cpu)


@dataclasses.dataclass(eq=False)
class SimActor:
    device: DeviceSpec
    node: NodeInfo
    resident: Any = None
    restarting: int = 0  # pings that answer "still starting"
    num_uploads: int = 0


@dataclasses.dataclass(eq=False)
class Handle:
    kind: str
    done_at: float
    value: Any = None
    error: Exception | None = None


class SimBackend:
    """A simulated cluster; see the module docstring. Hooks script the failures."""

    def __init__(self, nodes: list[NodeInfo]) -> None:
        self.nodes = nodes
        self.clock = 0.0
        self.dead: set[str] = set()
        self.compiles: list[tuple[CompileJob, str, float, float]] = []  # job, node, start, end
        self.measured: list[tuple[SimActor, BenchTask, float, float]] = []
        self.shares: list[tuple[SimActor, CoreShare | None, float, float]] = []
        self.actors: list[SimActor] = []
        self.killed: list[SimActor] = []
        self.fail_compile: Callable[[CompileJob], bool] = lambda job: False
        # (actor, task, attempt number of that task) -> an exception, a duration, (a
        # duration, the timed seconds at its end) or None
        self.on_point: Callable[[SimActor, BenchTask, int], Any] = lambda a, t, n: None
        self._attempts: dict[BenchTask, int] = {}
        self._handles: list[Handle] = []

    def now(self) -> float:
        return self.clock

    def submit_compile(self, job: CompileJob, node: NodeInfo) -> Handle:
        assert node.node_id not in self.dead, "a compile placed on a dead node"
        end = self.clock + COMPILE_S
        self.compiles.append((job, node.node_id, self.clock, end))
        if self.fail_compile(job):
            result = CompileResult.failed("compile_error", f"no such flag in {job.flags}")
        else:
            result = CompileResult(
                ok=True,
                key=f"k{len(self.compiles)}",
                vmfb=None,
                compile_s=COMPILE_S,
                num_dispatches=7,
                cache_hit=False,
                command="iree-compile in.mlir -o out.vmfb",
                error_class=None,
                error_message=None,
                returncode=0,
                vmfb_bytes=1000,
            )
        return self._handle("compile", end, value=result)

    def start_actor(self, device: DeviceSpec, node: NodeInfo) -> SimActor:
        actor = SimActor(device, node)
        self.actors.append(actor)
        return actor

    def ping(self, actor: SimActor) -> Handle:
        if actor.node.node_id in self.dead:
            return self._handle("ping", self.clock, error=ActorDied("node gone"))
        if actor.restarting:
            actor.restarting -= 1
            return self._handle("ping", self.clock + 0.1, error=ActorStarting("restarting"))
        return self._handle("ping", self.clock, value="ready")

    def submit_point(
        self, actor: SimActor, task: BenchTask, compiles: Any, share: CoreShare | None
    ) -> Handle:
        assert all(isinstance(c, Handle) and c.value.ok for c in compiles) or not compiles
        self._attempts[task] = self._attempts.get(task, 0) + 1
        scripted = self.on_point(actor, task, self._attempts[task])
        if isinstance(scripted, Exception):
            if isinstance(scripted, ActorDied | ActorStarting):
                actor.resident, actor.restarting = None, 1
            return self._handle("point", self.clock + POINT_S / 2, error=scripted)
        call_s, timed_s = scripted if isinstance(scripted, tuple) else (scripted, None)
        end = self.clock + (call_s if isinstance(call_s, float) else POINT_S)
        self.measured.append((actor, task, self.clock, end))
        self.shares.append((actor, share, self.clock, end))
        upload_s = 0.0
        if actor.resident != (task.variant, task.runtime):
            actor.resident, upload_s = (task.variant, task.runtime), 0.5
            actor.num_uploads += 1
        # the timed phase: after the upload, or the last `timed_s` of the call
        window = (self.clock + upload_s if timed_s is None else end - timed_s, end)
        return self._handle("point", end, value=measurement(task, actor, upload_s, window))

    def wait(self, handles: list[Handle], timeout_s: float) -> list[Handle]:
        next_done = min(h.done_at for h in handles)
        self.clock = max(self.clock, min(next_done, self.clock + timeout_s))
        return [h for h in handles if h.done_at <= self.clock]

    def result(self, handle: Handle) -> Any:
        if handle.error is not None:
            raise handle.error
        return handle.value

    def kill(self, actor: SimActor, *, restart: bool) -> None:
        self.killed.append(actor)
        actor.resident = None

    def node_alive(self, node_id: str) -> bool:
        return node_id not in self.dead

    def _handle(self, kind: str, done_at: float, **kw: Any) -> Handle:
        handle = Handle(kind, done_at, **kw)
        self._handles.append(handle)
        return handle


def measurement(
    task: BenchTask, actor: SimActor, upload_s: float, window: tuple[float, float]
) -> Measurement:
    return fake_measurement(
        tuple(range(task.steps.num_tokens)),
        decode_samples_ms=(2.0,) * task.steps.decode_steps,
        prompt_ids=(1,) * task.prompt_length,
        bench_s=POINT_S,
        upload_s=upload_s,
        hostname=actor.node.hostname,
        node_id=actor.node.node_id,
        timed_started_at=window[0],
        timed_finished_at=window[1],
    )


def run(
    backend: SimBackend,
    todo: list[Point],
    *,
    max_retries: int = 1,
    timeout_s: float = 100.0,
    gpu_concurrency: int = 0,
    **kw,
) -> tuple[list[dict[str, Any]], Scheduler]:
    rows: list[dict[str, Any]] = []
    scheduler = scheduler_for(backend, rows, max_retries, timeout_s, gpu_concurrency)
    scheduler.run(todo, **kw)
    return rows, scheduler


def scheduler_for(
    backend: SimBackend,
    rows: list[dict[str, Any]],
    max_retries: int = 1,
    timeout_s: float = 100.0,
    gpu_concurrency: int = 0,
) -> Scheduler:
    """A scheduler on `backend` that appends its rows to `rows`."""
    return Scheduler(
        backend,
        backend.nodes,
        TINY,
        RunContext("run", "smoke", {}),
        lambda new_rows, dispatches, profiles: rows.extend(new_rows),
        max_retries=max_retries,
        point_timeout_s=timeout_s,
        gpu_concurrency=gpu_concurrency,
    )
