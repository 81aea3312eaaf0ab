"""Cluster simulation: the real scheduler on 10 to 1,000 simulated nodes, with faults.

Real sweeps here run on one or two raylets; the people this tool is for run flag and
formulation studies on tens to hundreds of GPU hosts, with thousands of points and
nodes that come and go. `sweep.execute.scheduler.Scheduler` is a pure state machine over a
`Backend`, so this script runs it, unchanged, on a simulated backend with a virtual
clock (an event heap): N nodes of given kinds (CPU-only, 1 GPU, 8 GPUs), compile and
benchmark durations drawn from log-normal distributions fitted to this project's own
measured rows (`fit_durations` names them), and injected faults: nodes lost mid-run,
actors that crash inside a point, compiles that time out.

It answers three questions. Does the driver keep up (CPU time per scheduling event,
memory)? How close does the makespan come to what the devices allow? The lower bound
is the larger of the device time over the measurement slots and the longest chain of
one compile then one benchmark. The slots are what the hardware offers, whatever the
scheduler makes of them: every GPU is a slot for CUDA points, and a CPU point takes a
whole node (the host rule of `sweep.execute.scheduler`), so the node time the points
need is at least the CPU device time plus the CUDA device time over the most GPUs a
node has. `--gpu-concurrency` is the sweep's `bench.gpu_concurrency` (1: one timed
point per node, as before GPU points shared their host). And what do faults cost:
every point must end as exactly one row, none lost, none measured twice.

    python benchmarks/cluster_sim.py --nodes 1000 --points 100000 --node-loss 0.01 \
        --out benchmarks/results/cluster_sim-1000n-100000p-loss1-vm-DATE.json
    python benchmarks/cluster_sim.py --nodes 100 --points 10000 --devices cuda \
        --mix gpu8=1 --gpu-concurrency 1   # before: one GPU of each host at a time
    python benchmarks/cluster_sim.py --summarize benchmarks/results/cluster_sim-*.json
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import heapq
import itertools
import json
import math
import resource
import sys
import time
import tracemalloc
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (  # noqa: E402
    fake_measurement,
    machine_info,
    markdown_table,
    write_json,
)

RESULTS = Path(__file__).resolve().parent / "results"
# The measured rows the durations are fitted to (see `fit_durations`).
BENCH_ROWS = RESULTS / "efficiency-mid-vm-2026-11-26.json"
COMPILE_ROWS = sorted(RESULTS.glob("fidelity-mid-*-2026-11-26.json"))
ACTOR_START_S = 15.0  # an actor's process: start, import IREE and JAX (assumed, not fitted)
PROMPT_LENGTHS = (12, 16, 24, 32, 48, 64, 96, 128)  # 4 prefill buckets: 16, 32, 64, 128
VARIANTS = ("fp32", "int4", "int8", "bf16")


@dataclasses.dataclass(frozen=True)
class NodeKind:
    name: str
    num_cpus: int
    num_gpus: int


NODE_KINDS = {
    "cpu": NodeKind("cpu", 16, 0),
    "gpu1": NodeKind("gpu1", 16, 1),
    "gpu8": NodeKind("gpu8", 64, 8),
}


@dataclasses.dataclass(frozen=True)
class LogNormal:
    mu: float
    sigma: float
    num_rows: int

    @classmethod
    def fit(cls, values: Sequence[float]) -> LogNormal:
        logs = np.log(np.asarray(values, dtype=float))
        return cls(float(logs.mean()), float(logs.std(ddof=1)), len(logs))

    def draw(self, u: float) -> float:
        """The quantile at `u` in (0, 1): a draw that depends on `u` only."""
        z = math.sqrt(2.0) * _erfinv(2.0 * u - 1.0)
        return math.exp(self.mu + self.sigma * z)


def _erfinv(y: float) -> float:
    """Inverse error function (Giles' approximation, ~1e-7 relative; plenty here)."""
    w = -math.log((1.0 - y) * (1.0 + y))
    if w < 5.0:
        w -= 2.5
        p = 2.81022636e-08
        for c in (3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087,
                  -0.00125372503, -0.00417768164, 0.246640727, 1.50140941):  # fmt: skip
            p = c + p * w
    else:
        w = math.sqrt(w) - 3.0
        p = -0.000200214257
        for c in (0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773,
                  -0.0076224613, 0.00943887047, 1.00167406, 2.83297682):  # fmt: skip
            p = c + p * w
    return p * y


@dataclasses.dataclass(frozen=True)
class Durations:
    """Simulated durations, fitted to real rows: benchmark seconds of a point, compile
    seconds of a graph (per device), weight upload seconds (per device)."""

    bench: LogNormal
    compile: dict[str, LogNormal]
    upload_s: dict[str, float]
    sources: dict[str, str]


def fit_durations() -> Durations:
    """Benchmarks: `bench_s` of the 36 points of benchmarks/efficiency.py (mid model,
    CPU, 128 decode steps, cold and warm run); CUDA points are taken to last as long (no
    per-point CUDA rows exist). Compiles: `prefill_compile_s` and `decode_compile_s` of
    benchmarks/fidelity.py's reports (mid model; CPU and CUDA), duplicates dropped
    (the CUDA reports share one compile cache). Uploads: their `upload_s`."""
    efficiency = json.loads(BENCH_ROWS.read_text())
    bench = [p["bench_s"] for run in efficiency["runs"].values() for p in run["points"]]
    compiles: dict[str, set[float]] = defaultdict(set)
    uploads: dict[str, list[float]] = defaultdict(list)
    for path in COMPILE_ROWS:
        report = json.loads(path.read_text())
        device = report["settings"]["device"]
        for row in report["variants"].values():
            compiles[device] |= {row["decode_compile_s"], row["prefill_compile_s"]}
            uploads[device].append(row["upload_s"])
    return Durations(
        bench=LogNormal.fit(bench),
        compile={d: LogNormal.fit(sorted(v)) for d, v in compiles.items()},
        upload_s={d: float(np.mean(v)) for d, v in uploads.items()},
        sources={
            "bench_s": f"{BENCH_ROWS.name}: runs.*.points[].bench_s ({len(bench)} rows)",
            "compile_s": ", ".join(p.name for p in COMPILE_ROWS)
            + ": variants.*.{prefill,decode}_compile_s, "
            + ", ".join(f"{d} {len(v)} distinct rows" for d, v in sorted(compiles.items())),
            "upload_s": "the same fidelity reports: variants.*.upload_s (mean per device)",
        },
    )


def _unit(*parts: object) -> float:
    """A uniform draw in (0, 1) fixed by `parts`: the same point or graph lasts the same
    in every run with the same seed, whatever order the scheduler takes them in."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "little") + 0.5) / 2**64


# --- the grid ----------------------------------------------------------------------------


def make_points(num_points: int, num_variants: int, devices: Sequence[str]) -> list[Any]:
    """`num_points` real `Point`s: devices x variants x flag sets x 8 prompt lengths (the
    shape of a flag study), cut to `num_points`. Each flag set adds its own graphs: one
    decode and four prefill graphs per device and variant (per CPU kind for CPU code)."""
    from sweep.plan.config import load_config
    from sweep.plan.grid import expand

    if not 1 <= num_variants <= len(VARIANTS):
        raise ValueError(f"--variants must be in [1, {len(VARIANTS)}], got {num_variants}")
    cfg, _ = load_config(
        [
            "+grid=smoke",
            f"grid.devices=[{','.join(devices)}]",
            f"grid.variants=[{','.join(VARIANTS[:num_variants])}]",
            f"grid.prompt_lengths=[{','.join(map(str, PROMPT_LENGTHS))}]",
            "grid.max_seq=256",
            "~grid.flag_sets.O3",
        ]
    )
    base = expand(cfg, "sim")
    per_flag_set = len(base)
    num_flag_sets = -(-num_points // per_flag_set)
    points = []
    for i in range(num_flag_sets):
        flags = (f"--iree-opt-level=O{i % 4}", f"--sim-flag-set={i}")
        points += [dataclasses.replace(p, flag_set=f"f{i}", flags=flags) for p in base]
    return points[:num_points]


# --- the simulated cluster ---------------------------------------------------------------


class Handle:
    __slots__ = (
        "kind", "node_id", "done_at", "value", "error", "version", "task", "actor", "job", "span",
    )  # fmt: skip

    def __init__(self, kind: str, node_id: str, done_at: float, value: Any = None) -> None:
        self.kind, self.node_id, self.done_at, self.value = kind, node_id, done_at, value
        self.error: Exception | None = None
        self.version = 0
        self.task: Any = None
        self.actor: SimActor | None = None
        self.job: Any = None  # a compile's job
        self.span: list[float] | None = None  # a point's [start, end] on its device


@dataclasses.dataclass(eq=False)
class SimActor:
    device: Any
    node_id: str
    ready_at: float
    resident: Any = None
    variants: set = dataclasses.field(default_factory=set)
    num_uploads: int = 0


@dataclasses.dataclass
class Faults:
    node_loss: float = 0.0  # fraction of nodes lost during the run
    actor_crash: float = 0.0  # chance that a point crashes its actor midway
    compile_timeout: float = 0.0  # chance that a compile times out
    loss_window_s: float = 0.0  # nodes are lost at times spread over [0.05, 0.8] of this


class ClusterSim:
    """The scheduler's `Backend` on a simulated cluster: a virtual clock that jumps from
    event to event. It keeps what the report needs (compiles run, uploads, busy time,
    measurements per point) and the CPU time it spends itself, so that the driver's
    own time is the process time less the simulator's."""

    def __init__(
        self, nodes: list[Any], kinds: dict[str, NodeKind], durations: Durations, seed: int,
        faults: Faults, compile_timeout_s: float,
    ) -> None:  # fmt: skip
        from sweep.execute.scheduler import ActorDied

        self._actor_died = ActorDied
        self.nodes = {n.node_id: n for n in nodes}
        self.kinds = kinds
        self.durations, self.seed, self.faults = durations, seed, faults
        self.compile_timeout_s = compile_timeout_s
        self.clock = 0.0
        self.dead: set[str] = set()
        self.lost_at: dict[str, float] = {}
        self.sim_cpu_s = 0.0
        self.num_events = 0  # handles that finished: compiles, points, pings
        self.num_wakes = 0
        self.num_compiles_run = 0
        self.compile_jobs: Counter = Counter()
        self.actors: list[SimActor] = []
        self.measured: Counter = Counter()  # point key -> measurements that finished
        # node -> [start, end] of each point run there (its device busy), GPU or CPU
        self.spans: dict[str, list[list[float]]] = defaultdict(list)
        self.gpu_spans: dict[str, list[list[float]]] = defaultdict(list)
        self.compile_busy_s: dict[str, float] = defaultdict(float)
        self.placed_on_dead = 0  # calls the scheduler sent to a node already lost (they fail)
        self.keys: dict[tuple[str, Any, tuple[str, ...]], str] = {}  # see task_keys
        self._heap: list[tuple[float, int, Handle, int]] = []
        self._seq = itertools.count()
        self._live: dict[str, set[Handle]] = defaultdict(set)  # node -> handles running there
        self._vmfb_nodes: dict[int, set[str]] = {}  # id(compile handle) -> nodes holding it
        self._crashes: Counter = Counter()
        self._schedule_losses()

    def _schedule_losses(self) -> None:
        rng = np.random.default_rng(self.seed)
        num_lost = round(self.faults.node_loss * len(self.nodes))
        if not num_lost:
            return
        victims = rng.choice(sorted(self.nodes), size=num_lost, replace=False)
        window = self.faults.loss_window_s
        for node_id in victims:
            at = float(rng.uniform(0.05, 0.8)) * window
            self._push(Handle("loss", str(node_id), at))

    # --- the Backend protocol ----------------------------------------------------------

    def now(self) -> float:
        return self.clock

    def submit_compile(self, job: Any, node: Any) -> Handle:
        t0 = time.process_time()
        from workers.compile.iree import CompileResult

        self.placed_on_dead += node.node_id in self.dead
        self.num_compiles_run += 1
        self.compile_jobs[job] += 1
        if node.node_id in self.dead:
            handle = Handle("compile", node.node_id, self.clock)
            handle.job = job
            handle.error = RuntimeError("compile task's node has left")
            self._vmfb_nodes[id(handle)] = set()
            self._start(handle)
            self.sim_cpu_s += time.process_time() - t0
            return handle
        u = _unit(self.seed, "compile", job)
        seconds = self.durations.compile[job.device.name].draw(u)
        if _unit(self.seed, "timeout", job, self.compile_jobs[job]) < self.faults.compile_timeout:
            seconds = self.compile_timeout_s
            result = CompileResult.failed("compile_timeout", "iree-compile timed out (simulated)")
        else:
            result = CompileResult(
                ok=True, key=f"k{self.num_compiles_run}", vmfb=None, compile_s=seconds,
                num_dispatches=100, cache_hit=False, command="iree-compile (simulated)",
                error_class=None, error_message=None, returncode=0, vmfb_bytes=1000,
            )  # fmt: skip
        self.compile_busy_s[node.node_id] += seconds
        handle = Handle("compile", node.node_id, self.clock + seconds, result)
        handle.job = job
        self._vmfb_nodes[id(handle)] = {node.node_id}
        self._start(handle)
        self.sim_cpu_s += time.process_time() - t0
        return handle

    def start_actor(self, device: Any, node: Any) -> SimActor:
        actor = SimActor(device, node.node_id, self.clock + ACTOR_START_S)
        self.actors.append(actor)
        return actor

    def ping(self, actor: SimActor) -> Handle:
        t0 = time.process_time()
        from sweep.execute.scheduler import ActorGone

        handle = Handle("ping", actor.node_id, max(self.clock, actor.ready_at), "ready")
        if actor.node_id in self.dead:
            handle.done_at, handle.error = self.clock, ActorGone("node left the cluster")
        self._start(handle)
        self.sim_cpu_s += time.process_time() - t0
        return handle

    def submit_point(
        self, actor: SimActor, task: Any, compiles: Sequence[Handle], share: Any = None
    ) -> Handle:
        t0 = time.process_time()
        from sweep.execute.scheduler import GraphLost

        node_id = actor.node_id
        self.placed_on_dead += node_id in self.dead
        flags = compiles[0].job.flags if compiles else ()
        key = self.keys[(actor.device.name, task, flags)]
        handle = Handle("point", node_id, self.clock)
        handle.task, handle.actor = task, actor
        if node_id in self.dead:  # Ray fails a call to an actor whose node has left
            handle.error = self._actor_died("node left the cluster")
            self._start(handle)
            self.sim_cpu_s += time.process_time() - t0
            return handle
        if any(not (self._vmfb_nodes[id(c)] - self.dead) for c in compiles):
            handle.done_at, handle.error = self.clock + 0.5, GraphLost("vmfb lost with its node")
            self._start(handle)
            self.sim_cpu_s += time.process_time() - t0
            return handle
        for c in compiles:
            self._vmfb_nodes[id(c)].add(node_id)
        seconds = self.durations.bench.draw(_unit(self.seed, "bench", key))
        upload_s = 0.0
        weights = (task.variant, task.runtime)
        if actor.resident != weights:
            actor.resident, upload_s = weights, self.durations.upload_s[actor.device.name]
            actor.num_uploads += 1
            actor.variants.add(weights)
        self._crashes[key] += 1
        crash = _unit(self.seed, "crash", key, self._crashes[key]) < self.faults.actor_crash
        if crash:
            seconds *= 0.5
            handle.error = self._actor_died("actor crashed (simulated)")
            actor.resident, actor.ready_at = None, self.clock + seconds + ACTOR_START_S
        else:
            handle.value = (key, upload_s, seconds)
        handle.done_at = self.clock + upload_s + seconds
        handle.span = [self.clock, handle.done_at]
        self.spans[node_id].append(handle.span)
        if actor.device.needs_gpu:
            self.gpu_spans[node_id].append(handle.span)
        self._start(handle)
        self.sim_cpu_s += time.process_time() - t0
        return handle

    def wait(self, handles: Sequence[Handle], timeout_s: float) -> list[Handle]:
        """Everything due at the next event's instant, or nothing within `timeout_s`.
        `handles` is not looked at: the scheduler passes all it waits on (building a set
        of them would cost the simulator O(in flight) per event), and it ignores a
        handle it no longer waits on (a timed-out point's)."""
        t0 = time.process_time()
        self.num_wakes += 1
        deadline = self.clock + timeout_s
        done: list[Handle] = []
        while self._heap and not done and self._heap[0][0] <= deadline:
            self.clock = max(self.clock, self._heap[0][0])
            while self._heap and self._heap[0][0] <= self.clock:  # all due at this instant
                _, _, handle, version = heapq.heappop(self._heap)
                if version != handle.version:
                    continue  # superseded: its node was lost
                if handle.kind == "loss":
                    self._lose(handle.node_id)
                    continue
                self._live[handle.node_id].discard(handle)
                done.append(handle)
        if not done:
            self.clock = max(self.clock, deadline)
        self.num_events += len(done)
        self.sim_cpu_s += time.process_time() - t0
        return done

    def result(self, handle: Handle) -> Any:
        if handle.error is not None:
            raise handle.error
        if handle.kind == "point":
            return self._measurement(handle)
        return handle.value

    def kill(self, actor: SimActor, *, restart: bool) -> None:
        actor.resident = None
        actor.ready_at = self.clock + ACTOR_START_S

    def node_alive(self, node_id: str) -> bool:
        return node_id not in self.dead

    # --- internals ---------------------------------------------------------------------

    def _measurement(self, handle: Handle) -> Any:
        t0 = time.process_time()
        key, upload_s, seconds = handle.value
        self.measured[key] += 1
        task = handle.task
        m = fake_measurement(
            (1, 2, 3),
            decode_samples_ms=(2.0,) * 4,
            prompt_ids=(1,) * 4,
            bench_s=seconds,
            upload_s=upload_s,
            hostname=handle.node_id,
            node_id=handle.node_id,
            device_name=task.variant.name,
            timed_started_at=handle.span[0] + upload_s,  # after the upload
            timed_finished_at=handle.span[1],
        )
        self.sim_cpu_s += time.process_time() - t0
        return m

    def _start(self, handle: Handle) -> None:
        if handle.node_id not in self.dead:
            self._live[handle.node_id].add(handle)
        self._push(handle)

    def _push(self, handle: Handle) -> None:
        heapq.heappush(self._heap, (handle.done_at, next(self._seq), handle, handle.version))

    def _lose(self, node_id: str) -> None:
        """The node leaves: whatever runs there fails now."""
        from sweep.execute.scheduler import ActorDied

        self.dead.add(node_id)
        self.lost_at[node_id] = self.clock
        for handle in self._live.pop(node_id, set()):
            handle.version += 1
            if handle.kind == "point":
                handle.error = ActorDied("node left the cluster")
                handle.span[1] = self.clock  # it ran until now
            elif handle.kind == "compile":
                handle.error = RuntimeError("compile task lost with its node")
            else:
                handle.error = ActorDied("node left the cluster")
            self._push(handle)


def task_keys(points: list[Any]) -> dict[tuple[str, Any, tuple[str, ...]], str]:
    """(device name, `BenchTask`, flags) -> point key: what the backend sees of a point
    (its actor's device, its task and its compiles' flags) back to the point."""
    keys = {(p.device.name, p.task(), p.flags if p.compiled_by_iree else ()): p.key for p in points}
    assert len(keys) == len(points), "two points look the same to the backend"
    return keys


# --- one simulated sweep -----------------------------------------------------------------


def make_nodes(num_nodes: int, mix: dict[str, float], num_cpu_kinds: int) -> list[Any]:
    from sweep.execute.scheduler import NodeInfo
    from workers.core.devices import CPU_BENCH_RESOURCE

    counts = {k: int(round(f * num_nodes)) for k, f in mix.items()}
    first = next(iter(counts))
    counts[first] += num_nodes - sum(counts.values())
    nodes = []
    for kind_name, count in counts.items():
        kind = NODE_KINDS[kind_name]
        for _ in range(count):
            i = len(nodes)
            resources = {"CPU": float(kind.num_cpus), CPU_BENCH_RESOURCE: 1.0}
            if kind.num_gpus:
                resources["GPU"] = float(kind.num_gpus)
            nodes.append(
                NodeInfo(f"n{i:05d}", f"{kind_name}-{i}", resources, f"cpu{i % num_cpu_kinds}")
            )
    return nodes


def lower_bound(points: list[Any], nodes: list[Any], durations: Durations, seed: int) -> dict:
    """What no scheduler can beat: device time over the measurement slots, or the longest
    chain of a compile then a benchmark, each after the actors' start (no point is
    measured before its actor is up; all start at once). Slots as the hardware offers
    them: CUDA work on every GPU at once, a CPU point on a whole node, so the nodes must
    give at least the CPU time plus the CUDA time over the most GPUs a node has."""
    from workers.model.export import TIMED_KINDS

    total: dict[str, float] = defaultdict(float)
    chain = 0.0
    for p in points:
        bench = durations.bench.draw(_unit(seed, "bench", p.key))
        total[p.device.name] += bench
        compile_s = max(
            durations.compile[p.device.name].draw(_unit(seed, "compile", job))
            for job in _jobs(p, TIMED_KINDS)
        ) if p.compiled_by_iree else 0.0  # fmt: skip
        chain = max(chain, max(compile_s, ACTOR_START_S) + bench)
    gpus = [int(n.resources.get("GPU", 0)) for n in nodes]
    cuda = total.get("cuda", 0.0)
    work = (sum(total.values()) - cuda + cuda / max(max(gpus), 1)) / len(nodes)
    if cuda:
        work = max(work, cuda / max(sum(gpus), 1e-9))
    return {
        "lower_bound_s": max(ACTOR_START_S + work, chain),
        "device_time_s": sum(total.values()),
        "device_time_over_slots_s": work,
        "longest_chain_s": chain,
        "num_gpus": sum(gpus),
    }


def _jobs(point: Any, kinds: Sequence[str]) -> tuple:
    """The compile jobs of a point for its first CPU kind (the bound needs one chain)."""
    from sweep.execute.scheduler import CompileJob
    from workers.compile.iree import targets_host
    from workers.core.config import preset

    group = "cpu0" if targets_host((*point.device.target_flags, *point.flags)) else None
    cfg = preset("tiny")
    return tuple(CompileJob(point.graph(cfg, k), point.device, point.flags, group) for k in kinds)


def simulate(args: argparse.Namespace, durations: Durations, trace_memory: bool) -> dict:
    from sweep.execute.scheduler import Scheduler
    from sweep.store.rows import RunContext
    from workers.core.config import preset

    cfg_defaults = _defaults()
    mix = parse_mix(args.mix)
    nodes = make_nodes(args.nodes, mix, args.cpu_kinds)
    points = make_points(args.points, args.variants, args.devices.split(","))
    bound = lower_bound(points, nodes, durations, args.seed)
    faults = Faults(args.node_loss, args.actor_crash, args.compile_timeout,
                    loss_window_s=bound["lower_bound_s"])  # fmt: skip
    sim = ClusterSim(
        nodes, NODE_KINDS, durations, args.seed, faults, cfg_defaults["compile_timeout_s"]
    )
    sim.keys = task_keys(points)
    rows: Counter = Counter()
    statuses: Counter = Counter()
    concurrent: Counter = Counter()  # num_concurrent of the ok rows
    why_lost: Counter = Counter()  # worker_lost rows by message

    def sink(new_rows: list[dict], dispatches: list[dict], profiles: dict) -> None:
        for row in new_rows:
            rows[row["point_key"]] += 1
            statuses[row["status"]] += 1
            if row["status"] == "ok":
                concurrent[row.get("num_concurrent")] += 1
            if row["status"] == "worker_lost":
                why_lost[str(row["error_message"])[:200]] += 1

    scheduler = Scheduler(
        sim, nodes, preset("tiny"), RunContext("sim", "cluster_sim", {}), sink,
        max_retries=cfg_defaults["max_retries"], point_timeout_s=cfg_defaults["point_timeout_s"],
        gpu_concurrency=args.gpu_concurrency,
    )  # fmt: skip
    gc.collect()
    if trace_memory:
        tracemalloc.start()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0, w0 = time.process_time(), time.perf_counter()
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.runcall(scheduler.run, points)
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    else:
        scheduler.run(points)
    cpu_s, wall_s = time.process_time() - t0, time.perf_counter() - w0
    rss_growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    peak_mb = None
    if trace_memory:
        peak_mb = (tracemalloc.get_traced_memory()[1] - base) / 1e6
        tracemalloc.stop()
    driver_cpu_s = cpu_s - sim.sim_cpu_s
    keys = {p.key for p in points}
    lost_nodes = set(sim.dead)
    surviving = [n for n in nodes if n.node_id not in lost_nodes]
    surviving_bound = bound["lower_bound_s"]
    if lost_nodes:
        surviving_bound = lower_bound(points, surviving, durations, args.seed)["lower_bound_s"]
    makespan = sim.clock
    num_devices = sum(max(1, int(n.resources.get("GPU", 0))) for n in nodes)
    device_s = sum(e - s for spans in sim.spans.values() for s, e in spans)
    gpu_s = sum(e - s for spans in sim.gpu_spans.values() for s, e in spans)
    node_s = sum(_union_s(spans) for spans in sim.spans.values())
    uploads = [a.num_uploads for a in sim.actors]
    extra_uploads = sum(a.num_uploads - len(a.variants) for a in sim.actors)
    return {
        "nodes": args.nodes,
        "mix": mix,
        "points": len(points),
        "variants": args.variants,
        "devices": args.devices,
        "seed": args.seed,
        "faults": dataclasses.asdict(faults),
        "nodes_lost": len(lost_nodes),
        "makespan_s": makespan,
        **bound,
        "makespan_over_bound": makespan / bound["lower_bound_s"],
        "surviving_lower_bound_s": surviving_bound,
        "makespan_over_surviving_bound": makespan / surviving_bound,
        "lost": len(keys - set(rows)) + statuses.get("worker_lost", 0),
        "duplicates": sum(n - 1 for n in rows.values() if n > 1),
        "run_twice": sum(n - 1 for n in sim.measured.values() if n > 1),
        "statuses": dict(statuses),
        "worker_lost_messages": dict(why_lost),
        "gpu_concurrency": args.gpu_concurrency,
        # the share of the run each node measured anything, of each device slot (a node's
        # CPU or each of its GPUs) measured, and of each GPU measured (null without GPUs)
        "node_utilisation": node_s / (len(nodes) * makespan),
        "device_utilisation": device_s / (num_devices * makespan),
        "gpu_utilisation": gpu_s / (bound["num_gpus"] * makespan) if bound["num_gpus"] else None,
        "num_devices": num_devices,
        # ok rows by how many other points were timed on their node during them
        "num_concurrent": {str(k): v for k, v in sorted(concurrent.items(), key=str)},
        "driver_cpu_s": driver_cpu_s,
        "simulator_cpu_s": sim.sim_cpu_s,
        "wall_s": wall_s,
        "scheduling_events": sim.num_events,
        "driver_wakes": sim.num_wakes,
        "driver_cpu_ms_per_event": 1e3 * driver_cpu_s / max(sim.num_events, 1),
        "driver_peak_mb": peak_mb,  # tracemalloc, with --memory
        "peak_rss_growth_mb": rss_growth_mb,  # the process's peak RSS growth during the run
        "compiles_run": sim.num_compiles_run,
        "unique_graphs": len(sim.compile_jobs),
        "compile_node_s": sum(sim.compile_busy_s.values()),
        "actors": len(sim.actors),
        "uploads": sum(uploads),
        "unique_variants_per_actor": sum(len(a.variants) for a in sim.actors),
        "uploads_beyond_one_per_variant": extra_uploads,
        "placed_on_dead_nodes": sim.placed_on_dead,
    }


def _union_s(spans: list[list[float]]) -> float:
    """Seconds covered by at least one of `spans`."""
    covered, reach = 0.0, -math.inf
    for start, end in sorted(spans):
        if end > reach:
            covered += end - max(start, reach)
            reach = end
    return covered


def _defaults() -> dict[str, Any]:
    from sweep.plan.config import load_config

    bench = load_config([])[0].bench
    return {
        "compile_timeout_s": bench.compile_timeout_s,
        "point_timeout_s": bench.point_timeout_s,
        "max_retries": bench.max_retries,
    }


def parse_mix(text: str) -> dict[str, float]:
    """`cpu=0.25,gpu1=0.5,gpu8=0.25` -> fractions of the nodes of each kind."""
    mix = {}
    for part in text.split(","):
        name, _, frac = part.partition("=")
        if name not in NODE_KINDS:
            raise ValueError(f"--mix: unknown node kind {name!r}; kinds: {', '.join(NODE_KINDS)}")
        mix[name] = float(frac)
    if abs(sum(mix.values()) - 1.0) > 1e-6:
        raise ValueError(f"--mix: fractions must add up to 1, got {sum(mix.values())}")
    return mix


COLUMNS = (
    "nodes", "points", "GPUs at once", "lost nodes", "makespan s", "bound s", "makespan / bound",
    "node util", "GPU util", "driver ms/event", "driver CPU s", "MB",
    "compiles / graphs", "uploads / variants", "lost", "dup", "run twice",
)  # fmt: skip


def table_row(r: dict) -> list[str]:
    peak = f"{r['peak_rss_growth_mb']:.0f}"
    if r["driver_peak_mb"] is not None:
        peak = f"{r['driver_peak_mb']:.0f} ({peak})"
    ratio = r["makespan_over_bound"] if not r["nodes_lost"] else r["makespan_over_surviving_bound"]
    gpu_util = r.get("gpu_utilisation", r["device_utilisation"])  # older reports: device
    at_once = {None: "1 (before)", 0: "all", 1: "1"}.get(r.get("gpu_concurrency"))
    return [
        str(r["nodes"]), str(r["points"]), at_once or str(r["gpu_concurrency"]),
        str(r["nodes_lost"]), f"{r['makespan_s']:.0f}",
        f"{r['lower_bound_s'] if not r['nodes_lost'] else r['surviving_lower_bound_s']:.0f}",
        f"{ratio:.3f}", f"{r['node_utilisation']:.2f}",
        "-" if gpu_util is None else f"{gpu_util:.2f}",
        f"{r['driver_cpu_ms_per_event']:.3f}", f"{r['driver_cpu_s']:.1f}", peak,
        f"{r['compiles_run']} / {r['unique_graphs']}",
        f"{r['uploads']} / {r['unique_variants_per_actor']}",
        str(r["lost"]), str(r["duplicates"]), str(r["run_twice"]),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--variants", type=int, default=4, help=f"1 to {len(VARIANTS)}")
    parser.add_argument("--devices", default="cpu,cuda", help="cpu, cuda or cpu,cuda")
    parser.add_argument("--mix", default="cpu=0.25,gpu1=0.5,gpu8=0.25",
                        help="node kinds and their shares: " + ", ".join(
                            f"{k.name} ({k.num_cpus} CPUs, {k.num_gpus} GPUs)"
                            for k in NODE_KINDS.values()))  # fmt: skip
    parser.add_argument("--cpu-kinds", type=int, default=1, help="CPU models among the nodes")
    parser.add_argument("--node-loss", type=float, default=0.0, help="fraction of nodes lost")
    parser.add_argument("--actor-crash", type=float, default=0.0, help="chance per point")
    parser.add_argument("--compile-timeout", type=float, default=0.0, help="chance per compile")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gpu-concurrency", type=int, default=0,
                        help="the sweep's bench.gpu_concurrency: 0 one per GPU, 1 one point "
                        "per node (before GPU points shared a host), N at most N")  # fmt: skip
    parser.add_argument("--memory", action="store_true", help="again, under tracemalloc")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the driver")
    parser.add_argument("--out", type=Path, default=None, help="JSON report path")
    parser.add_argument("--summarize", type=Path, nargs="+", default=None,
                        help="print one table of these reports and run nothing")  # fmt: skip
    args = parser.parse_args(argv)
    if args.summarize:
        reports = [json.loads(path.read_text()) for path in args.summarize]
        reports.sort(key=lambda r: (r["faults"]["node_loss"], r["nodes"], r["points"]))
        print(markdown_table(COLUMNS, [table_row(r) for r in reports]))
        return 0
    for name in ("node_loss", "actor_crash", "compile_timeout"):
        if not 0.0 <= getattr(args, name) < 1.0:
            parser.error(f"--{name.replace('_', '-')} must be in [0, 1)")
    if args.nodes < 1 or args.points < 1:
        parser.error("--nodes and --points must be at least 1")
    if args.gpu_concurrency < 0:
        parser.error("--gpu-concurrency must be at least 0")
    try:
        parse_mix(args.mix)
        durations = fit_durations()
        report = simulate(args, durations, trace_memory=False)
        if args.memory and not args.profile:  # a second, identical run under tracemalloc
            report["driver_peak_mb"] = simulate(args, durations, True)["driver_peak_mb"]
    except ValueError as e:
        print(f"cluster_sim: {e}", file=sys.stderr)
        return 2
    report["durations"] = {
        "bench": dataclasses.asdict(durations.bench),
        "compile": {d: dataclasses.asdict(v) for d, v in durations.compile.items()},
        "upload_s": durations.upload_s,
        "actor_start_s": ACTOR_START_S,
        "fitted_to": durations.sources,
    }
    report["machine"] = machine_info()
    print(markdown_table(COLUMNS, [table_row(report)]))
    if args.out is not None:
        write_json(args.out, report)
        print(f"wrote {args.out}")
    ok = report["lost"] == 0 and report["duplicates"] == 0 and report["run_twice"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
