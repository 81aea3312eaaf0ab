"""Ray at the edges: start or join a cluster, take stock of its nodes, and the backend the
scheduler drives.

Everything that names Ray lives here, so `sweep.execute.scheduler` reads as plain logic.
Compiles are Ray tasks (one CPU each) pinned to the node the scheduler chose;
benchmarks run on actors that ask for their device's resource: `num_gpus` for a
GPU, and for the CPU a custom resource that each node advertises once
(`sweep_cpu_bench: 1`), so one CPU benchmark actor lives per node. An actor that
asks for a resource no node has would stay pending forever, so the scheduler checks
feasibility against the nodes before anything is submitted. `RayBackend` maps
Ray's exceptions onto the scheduler's own (`ActorDied`, `GraphLost`, ...).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sweep.execute.scheduler import (
    ActorDied,
    ActorGone,
    ActorStarting,
    CompileJob,
    GraphLost,
    NodeInfo,
    PointError,
)
from sweep.plan.config import ConfigError
from workers.core.devices import CPU_BENCH_RESOURCE, DeviceSpec
from workers.core.kinds import Status
from workers.core.locks import HostUse, host_lock
from workers.core.threads import CoreShare
from workers.records import NotRunnable

# Benchmark actors start with transparent huge pages for malloc (IREE's own buffers:
# KV caches, in-graph dequantized weights) and numpy (the resident weights): 10-30%
# on CPU decode (fewer TLB misses over GBs of weights). With the kernel in "madvise"
# mode a buffer gets them only if its range was madvised: numpy does that for its own
# arrays, IREE's buffers inherit it only by chance when glibc reuses that memory, and a
# fresh iree-benchmark-module gets none. The glibc tunable madvises every large malloc,
# so the actor and IREE's tools get the same pages (see benchmarks/fidelity.py).
BENCH_ENV = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1", "NUMPY_MADVISE_HUGEPAGE": "1"}

# XLA's CPU scheduler by default runs independent ops early so they can overlap; for
# a quantized variant that means dequantizing every weight before the first matmul,
# holding the whole model in fp32 at once (3.9 GB more for the 1B model in int4). The
# XLA reference and the XLA baseline run in the actor, so they get the scheduler that
# minimizes memory: each weight is dequantized just before its matmul. Same tokens;
# the mid model's int4 XLA decode also ran 2.5x faster with it (72 vs 177 ms/token).
XLA_CPU_FLAGS = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def bench_runtime_env() -> dict[str, Any]:
    from workers.tasks import FAULT_ENV

    xla_flags = " ".join(f for f in (os.environ.get("XLA_FLAGS", ""), XLA_CPU_FLAGS) if f)
    env = {"PYTHONPATH": _project_root(), **BENCH_ENV, "XLA_FLAGS": xla_flags}
    # the tests' forced llama.cpp crash (workers.runtimes.llamacpp_process), where the driver has it
    env.update({k: os.environ[k] for k in (FAULT_ENV,) if k in os.environ})
    return {"env_vars": env}


# Ray starts its worker processes at niceness 15 (its `worker_niceness`), so a benchmark
# actor would yield to nearly anything else on its host, even a build at `nice -n 19`;
# a niced process may not lower its niceness again without privileges. A local Ray
# starts its workers at 0; a cluster's `ray start` needs RAY_worker_niceness=0 (docs/deploy.md).
# The actor then asks for bench.priority itself (workers.core.host.set_niceness).
WORKER_PRIORITY = {"worker_niceness": 0}
WORKER_PRIORITY_ENV = "RAY_worker_niceness"  # the same for `ray start` (docs/deploy.md)

AUTH_ENV = "RAY_AUTH_MODE"
AUTH_HELP = """\
ray.address={address}: the Ray cluster at {gcs} refused this process's authentication
({reason}).
Ray 2.60 clusters started with `ray start --head` use token auth whenever a token is
found (e.g. the ~/.ray/auth_token a local Ray wrote), and then every process needs
the same mode and token: export RAY_AUTH_MODE=token and the cluster's token
(RAY_AUTH_TOKEN=..., RAY_AUTH_TOKEN_PATH=FILE, or the same ~/.ray/auth_token) for every
`ray start` and for the sweep. See docs/deploy.md, "On a cluster"."""


def connect(address: str, num_cpus: int | None) -> Callable[[], None]:
    """Joins `address` or starts a local Ray; returns what undoes it.

    A local Ray advertises the CPU benchmark resource on its one node; on a cluster
    each `ray start` must pass `--resources='{"sweep_cpu_bench": 1}'` (see docs/deploy.md). A
    cluster that cannot be joined (nothing listening, or refused authentication) is
    a `ConfigError` within seconds, naming what to do, instead of 20 s of retries.
    """
    import ray

    if ray.is_initialized():
        return lambda: None
    if address:
        _check_cluster(address)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    auth_mode = os.environ.get(AUTH_ENV)
    try:
        _init(address, num_cpus)
    finally:
        _restore_handlers(saved)

    def disconnect() -> None:
        ray.shutdown()
        # A local ray.init turns token auth on in this process's environment; put it
        # back, so what this process starts next sees the mode it had.
        if auth_mode is None:
            os.environ.pop(AUTH_ENV, None)
        else:
            os.environ[AUTH_ENV] = auth_mode

    return disconnect


def _check_cluster(address: str) -> None:
    """Fails fast where `ray.init` would retry for 20 s and end in a traceback."""
    from ray._private import services
    from ray.exceptions import AuthenticationError

    if address == "auto" and os.environ.get("RAY_ADDRESS"):
        address = os.environ["RAY_ADDRESS"]  # as ray.init does
    if address == "auto":
        with contextlib.suppress(Exception):  # ray.init enables token auth here when it can
            from ray._private.authentication.authentication_token_setup import (
                maybe_enable_token_auth_if_token_available,
            )

            maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    try:
        gcs = services.canonicalize_bootstrap_address_or_die(address)
        host, port = gcs.rsplit(":", 1)
        socket.create_connection((host, int(port)), timeout=3).close()
    except (ConnectionError, OSError, ValueError) as e:
        raise ConfigError(
            f"ray.address={address}: no Ray cluster answers there ({e}); start one "
            "(docs/deploy.md, 'On a cluster') or leave ray.address empty to start a local Ray"
        ) from None
    try:
        from ray._raylet import GcsClient

        GcsClient(address=gcs).internal_kv_get(b"sweep-auth-check", None)
    except AuthenticationError as e:
        reason = str(e).splitlines()[0]
        raise ConfigError(AUTH_HELP.format(address=address, gcs=gcs, reason=reason)) from None


def _restore_handlers(saved: dict[int, Any]) -> None:
    """Ray's core installs its own SIGTERM handler (log and exit 1) in `ray.init`; put
    back the program's, so a killed sweep still stops cleanly and keeps its rows."""
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set handlers, and only it receives signals
    for sig, handler in saved.items():
        if handler is not None:
            signal.signal(sig, handler)


