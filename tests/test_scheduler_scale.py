"""The scheduler at scale: what benchmarks/cluster_sim.py found, pinned down as rules.

At 1,000 nodes and 100,000 points the old driver spent tens of milliseconds per event
looking at every pending point and every actor; a GPU node's CPU actor took CPU points
while the CUDA points only GPU nodes can run waited; compiles spread one per node kept
every node from measuring. Timing belongs in the benchmark, so these tests count:
function calls in the scheduler per event (they must not grow with the points or the
nodes), which node measures what, and where compiles go. The last test runs the
simulation itself, small, with every kind of fault.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from sweep.execute.scheduler import ActorDied, GraphLost
from sweep.plan.grid import Point
from tests.helpers import points
from tests.helpers.scheduler_sim import SimBackend, node, run

ROOT = Path(__file__).resolve().parents[1]
SCHEDULER_FILES = ("sweep/execute/scheduler.py", "sweep/execute/queues.py")


def many_points(num_flag_sets: int) -> list[Point]:
    """The smoke grid's 4 points (fp32 and int4, 2 prompt lengths) under more flag sets."""
    base = points("~grid.flag_sets.O3")
    return [
        dataclasses.replace(p, flag_set=f"f{i}", flags=(f"--sim-flag-set={i}",))
        for i in range(num_flag_sets)
        for p in base
    ]


def calls_per_event(num_nodes: int, todo: list[Point]) -> float:
    """Python function calls inside the scheduler's own files, per finished handle."""
    backend = SimBackend([node(f"n{i}") for i in range(num_nodes)])
    events = 0
    original_wait = backend.wait

    def counting_wait(handles, timeout_s):
        nonlocal events
        done = original_wait(handles, timeout_s)
        events += len(done)
        return done

    backend.wait = counting_wait  # type: ignore[method-assign]
    calls = Counter()

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.endswith(SCHEDULER_FILES):
            calls["n"] += 1

    sys.setprofile(profile)
    try:
        rows, _ = run(backend, todo)
    finally:
        sys.setprofile(None)
    assert len(rows) == len(todo) and {r["status"] for r in rows} == {"ok"}
    return calls["n"] / events


@pytest.mark.slow  # profiles or simulates hundreds of points
def test_scheduler_work_per_event_does_not_grow_with_the_points():
    small, large = calls_per_event(4, many_points(10)), calls_per_event(4, many_points(100))
    assert large < 1.5 * small, f"calls per event: {small:.0f} at 40 points, {large:.0f} at 400"


@pytest.mark.slow  # profiles or simulates hundreds of points
def test_scheduler_work_per_event_does_not_grow_with_the_nodes():
    small = calls_per_event(4, many_points(40))
    large = calls_per_event(40, many_points(40))
    assert large < 1.5 * small, f"calls per event: {small:.0f} on 4 nodes, {large:.0f} on 40"


def test_a_gpu_node_measures_cuda_points_first_and_leaves_cpu_points_to_cpu_nodes():
    """CUDA points run on GPU nodes only; a GPU node that took CPU points first would
    leave the CPU-only node idle at the end while CUDA points wait."""
    todo = points("grid.devices=[cpu,cuda]", "~grid.flag_sets.O3")  # 4 CPU, 4 CUDA points
    backend = SimBackend([node("cpu-only"), node("gpu", gpus=1)])
    rows, _ = run(backend, todo)
    assert {r["status"] for r in rows} == {"ok"}
    in_order = sorted(backend.measured, key=lambda m: m[2])
    devices = [a.device.name for a, *_ in in_order if a.node.node_id == "gpu"]
    assert devices == ["cuda"] * 4, f"the GPU node measured {devices}"
    starts = [start for *_, start, _ in backend.measured]
    ends = [end for *_, end in backend.measured]
    assert max(ends) - min(starts) == 4 * 2.0, "both nodes measure 4 points each, back to back"


