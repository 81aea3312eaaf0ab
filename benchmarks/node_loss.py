"""Node loss on a real cluster: 8 raylets on this machine, one killed mid-run.

benchmarks/cluster_sim.py runs the scheduler on a simulated cluster; this checks the
same promise on a real one. It starts a Ray head and 7 more raylets with `ray start`
(each its own node: one CPU, one CPU benchmark slot, a resource naming it), runs the
smoke grid with points long enough to be hit mid-benchmark, and SIGKILLs the process
group of one worker raylet (the raylet and its workers: the node is gone, as when a
host dies) while one of its actors is inside a point. Then it reads the Parquet back:
every point exactly once, none lost, the killed point retried on another node.

The cluster has a temp dir, a HOME and ports of its own, and only the processes this
script started are stopped (never `ray stop`: other Ray clusters may share the
machine). It takes minutes on a 2-core machine (8 raylets, 8 actors importing JAX and
IREE), too long for the test suite's slow tier; tests/test_scheduler_scale.py covers
the same rules on the simulated cluster in seconds.

    python benchmarks/node_loss.py [--raylets 8] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (  # noqa: E402
    busy_actor_pids,
    default_report_path,
    machine_info,
    markdown_table,
    num_alive_nodes,
    write_json,
)

ROOT = Path(__file__).resolve().parent.parent
GRID = ["+grid=smoke", "grid.max_seq=1024", "bench.decode_steps=900", "bench.max_retries=2"]
RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_start(env: dict[str, str], index: int, *args: str) -> subprocess.Popen:
    """One raylet in the foreground (`--block`), in a process group of its own. Its
    agents get their ports up front: otherwise the raylet waits for them to write
    their port files and, on a loaded machine, gives up ("Timed out waiting for file")."""
    resources = f'{{"sweep_cpu_bench": 1, "raylet{index}": 1}}'
    ports = [
        f"--{name}={free_port()}"
        for name in ("dashboard-agent-grpc-port", "dashboard-agent-listen-port",
                     "runtime-env-agent-port", "metrics-export-port")
    ]  # fmt: skip
    return subprocess.Popen(
        [
            RAY,
            "start",
            "--block",
            "--num-cpus=1",
            f"--resources={resources}",
            "--disable-usage-stats",
            *ports,
            *args,
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )


def parent_pid(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def raylet_of(pid: int, raylets: dict[int, subprocess.Popen]) -> int | None:
    """The index of the `ray start` process an actor descends from, if one of ours."""
    by_pid = {proc.pid: i for i, proc in raylets.items()}
    for _ in range(8):
        pid = parent_pid(pid)
        if pid in by_pid:
            return by_pid[pid]
        if pid <= 1:
            return None
    return None


def killer(raylets: dict[int, subprocess.Popen], stop: threading.Event, log: dict) -> None:
    """Kills the first worker raylet (not the head, 0) seen running a point."""
    start = time.monotonic()
    while not stop.is_set():
        for pid in busy_actor_pids():
            index = raylet_of(pid, raylets)
            if index is not None and index != 0:
                os.killpg(raylets[index].pid, signal.SIGKILL)
                log.update(raylet=index, actor_pid=pid, at_s=round(time.monotonic() - start, 1))
                log["killed_wall"] = time.time()
                return
        time.sleep(0.5)


def start_cluster(
    num_raylets: int, env: dict[str, str], temp_dir: Path, raylets: dict[int, subprocess.Popen]
) -> str:
    """Starts the head and the other raylets into `raylets` (so that the caller stops
    them whatever happens); returns the address."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    raylets[0] = ray_start(env, 0, "--head", f"--port={port}", "--include-dashboard=false",
                           f"--temp-dir={temp_dir}")  # fmt: skip
    t0 = time.monotonic()
    deadline = t0 + 600
    while num_alive_nodes(address, env) < 1:
        if time.monotonic() > deadline or raylets[0].poll() is not None:
            raise RuntimeError(f"the Ray head did not start; its logs: {temp_dir}/session_latest")
        time.sleep(2)
    # One raylet at a time: eight starting at once on a 2-core machine starve each
    # other's agents past Ray's start-up timeouts.
    for i in range(1, num_raylets):
        raylets[i] = ray_start(env, i, f"--address={address}")
        deadline = time.monotonic() + 300
        while num_alive_nodes(address, env) < i + 1:
            if time.monotonic() > deadline or raylets[i].poll() is not None:
                raise RuntimeError(f"raylet {i} did not join; its logs: {temp_dir}/session_latest")
            time.sleep(3)
        print(f"raylet {i} joined after {time.monotonic() - t0:.0f} s", flush=True)
    return address


