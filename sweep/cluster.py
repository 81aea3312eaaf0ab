"""Ray at the edges: start or join a cluster, take stock of its nodes, and the remote functions.

Everything that names Ray lives here, so the scheduler reads as plain logic.
Compiles are Ray tasks (one CPU each); benchmarks run on actors that ask for their
device's resource: `num_gpus=1` for a GPU, and for the CPU a custom resource that
each node advertises once (`sweep_cpu_bench: 1`), so one CPU benchmark runs per
node at a time. An actor that asks for a resource no node has would stay pending
forever, so feasibility is checked against the nodes before anything is submitted.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from typing import Any

from workers.devices import CPU_BENCH_RESOURCE, DeviceSpec


@dataclasses.dataclass(frozen=True)
class NodeInfo:
    node_id: str
    hostname: str
    resources: dict[str, float]
    cpu_id: str  # hash of the CPU model and features: nodes that can share a "host" vmfb

    def offers(self, device: DeviceSpec) -> float:
        """How many benchmark actors of `device` this node can hold."""
        key = "GPU" if device.needs_gpu else device.ray_resource
        return self.resources.get(key, 0.0) // device.ray_resource_amount


# Benchmark actors start with transparent huge pages for malloc (IREE's own buffers:
# KV caches, in-graph dequantized weights) and numpy (the resident weights). Without
# it only numpy's arrays get them, and decode on the CPU runs 10-30% slower than
# IREE's own tools given the same pages (see benchmarks/fidelity.py).
BENCH_ENV = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1", "NUMPY_MADVISE_HUGEPAGE": "1"}

# XLA's CPU scheduler by default runs independent ops early so they can overlap; for
# a quantized variant that means dequantizing every weight before the first matmul,
# holding the whole model in fp32 at once (3.9 GB more for the 1B model in int4). The
# XLA reference and the XLA baseline run in the actor, so they get the scheduler that
# minimizes memory: each weight is dequantized just before its matmul. Same tokens;
# the mid model's int4 XLA decode also ran 2.5x faster with it (72 vs 177 ms/token).
XLA_CPU_FLAGS = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def bench_runtime_env() -> dict[str, Any]:
    xla_flags = " ".join(f for f in (os.environ.get("XLA_FLAGS", ""), XLA_CPU_FLAGS) if f)
    env = {"PYTHONPATH": _project_root(), **BENCH_ENV, "XLA_FLAGS": xla_flags}
    return {"env_vars": env}


def connect(address: str, num_cpus: int | None) -> bool:
    """Joins `address` or starts a local Ray; returns True if this call started it.

    A local Ray advertises the CPU benchmark resource on its one node; on a cluster
    each `ray start` must pass `--resources='{"sweep_cpu_bench": 1}'` (see README).
    """
    import ray

    if ray.is_initialized():
        return False
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        _init(address, num_cpus)
    finally:
        _restore_handlers(saved)
    return True


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
        )


def _project_root() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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

    from workers.compile import host_cpu_id

    return socket.gethostname(), host_cpu_id()


def compile_graph_fn(
    spec: Any, device: DeviceSpec, flags: tuple[str, ...], cache_dir: str, timeout_s: float
) -> tuple[dict[str, Any], bytes | None]:
    """Export one graph and compile it; metadata and vmfb are separate Ray objects."""
    from pathlib import Path

    from workers.compile import compile_stablehlo
    from workers.export import export_graph

    exported = export_graph(spec)
    result = compile_stablehlo(
        exported.stablehlo,
        device,
        flags,
        cache_dir=Path(cache_dir) / "vmfb",
        timeout_s=timeout_s,
        work_dir=Path(cache_dir) / "work",
    )
    meta = {f.name: getattr(result, f.name) for f in dataclasses.fields(result) if f.name != "vmfb"}
    meta["vmfb_bytes"] = len(result.vmfb) if result.vmfb else None
    meta["stablehlo_sha256"] = exported.sha256
    return meta, result.vmfb


class BenchActorImpl:
    """The Ray actor around `PointWorker`: adds where it runs, keeps the rest plain."""

    def __init__(self, device: DeviceSpec, source: Any, cache_dir: str) -> None:
        import ray

        from workers.point import PointWorker

        self.worker = PointWorker(device, source, cache_dir)
        self.node_id = ray.get_runtime_context().get_node_id()

    def where(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "pid": os.getpid(), **self.worker.info()}

    def run(
        self, task: Any, prefill_vmfb: bytes | None = None, decode_vmfb: bytes | None = None
    ) -> dict[str, Any]:
        return {
            **self.worker.run(task, prefill_vmfb, decode_vmfb),
            "node_id": self.node_id,
            "num_uploads": self.worker.num_uploads,
        }


def remote_functions() -> tuple[Any, Any]:
    """(compile task, benchmark actor class), made remote here so importing stays cheap."""
    import ray

    compile_task = ray.remote(num_cpus=1, num_returns=2, max_retries=0)(compile_graph_fn)
    actor = ray.remote(max_restarts=-1, max_task_retries=0)(BenchActorImpl)
    return compile_task, actor