def test_compiles_pack_onto_a_compiling_node_and_leave_others_free_to_measure():
    """IREE points need 2 graphs; XLA points need none. One node compiles both graphs
    (2 CPUs: 2 compile slots) while the other measures the XLA points."""
    todo = points(
        "grid.variants=[fp32]", "~grid.flag_sets.O3", "grid.prompt_lengths=[8]",
        "grid.runtimes=[iree,xla]",
    )  # fmt: skip
    backend = SimBackend([node("a"), node("b")])
    rows, _ = run(backend, todo)
    assert {r["status"] for r in rows} == {"ok"} and len(rows) == 2
    compile_nodes = {node_id for _, node_id, *_ in backend.compiles}
    assert len(compile_nodes) == 1, f"compiles spread over {sorted(compile_nodes)}"
    xla = [(a.node.node_id, start) for a, t, start, _ in backend.measured if t.runtime == "xla"]
    assert xla[0][0] not in compile_nodes and xla[0][1] == 0.0, "measured while the other compiles"


@pytest.mark.slow  # profiles or simulates hundreds of points
@pytest.mark.parametrize(
    "cluster",
    [(), ("--mix", "gpu8=1", "--devices", "cuda", "--seed", "2")],  # seed 2: a compile times out
    ids=["default-mix", "8-gpu-hosts-timing-every-gpu"],
)
def test_the_cluster_simulation_loses_nothing_under_faults(tmp_path: Path, cluster: tuple):
    """benchmarks/cluster_sim.py, small: nodes lost, actors crashing and compiles timing
    out; every point ends as exactly one row, and no point is measured twice (also where
    8-GPU hosts time 8 points at once)."""
    from benchmarks import cluster_sim

    out = tmp_path / "sim.json"
    argv = [
        *("--nodes", "20", "--points", "400", "--variants", "2", *cluster),
        *("--node-loss", "0.1", "--actor-crash", "0.01", "--compile-timeout", "0.01"),
        *("--out", str(out)),
    ]
    assert cluster_sim.main(argv) in (0, 1)
    report = json.loads(out.read_text())
    assert report["nodes_lost"] == 2
    assert report["duplicates"] == 0 and report["run_twice"] == 0
    missing = report["points"] - sum(report["statuses"].values())
    assert missing == 0, f"{missing} points without a row"
    assert report["lost"] == report["statuses"].get("worker_lost", 0), "a point without a row"
    assert report["statuses"].get("compile_timeout", 0) > 0, "the injected compile timeouts"
    if cluster:
        assert max(map(int, report["num_concurrent"])) == 7, "8 GPU points of a host at once"


def test_a_graph_lost_under_one_point_keeps_the_other_points_rows():
    """Two points share their graphs and run at once on two nodes; the first reports
    the graphs lost (queued again), the second then finishes: its row still has its
    compile columns. (The simulation found the driver crashing here.)"""
    backend = SimBackend([node("a"), node("b")])
    backend.on_point = lambda actor, task, n: (
        GraphLost("object lost") if task.prompt_length == 8 and n == 1 else 1.5
    )  # the loss at 1 s, the other point done at 1.5 s, before its graphs compile again
    todo = points("grid.variants=[fp32]", "~grid.flag_sets.O3", "grid.prompt_lengths=[8,16]")
    rows, _ = run(backend, todo)
    assert sorted(r["status"] for r in rows) == ["ok", "ok"]
    assert all(r["compile_s"] == 2.0 for r in rows), "prefill and decode compile seconds"


def test_a_point_whose_nodes_keep_leaving_runs_on_the_next_one():
    """Two nodes leave in turn under the same point: a node that left is not the
    point's fault, so with max_retries=1 it still runs on the third. (The simulation
    lost points this way at 1% node loss.)"""
    backend = SimBackend([node("a"), node("b"), node("c")])

    def lose_the_node(actor, task, n):
        if n <= 2:
            backend.dead.add(actor.node.node_id)
            return ActorDied("node left")
        return None

    backend.on_point = lose_the_node
    todo = points("grid.variants=[fp32]", "~grid.flag_sets.O3", "grid.prompt_lengths=[8]")
    rows, scheduler = run(backend, todo, max_retries=1)
    assert [r["status"] for r in rows] == ["ok"], rows[0]["error_message"]
    assert len(backend.dead) == 2 and len(scheduler.nodes) == 1
