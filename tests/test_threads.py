"""`grid.threads`: points pinned to N cores with N IREE workers, recorded per row."""

from __future__ import annotations

import dataclasses
import os
import threading

import pytest

from sweep.plan.config import ConfigError, load_config
from sweep.plan.grid import expand
from sweep.store.results import read_results
from tests.helpers import SMOKE_FP32, sweep
from workers.core.threads import cores_for, pinned


def affinities() -> dict[int, set[int]]:
    return {int(t): os.sched_getaffinity(int(t)) for t in os.listdir("/proc/self/task")}


def test_pinned_moves_every_thread_and_puts_each_back():
    before = affinities()
    started: list[set[int]] = []
    with pinned(1) as num_cores:
        assert num_cores == 1
        assert all(mask == set(cores_for(1)) for mask in affinities().values()), "every thread"
        # a thread started inside inherits the pin, and is unpinned on the way out
        gate = threading.Event()
        worker = threading.Thread(target=gate.wait)
        worker.start()
        started.append(os.sched_getaffinity(worker.native_id))
    assert started == [set(cores_for(1))]
    after = affinities()
    alive = [t for t in before if t in after]
    assert {t: after[t] for t in alive} == {t: before[t] for t in alive}, "each its own back"
    assert after[worker.native_id] == os.sched_getaffinity(0)
    gate.set()
    worker.join()


def test_pinned_zero_is_the_actor_as_it_was_and_too_many_is_an_error():
    before = affinities()
    with pinned(0) as num_cores:
        assert num_cores == len(os.sched_getaffinity(0))
        now = affinities()  # other tests' threads (JAX, Ray clients) come and go meanwhile
        assert {t: now[t] for t in before.keys() & now.keys()} == {
            t: before[t] for t in before.keys() & now.keys()
        }
    with pytest.raises(ValueError, match=r"grid.threads=999 .* list at most"), pinned(999):
        pass


def test_threads_are_an_axis_whose_default_keeps_the_keys():
    cfg, _ = load_config(["+grid=smoke"])
    once = expand(cfg, "w")
    cfg, _ = load_config(["+grid=smoke", "grid.threads=[0,1,2]"])
    points = expand(cfg, "w")
    assert len(points) == 3 * len(once)
    assert [p.key for p in points if p.threads == 0] == [p.key for p in once], "default: as before"
    assert len({p.key for p in points}) == len(points), "thread counts do not collide"
    one = next(p for p in points if p.threads == 1)
    assert one.task().threads == 1, "the worker's task carries the count (llama.cpp's -t)"
    assert one.label == "fp32/cpu/L8/t1/default"
    assert dataclasses.replace(one, threads=0).key == once[0].key
    with pytest.raises(ConfigError, match=r"grid.threads"):
        load_config(["+grid=smoke", "grid.threads=[-1]"])


@pytest.mark.slow
def test_a_sweep_over_threads_records_them_and_gives_the_same_tokens(
    ray_cluster, tmp_path, shared_cache
):
    outcome, text = sweep(
        tmp_path, shared_cache, *SMOKE_FP32, "grid.prompt_lengths=[8]", "grid.threads=[1,2]"
    )
    assert outcome.exit_code == 0, text
    rows = read_results(tmp_path / "results").to_pylist()
    assert sorted(r["threads"] for r in rows) == [1, 2]
    assert {r["status"] for r in rows} == {"ok"}, text
    assert rows[0]["tokens"] == rows[1]["tokens"] == rows[0]["reference_tokens"]
    assert rows[0]["point_key"] != rows[1]["point_key"]
