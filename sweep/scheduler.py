"""The sweep on Ray: compile every unique graph once, then benchmark on device actors.

Two phases. First every unique (graph, device, flags) is compiled as a Ray task, in
parallel; a `target-cpu=host` graph is compiled on a node of the same CPU as the
node that will run it (once per CPU kind, not once per node). Benchmark actors, one
per CPU node and one per GPU, start beside the compiles, but the first point runs
only after the last compile: a CPU benchmark never shares its cores with a compile.
Points go to actors one at a time, preferring the
actor that already holds the point's variant (weight affinity), so each actor
uploads a variant once. vmfbs reach actors as Ray objects: no shared filesystem.

Every point ends as one row, written as soon as it is known. A compile failure,
a timeout, a crashed or lost actor, or a wrong answer costs that point's row, never
the sweep.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from sweep.cluster import NodeInfo, bench_runtime_env
from sweep.config import SweepConfig
from sweep.grid import Point
from sweep.rows import (
    RunContext,
    compile_columns,
    failure_row,
    measured_row,
    repro_command,
)
from workers.compile import targets_host
from workers.devices import DeviceSpec
from workers.export import GraphSpec
from workers.llama_config import LlamaConfig
from workers.point import BenchTask, ModelSource
from workers.quant import variant_arg_specs

RowSink = Callable[[list[dict[str, Any]]], None]
KINDS = ("prefill", "decode")


@dataclasses.dataclass
class Actor:
    handle: Any
    device: str
    node_id: str
    cpu_id: str
    resident: tuple[str, int, str] | None = None  # (variant, group_size, runtime) it holds
    busy: tuple[Any, Point, float] | None = None  # (result ref, point, start time)
    ping: Any = None  # a pending `where()` call: the actor is (re)starting until it answers

    @property
    def idle(self) -> bool:
        return self.busy is None and self.ping is None


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
    compile_phase_s: float = 0.0  # submitting and awaiting every compile
    bench_phase_s: float = 0.0  # actors' start, weights, references and every point's run


class Scheduler:
    def __init__(
        self,
        cfg: SweepConfig,
        source: ModelSource,
        model_cfg: LlamaConfig,
        nodes: list[NodeInfo],
        ctx: RunContext,
        sink: RowSink,
        on_progress: Callable[[Counters], None] = lambda c: None,
    ) -> None:
        from sweep.cluster import remote_functions

        self.cfg, self.source, self.model_cfg = cfg, source, model_cfg
        self.nodes, self.ctx, self.sink = nodes, ctx, sink
        self.on_progress = on_progress
        self.counters = Counters()
        self.compile_task, self.actor_class = remote_functions()
        self.compiles: dict[tuple, tuple[Any, Any]] = {}  # job key -> (meta ref, vmfb ref)
        self.compile_meta: dict[tuple, dict[str, Any]] = {}
        self.actors: list[Actor] = []
        self.attempts: dict[str, int] = defaultdict(int)

    # --- the whole sweep -----------------------------------------------------------------

    def run(self, points: list[Point]) -> None:
        self.counters.num_points = len(points)
        self.on_progress(self.counters)
        runnable = self._skip_infeasible(points)
        # Actors start now: their processes come up and import IREE and JAX while the
        # graphs compile. They hold no weights until their first point, and no point
        # runs before every compile is done, so no measurement overlaps a compile.
        self._start_actors({p.device for p in runnable})
        start = time.monotonic()
        self._compile_all([p for p in runnable if p.runtime == "iree"])
        self.counters.compile_phase_s = time.monotonic() - start
        benchable = self._drop_failed_compiles(runnable)
        if benchable:
            start = time.monotonic()
            self._benchmark_all(benchable)
            self.counters.bench_phase_s = time.monotonic() - start

    def emit(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            row.setdefault("driver", self.cfg.devices[row["device"]].driver)
            status = row["status"]
            if status == "skipped":
                self.counters.num_skipped += 1
            elif status == "ok":
                self.counters.num_benchmarked += 1
            else:
                self.counters.num_failed += 1
        self.sink(rows)
        self.on_progress(self.counters)

    # --- feasibility ---------------------------------------------------------------------

    def device_nodes(self, device: DeviceSpec) -> list[NodeInfo]:
        return [n for n in self.nodes if n.offers(device) >= 1]

    def _skip_infeasible(self, points: list[Point]) -> list[Point]:
        """Points on a device that no node offers are `skipped` now instead of hanging."""
        runnable, skipped = [], []
        for point in points:
            device = self.cfg.devices[point.device]
            if self.device_nodes(device):
                runnable.append(point)
                continue
            need = "num_gpus=1" if device.needs_gpu else f"resource {device.ray_resource!r}"
            reason = (
                f"no node of the Ray cluster offers device {point.device!r} ({need}); "
                f"nodes: {len(self.nodes)}"
            )
            skipped.append(failure_row(point, self.ctx, "skipped", reason, error_class="no_device"))
        if skipped:
            self.emit(skipped)
        return runnable

    # --- compile phase -------------------------------------------------------------------

    def cpu_groups(self, device: DeviceSpec, flags: tuple[str, ...]) -> dict[str | None, NodeInfo]:
        """Where to compile: one node per CPU kind for host-targeted graphs, else anywhere."""
        if not targets_host((*device.target_flags, *flags)):
            return {None: None}  # type: ignore[dict-item]
        groups: dict[str | None, NodeInfo] = {}
        for node in self.device_nodes(device):
            groups.setdefault(node.cpu_id, node)
        return groups

    def job_key(self, point: Point, kind: str, cpu_group: str | None) -> tuple:
        return (*point.compile_key(kind), cpu_group)

    def _compile_all(self, points: list[Point]) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        for point in points:
            device = self.cfg.devices[point.device]
            for group, node in self.cpu_groups(device, point.flags).items():
                for kind in KINDS:
                    key = self.job_key(point, kind, group)
                    if key in self.compiles:
                        continue
                    options: dict[str, Any] = {}
                    if node is not None:
                        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
                            node.node_id, soft=False
                        )
                    spec = GraphSpec(
                        self.model_cfg,
                        point.variant,
                        point.group_size,
                        point.max_seq,
                        kind,
                        point.prompt_bucket if kind == "prefill" else 0,
                    )
                    self.compiles[key] = self.compile_task.options(**options).remote(
                        spec,
                        device,
                        point.flags,
                        self.cfg.cache_dir,
                        self.cfg.bench.compile_timeout_s,
                    )
        self.counters.num_compiles = len(self.compiles)
        self.on_progress(self.counters)
        self._await_compiles()

    def _await_compiles(self) -> None:
        import ray

        by_ref = {meta_ref: key for key, (meta_ref, _) in self.compiles.items()}
        pending = list(by_ref)
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=None)
            for ref in done:
                key = by_ref[ref]
                try:
                    meta = ray.get(ref)
                except Exception as e:  # the task itself died: record, go on
                    meta = {
                        "ok": False,
                        "error_class": "compile_error",
                        "error_message": f"compile task failed: {e}",
                        "returncode": None,
                    }
                self.compile_meta[key] = meta
                self.counters.num_compiled += 1
                self.counters.num_compile_cache_hits += bool(meta.get("cache_hit"))
                self.on_progress(self.counters)

    def _drop_failed_compiles(self, points: list[Point]) -> list[Point]:
        ok, failed = [], []
        for point in points:
            if point.runtime != "iree":  # XLA compiles in the actor, ahead of its timing
                ok.append(point)
                continue
            device = self.cfg.devices[point.device]
            metas = [
                self.compile_meta[self.job_key(point, kind, group)]
                for group in self.cpu_groups(device, point.flags)
                for kind in KINDS
            ]
            bad = next((m for m in metas if not m.get("ok")), None)
            if bad is None:
                ok.append(point)
                continue
            failed.append(
                failure_row(
                    point,
                    self.ctx,
                    bad.get("error_class") or "compile_error",
                    bad.get("error_message") or "compile failed",
                    returncode=bad.get("returncode"),
                    extra={"repro_command": bad.get("command")},
                )
            )
        if failed:
            self.emit(failed)
        return ok

    # --- benchmark phase -----------------------------------------------------------------

    def _start_actors(self, devices: set[str]) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        for name in sorted(devices):
            device = self.cfg.devices[name]
            for node in self.device_nodes(device):
                for _ in range(int(node.offers(device))):
                    handle = self.actor_class.options(
                        num_cpus=0,
                        runtime_env=bench_runtime_env(),
                        **device.ray_actor_options(),
                        scheduling_strategy=NodeAffinitySchedulingStrategy(
                            node.node_id, soft=False
                        ),
                    ).remote(device, self.source, self.cfg.cache_dir)
                    actor = Actor(handle, name, node.node_id, node.cpu_id)
                    self._ping(actor)
                    self.actors.append(actor)

    def _benchmark_all(self, points: list[Point]) -> None:
        import ray

        queue: dict[str, list[Point]] = defaultdict(list)
        for point in points:
            queue[point.device].append(point)
        while any(queue.values()) or any(a.busy for a in self.actors):
            for actor in self.actors:
                if actor.idle and queue[actor.device]:
                    self._submit(actor, self._pick(actor, queue[actor.device]))
            self._fail_unservable(queue)
            waiting = {a.busy[0] if a.busy else a.ping: a for a in self.actors if not a.idle}
            if not waiting:
                continue
            done, _ = ray.wait(list(waiting), num_returns=1, timeout=1.0)
            for ref in done:
                actor = waiting[ref]
                if actor.busy:
                    self._collect(actor, queue)
                else:
                    self._answer_ping(actor)
            self._check_timeouts(queue)

    def _ping(self, actor: Actor) -> None:
        """Hold points back from a (re)starting actor until it answers: a call sent while
        it restarts fails without running, which would waste one of the point's tries."""
        actor.ping = actor.handle.where.remote()

    def _answer_ping(self, actor: Actor) -> None:
        import ray

        ref, actor.ping = actor.ping, None
        try:
            ray.get(ref)
        except ray.exceptions.ActorUnavailableError:
            time.sleep(0.2)  # still restarting
            self._ping(actor)
        except ray.exceptions.RayError:
            self.actors.remove(actor)  # it cannot (re)start, e.g. its node is gone

    def _pick(self, actor: Actor, pending: list[Point]) -> Point:
        """Weight affinity: the actor's resident variant first, then one no other actor holds."""
        held = {a.resident for a in self.actors if a is not actor and a.device == actor.device}
        for wanted in (
            lambda p: _weights_of(p) == actor.resident,
            lambda p: _weights_of(p) not in held,
            lambda p: True,
        ):
            for i, point in enumerate(pending):
                if wanted(point):
                    return pending.pop(i)
        raise AssertionError("pick from an empty queue")

    def group_for(self, point: Point, cpu_id: str) -> str | None:
        """The compile group of a point run on a CPU of `cpu_id`: only host code cares."""
        device = self.cfg.devices[point.device]
        return cpu_id if targets_host((*device.target_flags, *point.flags)) else None

    def _submit(self, actor: Actor, point: Point) -> None:
        task = BenchTask(
            point.variant,
            point.group_size,
            point.prompt_length,
            point.prompt_bucket,
            point.max_seq,
            point.warmup_steps,
            point.decode_steps,
            point.prefill_runs,
            point.runtime,
        )
        vmfbs = []
        if point.runtime == "iree":
            group = self.group_for(point, actor.cpu_id)
            vmfbs = [self.compiles[self.job_key(point, kind, group)][1] for kind in KINDS]
        ref = actor.handle.run.remote(task, *vmfbs)
        actor.busy = (ref, point, time.monotonic())
        actor.resident = _weights_of(point)
        self.attempts[point.key] += 1

    def _collect(self, actor: Actor, queue: dict[str, list[Point]]) -> None:
        import ray

        ref, point, _ = actor.busy  # type: ignore[misc]
        actor.busy = None
        try:
            measured = ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as e:
            self._actor_lost(actor, point, queue, f"benchmark actor died: {e}")
            return
        except ray.exceptions.OutOfMemoryError as e:
            actor.resident = None
            self.emit([failure_row(point, self.ctx, "oom", str(e))])
            return
        except ray.exceptions.RayTaskError as e:
            status = "oom" if _looks_like_oom(str(e)) else "runtime_error"
            self.emit(
                [
                    failure_row(
                        point,
                        self.ctx,
                        status,
                        str(e),
                        error_class=type(e.cause).__name__ if getattr(e, "cause", None) else status,
                    )
                ]
            )
            return
        self.emit([self._measured_row(point, measured, self.group_for(point, actor.cpu_id))])

    def _measured_row(
        self, point: Point, measured: dict[str, Any], group: str | None
    ) -> dict[str, Any]:
        if point.runtime != "iree":
            compiled = {"compile_s": measured.get("xla_compile_s")}
            row = measured_row(point, self.ctx, compiled, measured, repro=None)
            row["attempt"] = self.attempts[point.key]
            return row
        device = self.cfg.devices[point.device]
        prefill = self.compile_meta[self.job_key(point, "prefill", group)]
        decode = self.compile_meta[self.job_key(point, "decode", group)]
        repro = repro_command(point, decode, device.driver, self._decode_input_shapes(point))
        row = measured_row(point, self.ctx, compile_columns(prefill, decode), measured, repro)
        row["attempt"] = self.attempts[point.key]
        return row

    def _decode_input_shapes(self, point: Point) -> list[str]:
        c = self.model_cfg
        specs = variant_arg_specs(c, point.variant, point.group_size)
        elem = {"float32": "f32", "bfloat16": "bf16", "uint32": "ui32", "int32": "i32"}
        shapes = ["x".join([*map(str, shape), elem[dtype]]) for _, shape, dtype in specs]
        cache = f"{c.num_hidden_layers}x{point.max_seq}x{c.num_key_value_heads}x{c.head_dim}"
        cache_elem = "bf16" if point.variant == "bf16" else "f32"
        return [*shapes, "i32", "i32", f"{cache}x{cache_elem}", f"{cache}x{cache_elem}"]

    # --- failures ------------------------------------------------------------------------

    def _actor_lost(
        self, actor: Actor, point: Point, queue: dict[str, list[Point]], why: str
    ) -> None:
        """Retry the point elsewhere up to max_retries; drop the actor if its node is gone."""
        actor.resident = None
        if self._node_alive(actor.node_id):
            self._ping(actor)  # Ray restarts it (max_restarts=-1); wait for that
        else:
            self.actors.remove(actor)
        if self.attempts[point.key] <= self.cfg.bench.max_retries:
            queue[point.device].insert(0, point)
            return
        self.emit(
            [
                failure_row(
                    point,
                    self.ctx,
                    "worker_lost",
                    f"{why} (after {self.attempts[point.key]} attempts)",
                )
            ]
        )

    def _node_alive(self, node_id: str) -> bool:
        import ray

        return any(n["NodeID"] == node_id and n.get("Alive") for n in ray.nodes())

    def _check_timeouts(self, queue: dict[str, list[Point]]) -> None:
        import ray

        limit = self.cfg.bench.point_timeout_s
        for actor in self.actors:
            if actor.busy is None or time.monotonic() - actor.busy[2] < limit:
                continue
            _, point, _ = actor.busy
            actor.busy, actor.resident = None, None
            ray.kill(actor.handle, no_restart=False)  # restarts empty: weights upload again
            self._ping(actor)
            self.emit(
                [
                    failure_row(
                        point,
                        self.ctx,
                        "bench_timeout",
                        f"benchmark took longer than bench.point_timeout_s={limit:g}",
                    )
                ]
            )

    def _fail_unservable(self, queue: dict[str, list[Point]]) -> None:
        """Points left for a device whose every actor is gone (its nodes died)."""
        for device, pending in queue.items():
            if pending and not any(a.device == device for a in self.actors):
                rows = [
                    failure_row(
                        p, self.ctx, "worker_lost", f"no benchmark actor left for device {device!r}"
                    )
                    for p in pending
                ]
                pending.clear()
                self.emit(rows)

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor.handle, no_restart=True)
        self.actors.clear()


def _looks_like_oom(message: str) -> bool:
    text = message.lower()
    return any(
        s in text
        for s in ("resource_exhausted", "out of memory", "memoryerror", "cannot allocate memory")
    )


def _weights_of(point: Point) -> tuple[str, int, str]:
    """What an actor must hold resident to run `point`."""
    return (point.variant, point.group_size, point.runtime)