def stop_cluster(raylets: dict[int, subprocess.Popen]) -> None:
    for proc in reversed(list(raylets.values())):
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    for proc in raylets.values():
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raylets", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.raylets < 2:
        parser.error("--raylets must be at least 2 (a head and a node to lose)")

    from sweep.store.results import read_results

    work = Path(tempfile.mkdtemp(prefix="nl-", dir="/tmp"))  # short: Ray's socket paths
    env = {
        **os.environ,
        "HOME": str(work / "home"),
        "RAY_AUTH_MODE": "disabled",
        "PYTHONPATH": str(ROOT),
        "RAY_health_check_period_ms": "1000",  # a lost node is noticed in seconds
        "RAY_health_check_failure_threshold": "5",
        # a loaded machine starts a raylet's agents slowly: wait for their port files
        "RAY_raylet_start_wait_time_s": "120",
    }
    env.pop("RAY_ADDRESS", None)
    (work / "home").mkdir()
    t0 = time.monotonic()
    raylets: dict[int, subprocess.Popen] = {}
    stop, kill = threading.Event(), {}
    thread = threading.Thread(target=killer, args=(raylets, stop, kill))
    try:
        address = start_cluster(args.raylets, env, work / "ray", raylets)
        cluster_s = time.monotonic() - t0
        thread.start()
        t1 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "sweep", *GRID, f"ray.address={address}",
             f"results_dir={work / 'results'}", f"cache_dir={work / 'cache'}"],  # fmt: skip
            capture_output=True, text=True, timeout=1800, cwd=ROOT, env=env,
        )  # fmt: skip
        sweep_s = time.monotonic() - t1
    finally:
        stop.set()
        if thread.is_alive():
            thread.join()
        stop_cluster(raylets)
    rows = read_results(work / "results").to_pylist() if (work / "results").exists() else []
    keys = Counter(r["point_key"] for r in rows)
    statuses = Counter(r["status"] for r in rows)
    nodes = Counter(r["node_id"] for r in rows if r["status"] == "ok")
    report = {
        "raylets": args.raylets,
        "returncode": proc.returncode,
        "points": 8,
        "rows": len(rows),
        "lost": 8 - sum(1 for k in keys if keys[k] >= 1) + statuses.get("worker_lost", 0),
        "duplicates": sum(n - 1 for n in keys.values()),
        "statuses": dict(statuses),
        "attempts": dict(Counter(str(r["attempt"]) for r in rows)),
        "nodes_that_measured": len(nodes),
        "killed": kill,
        "cluster_start_s": round(cluster_s, 1),
        "sweep_s": round(sweep_s, 1),
        "sweep_stderr_tail": proc.stderr[-2000:],
        "machine": machine_info(),
    }
    print(
        markdown_table(
            [
                "raylets",
                "killed raylet",
                "killed at s",
                "rows",
                "lost",
                "duplicates",
                "statuses",
                "nodes that measured",
                "cluster start s",
                "sweep s",
            ],  # fmt: skip
            [
                [
                    str(args.raylets),
                    str(kill.get("raylet", "-")),
                    str(kill.get("at_s", "-")),
                    str(len(rows)),
                    str(report["lost"]),
                    str(report["duplicates"]),
                    ", ".join(f"{k} {v}" for k, v in statuses.items()),
                    str(len(nodes)),
                    f"{cluster_s:.0f}",
                    f"{sweep_s:.0f}",
                ]
            ],  # fmt: skip
        )
    )
    out = args.out or default_report_path("node_loss", "tiny")
    write_json(out, report)
    print(f"wrote {out}")
    shutil.rmtree(work, ignore_errors=True)
    ok = proc.returncode == 0 and report["lost"] == 0 and report["duplicates"] == 0 and kill
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
