"""Whole sweeps on one host, seen from outside: the priority their benchmark actors run at,
and two sweeps that never compile beside each other's timed phases.

Each test starts `python -m sweep +grid=smoke` as its own process (its own local Ray,
as a user would) and reads what the operating system and the rows say.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sweep.store.results import read_results
from tests.helpers import ROOT
from workers.core.locks import HOST_LOCK_ENV, host_lock_path

pytestmark = pytest.mark.slow  # real Ray clusters and iree-compile

SWEEP_TIMEOUT_S = 900


def start_sweep(tmp_path: Path, name: str, *overrides: str) -> subprocess.Popen[str]:
    """`python -m sweep +grid=smoke` with its own results and cache, on the host's one lock."""
    command = [
        sys.executable,
        "-m",
        "sweep",
        "+grid=smoke",
        f"results_dir={tmp_path / name / 'results'}",
        f"cache_dir={tmp_path / name / 'cache'}",
        *overrides,
    ]
    env = {**os.environ, HOST_LOCK_ENV: str(host_lock_path())}
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(*sweeps: subprocess.Popen[str]) -> None:
    outputs = [p.communicate(timeout=SWEEP_TIMEOUT_S)[0] for p in sweeps]
    codes = [p.returncode for p in sweeps]
    assert codes == [0] * len(sweeps), "\n".join(o[-3000:] for o in outputs)


def _stat_fields(path: Path) -> list[str]:
    """Fields of a /proc stat file after the command name (field 3 onwards, proc(5))."""
    return path.read_text().rsplit(")", 1)[1].split()


def descendants_titled(root_pid: int, title: bytes) -> dict[int, bytes]:
    """Processes below `root_pid` whose command line starts with `title` (Ray titles its
    workers `ray::Class.method`, `ray::IDLE`, ...), with their command lines; other users'
    Ray clusters on the host are not below it."""
    parents, titles = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat_fields(entry / "stat")[1])
                titles[int(entry.name)] = (entry / "cmdline").read_bytes()
            except (OSError, ValueError, IndexError):
                continue
    found = {}
    for pid, cmdline in titles.items():
        if not cmdline.startswith(title):
            continue
        ancestor = pid
        while ancestor in parents and ancestor not in (0, 1, root_pid):
            ancestor = parents[ancestor]
        if ancestor == root_pid:
            found[pid] = cmdline
    return found


def _niceness(pid: int) -> tuple[str, set[int]]:
    """(`ps -o ni` of the process, the niceness of each of its threads from /proc)."""
    ps = subprocess.run(["ps", "-o", "ni=", "-p", str(pid)], capture_output=True, text=True)
    threads = {int(_stat_fields(task / "stat")[16]) for task in Path(f"/proc/{pid}/task").iterdir()}
    return ps.stdout.strip(), threads


def test_benchmark_actors_measure_at_niceness_0(tmp_path: Path) -> None:
    """While a smoke sweep runs, `ps -o ni` of its benchmark actor (and /proc, every thread)
    shows 0, not Ray's default 15; so do its other Ray workers (compile tasks, idle ones),
    which nothing but the local Ray's configuration sets; the rows record niceness 0."""
    # fp32 at the default flags: 2 points, 3 graphs (compile tasks, then the actor)
    sweep = start_sweep(tmp_path, "one", "grid.variants=[fp32]", "~grid.flag_sets.O3")
    seen: dict[int, tuple[bytes, str, set[int]]] = {}
    try:
        deadline = time.monotonic() + SWEEP_TIMEOUT_S
        while sweep.poll() is None and time.monotonic() < deadline:
            for pid, title in descendants_titled(sweep.pid, b"ray::").items():
                try:
                    ps, threads = _niceness(pid)
                except OSError:
                    continue  # gone between the listing and the read
                if ps:
                    seen[pid] = (title, ps, threads)
            time.sleep(0.2)
    finally:
        finish(sweep)
    actors = [pid for pid, (title, _, _) in seen.items() if title.startswith(b"ray::BenchActor")]
    assert actors, f"no benchmark actor of the sweep was seen while it ran: {seen}"
    for pid, (title, ps, threads) in seen.items():
        name = title.split(b"\0")[0].decode()
        assert ps == "0", f"{name} ({pid}): ps -o ni shows {ps!r}; Ray's workers must start at 0"
        assert threads == {0}, f"{name} ({pid}): its threads run at niceness {threads}"
    rows = read_results(tmp_path / "one" / "results").to_pylist()
    assert rows and {r["niceness"] for r in rows} == {0}


Interval = tuple[Any, Any]


def _compile_intervals(rows: list[dict[str, Any]]) -> set[Interval]:
    spans = set()
    for r in rows:
        for graph in ("prefill", "decode"):
            start, end = r[f"{graph}_compile_started_at"], r[f"{graph}_compile_finished_at"]
            assert start is not None and end is not None and start <= end, r["point_key"]
            spans.add((start, end))
    return spans


def _timed_intervals(rows: list[dict[str, Any]]) -> set[Interval]:
    spans = {(r["timed_started_at"], r["timed_finished_at"]) for r in rows}
    assert all(s is not None and e is not None and s <= e for s, e in spans), spans
    return spans


def _overlaps(a: Interval, b: Interval) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def test_two_sweeps_on_one_host_never_compile_beside_a_timed_phase(tmp_path: Path) -> None:
    """Two smoke sweeps 3 s apart, each with its own results and cache (so each compiles
    every graph itself), on one host lock: from the rows' phase timestamps, no compile of
    either overlaps a timed phase of the other. The first sweep is one format at one flag
    set (two prompt lengths), the second both at both on one prompt length, so the first
    compiles 3 graphs to the second's 8 and measures while the second still compiles: the
    test asserts that the two did interleave, else it would show nothing."""
    first = start_sweep(tmp_path, "a", "grid.variants=[fp32]", "~grid.flag_sets.O3")
    time.sleep(3)
    second = start_sweep(tmp_path, "b", "grid.prompt_lengths=[8]")
    finish(first, second)
    rows = {name: read_results(tmp_path / name / "results").to_pylist() for name in ("a", "b")}
    assert [len(rows["a"]), len(rows["b"])] == [2, 4]
    for name, these in rows.items():
        assert {r["status"] for r in these} == {"ok"}, name
        assert not any(r["compile_cache_hit"] for r in these), f"{name} compiled its graphs"
    compiles = {name: _compile_intervals(these) for name, these in rows.items()}
    timed = {name: _timed_intervals(these) for name, these in rows.items()}
    a_measuring = (min(s for s, _ in timed["a"]), max(e for _, e in timed["a"]))
    assert any(_overlaps(c, a_measuring) for c in compiles["b"]), (
        "no compile of the second sweep fell inside the first one's measurements: the two "
        f"did not interleave, so the test shows nothing (a {a_measuring}, b {compiles['b']})"
    )
    for mine, other in (("a", "b"), ("b", "a")):
        clashes = [
            (c, t) for c, t in itertools.product(compiles[mine], timed[other]) if _overlaps(c, t)
        ]
        assert not clashes, (
            f"a compile of sweep {mine} overlapped a timed phase of {other}: {clashes}"
        )