def _init(address: str, num_cpus: int | None) -> None:
    import ray

    env = {"env_vars": {"PYTHONPATH": _project_root()}}
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=False)
    else:
        # "local": always a fresh local Ray, never one a stale `ray start` left behind.
        ray.init(
            address="local",
            num_cpus=num_cpus,
            resources={CPU_BENCH_RESOURCE: 1},
            runtime_env=env,
            include_dashboard=False,
            log_to_driver=False,
            # a copy: Ray writes its session's spilling directory into the dict it gets,
            # which a later ray.init in this process would take over
            _system_config=dict(WORKER_PRIORITY),
        )


def _project_root() -> str:
    root = str(Path(__file__).resolve().parents[2])
    existing = os.environ.get("PYTHONPATH")
    return f"{root}{os.pathsep}{existing}" if existing else root


def alive_nodes() -> list[NodeInfo]:
    """Every alive node, with its CPU identity (asked on the node itself)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    node_facts = ray.remote(num_cpus=0)(_node_facts)
    refs = [
        node_facts.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote()
        for n in nodes
    ]
    infos = []
    for node, ref in zip(nodes, refs, strict=True):
        try:
            hostname, cpu_id = ray.get(ref, timeout=120)
        except (ray.exceptions.RayError, TimeoutError):
            continue  # listed as alive but gone (e.g. just removed): not a node to use
        infos.append(NodeInfo(node["NodeID"], hostname, dict(node.get("Resources", {})), cpu_id))
    return infos


def _node_facts() -> tuple[str, str]:
    import socket

    from workers.compile.iree import host_cpu_id

    return socket.gethostname(), host_cpu_id()


def compile_graph_fn(
    job: CompileJob,
    cache_dir: str,
    timeout_s: float,
    mode: str = "auto",
    max_memory_gb: float | None = None,
) -> tuple[Any, bytes | None]:
    """One graph from the cache, or exported and compiled: (CompileResult without its
    vmfb, the vmfb), two Ray objects, so the driver never fetches the vmfb and the
    actors fetch only it."""
    from pathlib import Path

    from workers.compile.iree import compile_graph

    with host_lock(HostUse.COMPILE):  # never beside a timed point of another sweep
        started_at = time.time()
        result = compile_graph(
            job.graph,
            job.device,
            job.flags,
            cache_dir=Path(cache_dir),
            timeout_s=timeout_s,
            max_memory_gb=max_memory_gb,
            mode=mode,
        )
        result = dataclasses.replace(result, started_at=started_at, finished_at=time.time())
    return result.without_vmfb(), result.vmfb


class BenchActorImpl:
    """The Ray actor around `PointWorker`: adds where it runs, keeps the rest plain."""

    def __init__(self, device: DeviceSpec, source: Any, cache_dir: str, priority: int = 0) -> None:
        import ray

        from workers.point import PointWorker

        self.worker = PointWorker(device, source, cache_dir, priority)
        self.node_id = ray.get_runtime_context().get_node_id()
        gpu_ids = ray.get_gpu_ids() if device.needs_gpu else []
        self.gpu_index = int(gpu_ids[0]) if gpu_ids else 0  # its device lock (workers.core.locks)

    def where(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "pid": os.getpid(), **self.worker.info()}

    def run(self, task: Any, *vmfbs: bytes | None, share: CoreShare | None = None) -> Any:
        """`vmfbs`: prefill, decode, and the score graph's when the point has a text; or
        the one module of them all when the weights are parameters. `share`: the point is
        a GPU point timed beside others on this host, on these cores; None: it owns the
        host (see `sweep.execute.scheduler`)."""
        # the host's measurement lock, whichever sweep runs the point
        use = HostUse.HOST if share is None else HostUse.DEVICE
        with host_lock(use, self.gpu_index):
            measurement = self.worker.run(task, *vmfbs, share=share)
        return dataclasses.replace(measurement, node_id=self.node_id)


def remote_functions() -> tuple[Any, Any]:
    """(compile task, benchmark actor class), made remote here so importing stays cheap.

    Compile tasks may be retried: that is what lets Ray rebuild a vmfb lost with its
    node (lineage reconstruction); a compile failure is a result, not an exception.
    """
    import ray

    compile_task = ray.remote(num_cpus=1, num_returns=2, max_retries=2)(compile_graph_fn)
    actor = ray.remote(max_restarts=-1, max_task_retries=0)(BenchActorImpl)
    return compile_task, actor


def actor_options(device: DeviceSpec, node: NodeInfo) -> dict[str, Any]:
    """The `.options(...)` that place a benchmark actor for `device` on `node`."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    amount = device.ray_resource_amount
    resources = (
        {"num_gpus": amount} if device.needs_gpu else {"resources": {device.ray_resource: amount}}
    )
    return {
        "num_cpus": 0,
        "runtime_env": bench_runtime_env(),
        "scheduling_strategy": NodeAffinitySchedulingStrategy(node.node_id, soft=False),
        **resources,
    }


