"""Failures provoked for real: each costs its own row, never the sweep, and nothing is lost.

Nothing is mocked: a flag iree-compile does not know, a compile killed by its
timeout or its memory bound, a benchmark actor killed with SIGKILL, a node removed from the Ray
cluster, a truncated safetensors file, and a driver killed with SIGKILL and rerun.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks._common import busy_actor_pids
from sweep.plan.config import load_config
from sweep.run import run_sweep
from sweep.store.results import read_results
from tests.helpers import ROOT, SMOKE_FP32, sweep

pytestmark = pytest.mark.slow  # a real Ray cluster, iree-compile, killed processes

# Points long enough (about a second each) that a kill lands in the middle of one.
LONG_POINTS = ["grid.max_seq=2048", "bench.decode_steps=1900", "grid.prompt_lengths=[8,32]"]


def run_in_thread(tmp_path: Path, cache: Path, *overrides: str):
    cfg, resolved = load_config(
        [f"results_dir={tmp_path / 'results'}", f"cache_dir={cache}", *overrides]
    )
    box: dict = {}

    def target() -> None:
        box["outcome"] = run_sweep(cfg, resolved, out=io.StringIO())

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def parquet_files(results: Path) -> list[Path]:
    return sorted(results.glob("run_id=*/*.parquet"))


def test_unknown_flag_fails_its_points_only(ray_cluster, tmp_path, shared_cache):
    outcome, _ = sweep(
        tmp_path,
        shared_cache,
        "+grid=smoke",
        "+grid.flag_sets.bad=[--iree-no-such-flag]",
    )
    assert outcome.exit_code == 1
    by_set: dict[str, set[str]] = {}
    for row in outcome.rows:
        by_set.setdefault(row["flag_set"], set()).add(row["status"])
    assert by_set == {"default": {"ok"}, "O3": {"ok"}, "bad": {"compile_error"}}
    bad = [r for r in outcome.rows if r["flag_set"] == "bad"]
    assert len(bad) == 4 and all("no-such-flag" in r["error_message"] for r in bad)
    assert all(r["returncode"] not in (None, 0) for r in bad)


def _one_fresh_compile(tmp_path, bound: str) -> Any:
    """A one-point sweep whose only compile runs, from an empty cache, under `bound`."""
    outcome, _ = sweep(
        tmp_path, tmp_path / "fresh-cache", *SMOKE_FP32, "grid.prompt_lengths=[8]", bound
    )
    return outcome


def test_compile_timeout_kills_the_compiler_and_is_recorded(ray_cluster, tmp_path):
    outcome = _one_fresh_compile(tmp_path, "bench.compile_timeout_s=0.05")
    assert outcome.exit_code == 1
    assert [r["status"] for r in outcome.rows] == ["compile_timeout"]
    assert "timeout" in outcome.rows[0]["error_message"].lower()


def test_compile_memory_bound_kills_the_compiler_and_is_recorded(ray_cluster, tmp_path):
    """bench.compile_max_memory_gb reaches the compile task: iree-compile (about 150 MB
    resident on any graph) under 20 MB is killed, and the row says which knob to raise."""
    outcome = _one_fresh_compile(tmp_path, "bench.compile_max_memory_gb=0.02")
    assert outcome.exit_code == 1
    assert [r["status"] for r in outcome.rows] == ["compile_error"]
    message = outcome.rows[0]["error_message"]
    assert message.startswith("iree-compile passed 0.02 GB of memory"), message
    assert "raise bench.compile_max_memory_gb" in message and outcome.rows[0]["returncode"] is None


def test_bench_timeout_kills_the_actor_and_the_sweep_goes_on(ray_cluster, tmp_path, shared_cache):
    outcome, _ = sweep(
        tmp_path,
        shared_cache,
        *SMOKE_FP32,
        *LONG_POINTS,
        "bench.point_timeout_s=0.3",
    )
    assert outcome.exit_code == 1
    assert [r["status"] for r in outcome.rows] == ["bench_timeout", "bench_timeout"]
    assert "point_timeout_s" in outcome.rows[0]["error_message"]


def test_killed_actor_is_restarted_and_its_point_retried(ray_cluster, tmp_path, shared_cache):
    thread, box = run_in_thread(
        tmp_path, shared_cache, "+grid=smoke", "~grid.flag_sets.O3", *LONG_POINTS
    )
    pid = wait_for(lambda: busy_actor_pids(), 300, "a benchmark actor inside run()")[0]
    os.kill(pid, signal.SIGKILL)
    thread.join(600)
    assert not thread.is_alive(), "the sweep must finish after losing an actor"
    outcome = box["outcome"]
    rows = outcome.rows
    assert sorted(r["status"] for r in rows) == ["ok"] * 4, [r["error_message"] for r in rows]
    assert len({r["point_key"] for r in rows}) == 4, "each point exactly once"
    assert max(r["attempt"] for r in rows) == 2, "the killed point was retried"


def test_removed_node_loses_no_point(ray_cluster, tmp_path, shared_cache):
    from workers.core.devices import CPU_BENCH_RESOURCE

    node = ray_cluster.add_node(num_cpus=1, resources={CPU_BENCH_RESOURCE: 1})
    ray_cluster.wait_for_nodes()
    thread, box = run_in_thread(tmp_path, shared_cache, "+grid=smoke", *LONG_POINTS)
    wait_for(lambda: len(busy_actor_pids()) >= 3, 300, "actors busy on all three nodes")
    ray_cluster.remove_node(node, allow_graceful=False)
    thread.join(600)
    assert not thread.is_alive(), "the sweep must finish after losing a node"
    rows = box["outcome"].rows
    assert len(rows) == 8 and len({r["point_key"] for r in rows}) == 8
    failed = [
        (r["status"], r["error_class"], r["error_message"]) for r in rows if r["status"] != "ok"
    ]
    assert {r["status"] for r in rows} <= {"ok", "worker_lost"}, failed
    assert sum(r["status"] == "ok" for r in rows) >= 7, failed


def test_truncated_checkpoint_fails_before_any_work(tmp_path, tiny_checkpoint):
    shard = tiny_checkpoint / "model.safetensors"
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_checkpoint.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    os.truncate(broken / shard.name, shard.stat().st_size // 2)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sweep",
            "+grid=smoke",
            f"model.path={broken}",
            f"results_dir={tmp_path / 'results'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stderr
    assert "model.safetensors" in proc.stderr and "truncated" in proc.stderr.lower()
    assert "Ray" not in proc.stdout + proc.stderr


def test_unwritable_results_dir_fails_before_any_compile(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    proc = subprocess.run(
        [sys.executable, "-m", "sweep", "+grid=smoke", f"results_dir={blocker / 'results'}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "results_dir" in proc.stderr and str(blocker) in proc.stderr


def test_a_real_checkpoint_runs_through_the_sweep(
    ray_cluster, tmp_path, shared_cache, tiny_checkpoint
):
    outcome, _ = sweep(
        tmp_path,
        shared_cache,
        "+grid=smoke",
        f"model.path={tiny_checkpoint}",
        "~grid.flag_sets.O3",
    )
    assert outcome.exit_code == 0
    assert {r["status"] for r in outcome.rows} == {"ok"}
    assert all(r["num_tokens_matched"] == len(r["tokens"]) for r in outcome.rows)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_killed_driver_loses_nothing_and_rerun_completes(ray_cluster, tmp_path, shared_cache, sig):
    results = tmp_path / "results"
    command = [
        sys.executable,
        "-m",
        "sweep",
        "+grid=smoke",
        *LONG_POINTS,
        f"ray.address={ray_cluster.address}",
        f"results_dir={results}",
        f"cache_dir={shared_cache}",
    ]
    driver = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    wait_for(lambda: parquet_files(results), 300, "the first finished point")
    driver.send_signal(sig)
    output, _ = driver.communicate(timeout=120)
    if sig != signal.SIGKILL:  # Ctrl-C or kill: a clean stop
        assert driver.returncode == 130, output
        assert "finished points are saved" in output
    first = read_results(results)  # every file on disk is complete and readable
    assert 1 <= first.num_rows < 8
    rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    keys = read_results(results).column("point_key").to_pylist()
    assert len(keys) == 8 and len(set(keys)) == 8, "every point exactly once"
