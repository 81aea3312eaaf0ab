"""A real multi-host Ray cluster, as docs/deploy.md tells users to start it.

`ray start --head` and a second `ray start --address=...` run as separate processes
(two raylets, each advertising its own CPU benchmark slot), and the sweep joins with
`ray.address`: both nodes must run benchmarks. The cluster uses token auth, as Ray
2.60 turns on wherever a token exists (a local sweep writes one), and a sweep without
the token stops within seconds, naming what to do. `--block` keeps each `ray start` in
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

from benchmarks._common import num_alive_nodes
from sweep.store.results import read_results
from tests.helpers import ROOT

pytestmark = pytest.mark.slow  # two `ray start` processes

RESOURCES = '{"sweep_cpu_bench": 1}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_start(env: dict[str, str], *args: str) -> subprocess.Popen:
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
        env=env,
    )


@pytest.fixture(scope="module")
def token_cluster(tmp_path_factory):
    """The commands of docs/deploy.md: a token made once (`ray get-auth-token --generate`, in a
    home of the test's own), `RAY_AUTH_MODE=token` for every process, a head and a
    second `ray start` on another port. Yields (address, the environment to use)."""
    home = tmp_path_factory.mktemp("home")
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token"}
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    subprocess.run([ray, "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    assert (home / ".ray" / "auth_token").is_file()
    port = free_port()
    address = f"127.0.0.1:{port}"
    head = ray_start(env, "--head", f"--port={port}", "--include-dashboard=false")
    worker = None
    try:
        deadline = time.monotonic() + 90
        while num_alive_nodes(address, env) < 1:
            assert time.monotonic() < deadline, "ray head did not start"
            time.sleep(1)
        worker = ray_start(env, f"--address={address}")
        while num_alive_nodes(address, env) < 2:
            assert time.monotonic() < deadline, "ray worker node did not join"
            time.sleep(1)
        yield address, env
    finally:
        # `ray start --block` takes 30 s to stop on SIGTERM; killed, its raylet and GCS go
        # at once, and the Ray workers (in process groups of their own) exit with them.
        for proc in (worker, head):
            if proc is not None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)


def run_sweep_process(
    env: dict[str, str], *overrides: str
) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "sweep", "+grid=smoke", *overrides],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=env,
    )
    return proc, time.monotonic() - start


def test_smoke_grid_on_two_ray_start_nodes_with_token_auth(token_cluster, tmp_path, shared_cache):
    address, env = token_cluster
    proc, _ = run_sweep_process(
        env,
        "ray.address=auto",
        "grid.prompt_lengths=[8]",
        f"results_dir={tmp_path / 'results'}",
        f"cache_dir={shared_cache}",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = read_results(tmp_path / "results").to_pylist()
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
    assert len({r["node_id"] for r in rows}) == 2, "both raylets must run benchmarks"


def test_a_sweep_without_the_token_stops_at_once_saying_what_to_do(token_cluster, tmp_path):
    address, env = token_cluster
    stranger = {**env, "HOME": str(tmp_path), "RAY_AUTH_MODE": "disabled"}
    proc, wall_s = run_sweep_process(
        stranger, f"ray.address={address}", f"results_dir={tmp_path / 'results'}"
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "RAY_AUTH_MODE=token" in proc.stderr and "InvalidAuthToken" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert wall_s < 15, f"an auth failure took {wall_s:.0f} s to report"
    assert not list((tmp_path / "results").glob("run_id=*")), "nothing written"


def test_no_cluster_at_the_address_is_an_input_error(tmp_path):
    proc, wall_s = run_sweep_process(
        {**os.environ}, f"ray.address=127.0.0.1:{free_port()}", f"results_dir={tmp_path / 'r'}"
    )
    assert proc.returncode == 2 and "no Ray cluster answers" in proc.stderr, proc.stderr
    assert wall_s < 15