class RayBackend:
    """The scheduler's `Backend` on a Ray cluster (see `sweep.execute.scheduler.Backend`)."""

    def __init__(
        self,
        source: Any,
        cache_dir: str,
        compile_timeout_s: float,
        compile_mode: str = "auto",
        priority: int = 0,
        compile_max_memory_gb: float | None = None,
    ) -> None:
        self.source, self.cache_dir, self.compile_timeout_s = source, cache_dir, compile_timeout_s
        self.compile_mode, self.priority = compile_mode, priority
        self.compile_max_memory_gb = compile_max_memory_gb
        self.compile_task, self.actor_class = remote_functions()
        self._vmfbs: dict[Any, Any] = {}  # a compile's metadata ref -> its vmfb ref

    def now(self) -> float:
        return time.monotonic()

    def submit_compile(self, job: CompileJob, node: NodeInfo) -> Any:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        on_node = NodeAffinitySchedulingStrategy(node.node_id, soft=False)
        meta, vmfb = self.compile_task.options(scheduling_strategy=on_node).remote(
            job,
            self.cache_dir,
            self.compile_timeout_s,
            self.compile_mode,
            self.compile_max_memory_gb,
        )
        self._vmfbs[meta] = vmfb
        return meta

    def start_actor(self, device: DeviceSpec, node: NodeInfo) -> Any:
        options = actor_options(device, node)
        return self.actor_class.options(**options).remote(
            device, self.source, self.cache_dir, self.priority
        )

    def ping(self, actor: Any) -> Any:
        return actor.where.remote()

    def submit_point(
        self, actor: Any, task: Any, compiles: Any, share: CoreShare | None = None
    ) -> Any:
        return actor.run.remote(task, *(self._vmfbs[c] for c in compiles), share=share)

    def wait(self, handles: Any, timeout_s: float) -> list[Any]:
        import ray

        done, _ = ray.wait(list(handles), num_returns=1, timeout=timeout_s)
        return done

    def result(self, handle: Any) -> Any:
        import ray
        from ray import exceptions as rex

        try:
            return ray.get(handle)
        except rex.ActorUnavailableError as e:
            time.sleep(0.2)  # still restarting: ask again shortly
            raise ActorStarting(str(e)) from None
        except rex.ObjectLostError as e:  # includes reconstruction failures
            raise GraphLost(str(e)) from None
        except (rex.RayActorError, rex.WorkerCrashedError) as e:
            raise ActorDied(str(e)) from None
        except rex.OutOfMemoryError as e:
            raise PointError(Status.OOM, "OutOfMemoryError", str(e)) from None
        except rex.RayTaskError as e:
            cause = getattr(e, "cause", None)
            # A vmfb argument lost with its node: fetching it failed, or rebuilding it
            # did (its compile was pinned to the node that is gone).
            if isinstance(cause, rex.ObjectLostError | rex.TaskUnschedulableError):
                raise GraphLost(str(e)) from None
            if isinstance(cause, NotRunnable):  # e.g. llama.cpp not installed on that host
                raise PointError(Status.SKIPPED, "not_runnable", str(cause)) from None
            status = Status.OOM if _looks_like_oom(str(e)) else Status.RUNTIME_ERROR
            raise PointError(status, type(cause).__name__ if cause else status, str(e)) from None
        except rex.RayError as e:  # e.g. unschedulable: its node left the cluster
            raise ActorGone(str(e)) from None

    def kill(self, actor: Any, *, restart: bool) -> None:
        import ray

        ray.kill(actor, no_restart=not restart)

    def node_alive(self, node_id: str) -> bool:
        import ray

        return any(n["NodeID"] == node_id and n.get("Alive") for n in ray.nodes())


def _looks_like_oom(message: str) -> bool:
    text = message.lower()
    return any(
        s in text
        for s in ("resource_exhausted", "out of memory", "memoryerror", "cannot allocate memory")
    )
