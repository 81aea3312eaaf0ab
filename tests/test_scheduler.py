"""The scheduler's rules on a simulated cluster: no Ray, no compiler, milliseconds per test.

`SimBackend` (tests/helpers/scheduler_sim.py) is a deterministic stand-in for
`sweep.execute.cluster.RayBackend`: a clock that jumps to the next event, compiles and
points that take a fixed simulated time, and failures scripted per test (a compile that
fails, an actor that dies, a node that leaves, a point that hangs). It records every
compile and measurement interval, so the tests check the rules themselves: each graph
compiles once, a CPU point alone on its node and GPU points side by side on their own
cores, never beside a compile, weight affinity, retries, timeouts.
The real cluster runs the same scheduler in tests/test_sweep.py and
tests/test_reliability.py.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from sweep.execute.scheduler import ActorDied, ActorStarting, GraphLost, NodeInfo, PointError
from sweep.plan.grid import Point
from tests.helpers import points
from tests.helpers.scheduler_sim import TINY, SimActor, SimBackend, node, run, scheduler_for
from workers.core.devices import DeviceSpec
from workers.core.threads import CoreShare
from workers.tasks import BenchTask


def by_key(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    keys = [r["point_key"] for r in rows]
    assert len(keys) == len(set(keys)), "a point got two rows"
    return {r["point_key"]: r for r in rows}


def overlaps(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


# --- the rules ---------------------------------------------------------------------------


def test_every_point_gets_one_ok_row_and_every_graph_compiles_once():
    todo = points()
    backend = SimBackend([node("a"), node("b")])
    rows, scheduler = run(backend, todo)
    assert set(by_key(rows)) == {p.key for p in todo}
    assert {r["status"] for r in rows} == {"ok"}
    graphs = {(g, p.flags) for p in todo for g in p.graphs(TINY)}
    jobs = [job for job, *_ in backend.compiles]
    assert len(jobs) == len(set(jobs)) == len(graphs) == 12, "one compile per unique graph"
    assert scheduler.counters.num_compiles == scheduler.counters.num_compiled == 12
    assert {r["num_dispatches"] for r in rows} == {7}, "the decode graph's statistics"
    assert all(r["attempt"] == 1 for r in rows)


def test_one_measurement_per_node_and_never_beside_a_compile():
    backend = SimBackend([node("a"), node("b")])
    todo = points()
    todo += points("grid.prompt_lengths=[64]", "grid.max_seq=128")  # more graphs, later
    run(backend, todo, refill=None)
    for actor_a, _, start_a, end_a in backend.measured:
        for actor_b, _, start_b, end_b in backend.measured:
            if actor_a is not actor_b and actor_a.node == actor_b.node:
                assert not overlaps((start_a, end_a), (start_b, end_b))
        for _, node_id, c_start, c_end in backend.compiles:
            if node_id == actor_a.node.node_id:
                assert not overlaps((start_a, end_a), (c_start, c_end)), "measured beside a compile"
    assert len({a.node.node_id for a, *_ in backend.measured}) == 2, "both nodes measure"


def test_a_cpu_and_a_gpu_actor_on_one_node_take_turns():
    """A node with a GPU holds a CPU and a GPU actor: their points never overlap."""
    todo = points("grid.devices=[cpu,cuda]", "~grid.flag_sets.O3")
    backend = SimBackend([node("gpu-host", gpus=1)])
    rows, _ = run(backend, todo)
    assert {r["device"] for r in rows} == {"cpu", "cuda"} and {r["status"] for r in rows} == {"ok"}
    intervals = sorted((start, end) for _, _, start, end in backend.measured)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(intervals))


def test_host_code_compiles_once_per_cpu_kind_and_other_code_once():
    backend = SimBackend([node("a", cpu="epyc"), node("b", cpu="xeon")])
    todo = points("grid.devices=[cpu,cuda]", "~grid.flag_sets.O3", "grid.variants=[fp32]")
    backend.nodes[1] = node("b", cpu="xeon", gpus=1)
    rows, _ = run(backend, todo)
    cpu_jobs = [j for j, *_ in backend.compiles if j.device.name == "cpu"]
    cuda_jobs = [j for j, *_ in backend.compiles if j.device.name == "cuda"]
    assert sorted({j.cpu_group for j in cpu_jobs}) == ["epyc", "xeon"]
    assert len(cpu_jobs) == 2 * 3, "prefill 8 and 32 and decode, for each CPU kind"
    assert {j.cpu_group for j in cuda_jobs} == {None} and len(cuda_jobs) == 3
    for job, node_id, *_ in backend.compiles:
        if job.cpu_group is not None:
            assert node_id == {"epyc": "a", "xeon": "b"}[job.cpu_group], "host code on its CPU"
    assert {r["status"] for r in rows} == {"ok"}


def test_weight_affinity_uploads_each_variant_once_per_actor():
    backend = SimBackend([node("a"), node("b")])
    rows, _ = run(backend, points())
    assert sorted(a.num_uploads for a in backend.actors) == [1, 1], "one variant each"
    uploads = [(r["node_id"], r["variant"]) for r in rows if r["upload_s"] > 0]
    assert len(uploads) == len(set(uploads)) == 2


def test_an_actor_finishes_its_resident_variant_first():
    """Points queued fp32, int4, fp32, int4: one actor runs both fp32 points, then int4."""
    todo = points("~grid.flag_sets.O3")
    interleaved = [p for pair in zip(todo[:2], todo[2:], strict=True) for p in pair]
    backend = SimBackend([node("a")])
    run(backend, interleaved)
    assert [t.variant.name for _, t, *_ in backend.measured] == ["fp32", "fp32", "int4", "int4"]
    assert backend.actors[0].num_uploads == 2


def test_a_device_no_node_offers_is_skipped_without_an_actor():
    backend = SimBackend([node("a")])  # no GPU
    rows, _ = run(backend, points("grid.devices=[cpu,cuda]"))
    cuda = [r for r in rows if r["device"] == "cuda"]
    assert len(cuda) == 8 and {r["status"] for r in cuda} == {"skipped"}
    assert all("num_gpus=1" in r["error_message"] for r in cuda)
    assert {a.device.name for a in backend.actors} == {"cpu"}
    assert not [j for j, *_ in backend.compiles if j.device.name == "cuda"]


def test_a_failed_compile_fails_its_points_only():
    backend = SimBackend([node("a")])
    backend.fail_compile = lambda job: "--iree-opt-level=O3" in job.flags
    rows, _ = run(backend, points())
    statuses = {(r["flag_set"], r["status"]) for r in rows}
    assert statuses == {("default", "ok"), ("O3", "compile_error")}
    failed = [r for r in rows if r["status"] == "compile_error"]
    assert all("no such flag" in r["error_message"] for r in failed)
    assert all(t.variant.name and "O3" not in str(t) for _, t, *_ in backend.measured)


@pytest.mark.parametrize("death", [ActorDied("SIGKILL"), ActorStarting("socket closed")])
def test_a_point_whose_actor_died_is_retried_once_it_restarts(death: Exception):
    """Ray reports a call whose actor died as the actor dying or as it being unavailable."""
    backend = SimBackend([node("a")])
    backend.on_point = lambda actor, task, n: death if n == 1 else None
    rows, _ = run(backend, points("grid.variants=[fp32]", "~grid.flag_sets.O3"))
    assert {r["status"] for r in rows} == {"ok"} and {r["attempt"] for r in rows} == {2}


def test_a_point_that_keeps_killing_its_actor_is_worker_lost():
    backend = SimBackend([node("a")])
    backend.on_point = lambda actor, task, n: (
        ActorDied("SIGKILL") if task.prompt_length == 8 else None
    )
    rows, _ = run(backend, points("grid.variants=[fp32]", "~grid.flag_sets.O3"), max_retries=1)
    by_length = {r["prompt_length"]: r for r in rows}
    assert (
        by_length[8]["status"] == "worker_lost"
        and "after 2 attempts" in by_length[8]["error_message"]
    )
    assert by_length[32]["status"] == "ok", "the other point still runs on the restarted actor"


def test_a_hung_point_times_out_and_the_sweep_goes_on():
    backend = SimBackend([node("a")])
    backend.on_point = lambda actor, task, n: 500.0 if task.prompt_length == 8 else None
    rows, _ = run(backend, points("~grid.flag_sets.O3"), timeout_s=10.0)
    statuses = {(r["variant"], r["prompt_length"]): r["status"] for r in rows}
    assert statuses == {
        ("fp32", 8): "bench_timeout",
        ("fp32", 32): "ok",
        ("int4", 8): "bench_timeout",
        ("int4", 32): "ok",
    }
    assert len(backend.killed) == 2, "a hung actor is killed (and restarted)"


def test_a_lost_node_loses_no_point():
    backend = SimBackend([node("a"), node("b")])

    def lose_b(actor: SimActor, task: BenchTask, n: int) -> Any:
        if actor.node.node_id == "b":
            backend.dead.add("b")
            return ActorDied("node b left")
        return None

    backend.on_point = lose_b
    rows, scheduler = run(backend, points())
    assert {r["status"] for r in rows} == {"ok"} and len(rows) == 8
    assert {r["node_id"] for r in rows} == {"a"}
    assert [n.node_id for n in scheduler.nodes] == ["a"]


def test_a_graph_lost_with_its_node_is_compiled_again():
    backend = SimBackend([node("a")])
    backend.on_point = lambda actor, task, n: GraphLost("object lost") if n == 1 else None
    todo = points("grid.variants=[fp32]", "~grid.flag_sets.O3", "grid.prompt_lengths=[8]")
    rows, _ = run(backend, todo)
    assert [r["status"] for r in rows] == ["ok"]
    assert rows[0]["attempt"] == 1, "a lost graph is not the point's fault"
    assert len(backend.compiles) == 4, "both graphs compiled twice"


def test_an_error_in_the_point_is_its_row():
    backend = SimBackend([node("a")])
    backend.on_point = lambda actor, task, n: (
        PointError("runtime_error", "RuntimeError", "no memory on device")
        if task.variant.name == "int4"
        else None
    )
    rows, _ = run(backend, points("~grid.flag_sets.O3"))
    int4 = [r for r in rows if r["variant"] == "int4"]
    assert {r["status"] for r in int4} == {"runtime_error"}
    assert {r["error_class"] for r in int4} == {"RuntimeError"}
    assert {r["status"] for r in rows if r["variant"] == "fp32"} == {"ok"}


def test_points_left_without_an_actor_are_worker_lost():
    backend = SimBackend([node("a")])

    def lose_a(actor: SimActor, task: BenchTask, n: int) -> Any:
        backend.dead.add("a")
        return ActorDied("node a left")

    backend.on_point = lose_a
    rows, _ = run(backend, points("~grid.flag_sets.O3"))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"worker_lost"}


def test_refill_adds_points_while_the_sweep_runs():
    backend = SimBackend([node("a")])
    batches = [points("grid.prompt_lengths=[64]"), []]
    rows, scheduler = run(backend, points(), refill=lambda: batches.pop(0) if batches else [])
    assert len(rows) == 8 + 4 and {r["status"] for r in rows} == {"ok"}
    assert scheduler.counters.num_points == 12


@pytest.mark.parametrize("restarts", [0, 3])
def test_a_restarting_actor_gets_points_once_it_answers(restarts: int):
    backend = SimBackend([node("a")])
    original = backend.start_actor

    def slow_start(device: DeviceSpec, node_info: NodeInfo) -> SimActor:
        actor = original(device, node_info)
        actor.restarting = restarts
        return actor

    backend.start_actor = slow_start  # type: ignore[method-assign]
    rows, _ = run(backend, points("grid.variants=[fp32]", "~grid.flag_sets.O3"))
    assert {r["status"] for r in rows} == {"ok"}
    first_start = min(start for *_, start, _ in backend.measured)
    assert first_start >= 0.1 * restarts


def test_the_scheduler_needs_no_ray():
    import subprocess
    import sys

    code = "import sys, sweep.execute.scheduler; print('ray' in sys.modules, 'jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"], "the scheduler must not import ray or jax"


# --- GPU points side by side -------------------------------------------------------------


def gpu_points(num_prompts: int = 8) -> list[Point]:
    """fp32 and int4 CUDA points at `num_prompts` prompt lengths (4 graphs each variant)."""
    lengths = ",".join(str(8 + i) for i in range(num_prompts))
    return points("grid.devices=[cuda]", "~grid.flag_sets.O3", f"grid.prompt_lengths=[{lengths}]")


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    now = best = 0
    for _, step in events:  # an end sorts before a start at the same instant
        now += step
        best = max(best, now)
    return best


def test_gpu_points_of_one_node_are_timed_at_once_each_on_its_own_cores():
    backend = SimBackend([node("gpu8", cpus=16, gpus=4)])
    rows, _ = run(backend, gpu_points())
    assert len(rows) == 16 and {r["status"] for r in rows} == {"ok"}
    spans = [(start, end) for _, _, start, end in backend.shares]
    assert most_at_once(spans) == 4, "one point per GPU at once"
    assert {share for _, share, *_ in backend.shares} == {CoreShare(i, 4) for i in range(4)}
    for (a, share_a, *span_a), (b, share_b, *span_b) in itertools.combinations(backend.shares, 2):
        if overlaps(tuple(span_a), tuple(span_b)):
            assert a is not b and share_a != share_b, "two points at once on one actor or cores"
    for _, _, c_start, c_end in backend.compiles:
        assert not any(overlaps(span, (c_start, c_end)) for span in spans), "beside a compile"
    assert max(r["num_concurrent"] for r in rows) == 3


def test_a_cpu_point_of_a_gpu_node_is_timed_alone():
    todo = gpu_points(4) + points("~grid.flag_sets.O3", "grid.prompt_lengths=[8,9]")
    backend = SimBackend([node("gpu4", cpus=8, gpus=4)])
    rows, _ = run(backend, todo)
    assert {r["status"] for r in rows} == {"ok"} and len(rows) == 12
    spans = [(a.device.name, share, (s, e)) for a, share, s, e in backend.shares]
    for device, share, span in spans:
        if device == "cpu":
            assert share is None, "a CPU point has the whole host"
            others = [o for _, _, o in spans if o != span]
            assert not any(overlaps(span, o) for o in others), "a CPU point beside another"
    assert {r["num_concurrent"] for r in rows if r["device"] == "cpu"} == {0}
    assert max(r["num_concurrent"] for r in rows if r["device"] == "cuda") == 3


@pytest.mark.parametrize(
    ("cpus", "gpu_concurrency", "at_once"),
    [(4, 0, 2), (16, 3, 3), (16, 1, 1)],
    ids=["two-cores-each-from-four", "limit-three", "one-at-a-time"],
)
def test_a_node_times_fewer_gpu_points_when_its_cores_or_the_switch_say_so(
    cpus: int, gpu_concurrency: int, at_once: int
):
    backend = SimBackend([node("gpu4", cpus=cpus, gpus=4)])
    rows, _ = run(backend, gpu_points(), gpu_concurrency=gpu_concurrency)
    assert {r["status"] for r in rows} == {"ok"}
    assert most_at_once([(s, e) for _, _, s, e in backend.shares]) == at_once
    shares = {share for _, share, *_ in backend.shares}
    if at_once == 1:
        assert shares == {None}, "one at a time: the point has the host, as before"
    else:
        assert shares == {CoreShare(i, at_once) for i in range(at_once)}
    assert max(r["num_concurrent"] for r in rows) == at_once - 1


def test_num_concurrent_counts_timed_windows_not_calls():
    """Two GPU points sent together: the first times its last second only, the second its
    first second (its clock stops, then it reads back for a while). Their calls overlap,
    their timed phases do not, so neither counts the other; a third point timed across
    both counts two."""
    backend = SimBackend([node("gpu3", cpus=8, gpus=3)])
    scripts = iter([(4.0, 1.0), (5.0, 4.5), (4.0, 3.5)])  # windows [3, 4], [0.5, 5], [0.5, 4]
    backend.on_point = lambda actor, task, attempt: next(scripts)
    rows, _ = run(backend, gpu_points(3)[:3])
    assert most_at_once([(s, e) for _, _, s, e in backend.shares]) == 3, "the calls overlap"
    assert sorted(r["num_concurrent"] for r in rows) == [2, 2, 2]
    backend = SimBackend([node("gpu2", cpus=8, gpus=2)])
    scripts = iter([(4.0, 1.0), (5.0, 0.5)])  # windows [3, 4] and [4.5, 5]
    backend.on_point = lambda actor, task, attempt: next(scripts)
    rows, _ = run(backend, gpu_points(2)[:2])
    assert most_at_once([(s, e) for _, _, s, e in backend.shares]) == 2, "the calls overlap"
    assert [r["num_concurrent"] for r in rows] == [0, 0], "their timed phases do not"


def test_a_row_waits_for_its_neighbours_and_a_stopped_sweep_writes_it_without_a_count():
    """A row whose neighbour is still running is held until the neighbour ends; if the
    sweep stops first (Ctrl-C), shutdown writes it with a null num_concurrent."""
    backend = SimBackend([node("gpu2", cpus=8, gpus=2)])
    durations = iter([2.0, 50.0])
    backend.on_point = lambda actor, task, attempt: next(durations)
    rows: list[dict[str, Any]] = []
    scheduler = scheduler_for(backend, rows)
    scheduler.add(gpu_points(2)[:2])
    while len(backend.shares) < 2 or backend.clock < 10.0:
        scheduler._dispatch()
        scheduler._wait()
    assert rows == [], "the first row waits for its neighbour's window"
    scheduler.shutdown()
    assert len(rows) == 1 and rows[0]["num_concurrent"] is None


def test_a_neighbour_that_fails_releases_the_row_that_waited_on_it():
    backend = SimBackend([node("gpu2", cpus=8, gpus=2)])
    error = PointError("runtime_error", "RuntimeError", "boom")
    scripts = iter([2.0, error])
    backend.on_point = lambda actor, task, attempt: next(scripts)
    rows, scheduler = run(backend, gpu_points(2)[:2])
    assert sorted(r["status"] for r in rows) == ["ok", "runtime_error"]
    ok = next(r for r in rows if r["status"] == "ok")
    assert ok["num_concurrent"] == 0, "a point without a timed phase counts for nobody"
    assert not len(scheduler._overlap), "nothing left in the ledger"
