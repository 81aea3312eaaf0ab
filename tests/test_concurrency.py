"""Sweeps that share a machine, a results directory or a cache, and the identity of data.

Real sweeps on real Ray: two sweeps started side by side on one results directory
and cache, a stray file in the results, a node holding two benchmark devices, a node
with four (fake) GPUs timing them at once, and a checkpoint re-saved at the same path.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sweep.execute.overlap import most_at_once
from sweep.store.results import read_results
from tests.helpers import ROOT, sweep
from workers.core.devices import CPU_BENCH_RESOURCE
from workers.core.locks import HOST_LOCK_ENV

pytestmark = pytest.mark.slow  # real Ray clusters and iree-compile


def test_two_sweeps_at_once_share_the_results_and_the_cache(tmp_path: Path):
    """Two `python -m sweep +grid=smoke` 3 s apart, same results_dir and cache_dir, each
    with its own local Ray: both exit 0, and every point is measured exactly once."""
    command = [
        sys.executable,
        "-m",
        "sweep",
        "+grid=smoke",
        "grid.prompt_lengths=[8]",  # 4 points: enough to share, half the suite's time
        f"results_dir={tmp_path / 'results'}",
        f"cache_dir={tmp_path / 'cache'}",
    ]
    first = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    time.sleep(3)
    second = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    outputs = [p.communicate(timeout=900)[0] for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    rows = read_results(tmp_path / "results").to_pylist()
    assert {r["status"] for r in rows} == {"ok"}, [r["error_message"] for r in rows]
    keys = [r["point_key"] for r in rows]
    assert len(keys) == len(set(keys)) == 4, "each point measured exactly once"
    assert not list((tmp_path / "results" / "_claims").iterdir()), "no claim left behind"


def test_a_stray_file_in_the_results_does_not_stop_a_sweep(
    ray_cluster, tmp_path: Path, shared_cache: Path
):
    stray = tmp_path / "results" / "run_id=x" / "part.parquet"
    stray.parent.mkdir(parents=True)
    stray.write_text("a word")
    with pytest.warns(UserWarning, match="not a readable result file"):
        outcome, text = sweep(
            tmp_path, shared_cache, "+grid=smoke", "~grid.flag_sets.O3", "grid.variants=[fp32]"
        )
    assert outcome.exit_code == 0, text
    assert [r["status"] for r in outcome.rows] == ["ok", "ok"]
    assert (tmp_path / "results" / "_unreadable" / "run_id=x" / "part.parquet").exists()


def _smoke_on_a_new_node(
    ray_cluster: Any, node: dict[str, Any], tmp_path: Path, shared_cache: Path, *overrides: str
) -> tuple[Any, str, Any]:
    """A smoke sweep (O3 left out) with one more node in the cluster, made with `node`'s
    resources and removed after: (outcome, text, the node)."""
    added = ray_cluster.add_node(**node)
    ray_cluster.wait_for_nodes()
    try:
        outcome, text = sweep(
            tmp_path, shared_cache, "+grid=smoke", "~grid.flag_sets.O3", *overrides
        )
    finally:
        ray_cluster.remove_node(added)
    return outcome, text, added


def test_two_devices_on_one_node_take_turns(ray_cluster, tmp_path: Path, shared_cache: Path):
    """A node that holds two benchmark devices (as a GPU host holds a CPU and a GPU
    actor; here two CPU devices, each with its own Ray resource) runs one of their
    points at a time."""
    devices = []
    for name in ("dev_a", "dev_b"):
        devices += [
            f"+device@devices.{name}=cpu",
            f"devices.{name}.name={name}",
            f"devices.{name}.ray_resource=sweep_{name}",
        ]
    outcome, text, _ = _smoke_on_a_new_node(
        ray_cluster,
        {"num_cpus": 1, "resources": {"sweep_dev_a": 1, "sweep_dev_b": 1}},
        tmp_path,
        shared_cache,
        *devices,
        "grid.devices=[dev_a,dev_b]",
        "grid.prompt_lengths=[8]",
        "bench.decode_steps=60",
    )
    assert outcome.exit_code == 0, text
    rows = outcome.rows
    assert {r["device"] for r in rows} == {"dev_a", "dev_b"} and len(rows) == 4
    assert len({r["node_id"] for r in rows}) == 1, "both devices live on the one node"
    spans = sorted((r["started_at"], r["finished_at"]) for r in rows)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start, f"two measurements overlapped on one node: {spans}"


def test_re_saved_weights_at_the_same_path_run_again(
    ray_cluster, tmp_path: Path, tiny_checkpoint: Path
):
    model = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, model)
    overrides = (
        "+grid=smoke",
        f"model.path={model}",
        "model.name=mine",
        "~grid.flag_sets.O3",
        "grid.variants=[fp32]",
        "grid.prompt_lengths=[8]",
    )
    cache = tmp_path / "cache"
    first, _ = sweep(tmp_path, cache, *overrides)
    assert [r["status"] for r in first.rows] == ["ok"]
    again, text = sweep(tmp_path, cache, *overrides)
    assert again.rows == [] and "1 already done" in text
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4:] = bytes(255 - b for b in data[-4:])
    weights.write_bytes(bytes(data))
    changed, text = sweep(tmp_path, cache, *overrides)
    assert [r["status"] for r in changed.rows] == ["ok"], text
    assert changed.rows[0]["point_key"] != first.rows[0]["point_key"]


def test_a_four_gpu_node_times_its_gpu_points_at_once_and_cpu_points_alone(
    ray_cluster, tmp_path: Path, shared_cache: Path, monkeypatch: pytest.MonkeyPatch
):
    """A node that Ray tells has 4 GPUs (`num_gpus=4` on a machine with none: Ray's GPU
    resource stands in for them) and 8 CPUs times 4 GPU points at once, each on its own
    core share, while the sweep's CPU points are timed alone on their nodes.

    The mock is the CUDA device itself: the `fakegpu` device asks Ray for a GPU like
    `cuda`, so the scheduler, Ray's placement and the host lock treat it as one, but it
    runs IREE's CPU driver (there is no CUDA here). The new node gets a host lock of its
    own: every node of this cluster is one machine, shared with other sweeps."""
    monkeypatch.setenv(HOST_LOCK_ENV, str(tmp_path / "host.lock"))  # the raylet inherits it
    outcome, text, gpu_node = _smoke_on_a_new_node(
        ray_cluster,
        {"num_cpus": 8, "num_gpus": 4, "resources": {CPU_BENCH_RESOURCE: 1}},
        tmp_path,
        shared_cache,
        "grid.variants=[fp32]",
        "+device@devices.fakegpu=cpu",
        "devices.fakegpu.name=fakegpu",
        "devices.fakegpu.ray_resource=GPU",
        "grid.devices=[cpu,fakegpu]",
        "grid.prompt_lengths=[5,6,7,8,9,10,11,12]",  # one prefill bucket: one graph
        "grid.max_seq=2048",
        "bench.decode_steps=1600",  # timed phases of seconds: longer than their skew
    )
    assert outcome.exit_code == 0, text
    rows = outcome.rows
    assert {r["status"] for r in rows} == {"ok"} and len(rows) == 16, text
    gpu = [r for r in rows if r["device"] == "fakegpu"]
    assert {r["node_id"] for r in gpu} == {gpu_node.node_id}
    windows = [(r["timed_started_at"], r["timed_finished_at"]) for r in rows]
    gpu_windows = [(r["timed_started_at"], r["timed_finished_at"]) for r in gpu]
    at_once = max(most_at_once(w, gpu_windows) for w in gpu_windows)  # itself included
    # The four actors start staggered (each imports IREE and JAX on this 2-core machine), so
    # how many overlap at best varies from run to run (4 here when quiet, 3 under CI); at
    # least two at once, never more than the node's four, and the rows say so.
    assert 2 <= at_once <= 4, f"GPU points must be timed side by side: {gpu_windows}"
    assert max(r["num_concurrent"] for r in gpu) == at_once - 1
    assert {r["threads"] for r in gpu} == {1}, "each on a share of this 2-core machine: one core"
    for row, window in zip(rows, windows, strict=True):
        if row["device"] != "cpu":
            continue
        same_node = [
            w for r, w in zip(rows, windows, strict=True) if r["node_id"] == row["node_id"]
        ]
        assert most_at_once(window, same_node) == 1, "a CPU point timed beside another point"
        assert row["num_concurrent"] == 0
