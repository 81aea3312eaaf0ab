"""A real multi-host Ray cluster, as the README tells users to start it.

`ray start --head` and a second `ray start --address=...` run as separate processes
(two raylets, each advertising its own CPU benchmark slot), and the sweep joins with
`ray.address`: both nodes must run benchmarks. `--block` keeps each `ray start` in
the foreground so the test can stop exactly the processes it started (a `ray stop`
would also stop the session's test cluster).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from sweep.results import read_results
from tests.conftest import ROOT

RESOURCES = '{"sweep_cpu_bench": 1}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_start(*args: str) -> subprocess.Popen:
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    return subprocess.Popen(
        [
            ray,
            "start",
            "--block",
            "--num-cpus=1",
            f"--resources={RESOURCES}",
            "--disable-usage-stats",
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )


def num_alive_nodes(address: str) -> int:
    probe = (
        f"import ray; ray.init(address={address!r}, logging_level='ERROR'); "
        "print(sum(n['Alive'] for n in ray.nodes()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else 0


@pytest.fixture
def two_host_cluster():
    port = free_port()
    address = f"127.0.0.1:{port}"
    head = ray_start("--head", f"--port={port}", "--include-dashboard=false")
    worker = None
    try:
        deadline = time.monotonic() + 90
        while num_alive_nodes(address) < 1:
            assert time.monotonic() < deadline, "ray head did not start"
            time.sleep(1)
        worker = ray_start(f"--address={address}")
        while num_alive_nodes(address) < 2:
            assert time.monotonic() < deadline, "ray worker node did not join"
            time.sleep(1)
        yield address
    finally:
        for proc in (worker, head):
            if proc is not None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)


def test_smoke_grid_on_two_ray_start_nodes(two_host_cluster, tmp_path, shared_cache):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sweep",
            "+grid=smoke",
            f"ray.address={two_host_cluster}",
            f"results_dir={tmp_path / 'results'}",
            f"cache_dir={shared_cache}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = read_results(tmp_path / "results").to_pylist()
    assert len(rows) == 8 and {r["status"] for r in rows} == {"ok"}
    assert len({r["node_id"] for r in rows}) == 2, "both raylets must run benchmarks"
