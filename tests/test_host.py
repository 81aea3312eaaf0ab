"""The host around a timed phase (`workers.core.host`): niceness, the share of CPU other processes
took, and how the readers treat a row measured on a disturbed host.

Real processes and real `/proc` counters: a busy child at niceness 0 shows up in
`busy_frac`, the same child at niceness 19 only where the measuring process is niced.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sweep.readers import analysis, compare, report
from sweep.store.results import ResultsWriter
from tests.helpers import ROOT
from tests.helpers.rows import T0, make_row, md_table, run_main, samples
from workers.core import host

MIN_TICKS = 5  # of the busy child in its window: enough to tell where its ticks went
BUSY = "import time\nend = time.time() + {s}\nwhile time.time() < end: pass"


def _ticks(pid: int) -> int:
    """utime + stime of a process, in USER_HZ ticks (proc(5))."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _busy_child_window(nice: int, seconds: float = 3.0) -> tuple[host.Counters, host.Counters, int]:
    """Host counters around a child that spins for `seconds` at niceness `nice`, and the
    ticks the child used (read before it is reaped)."""
    child = subprocess.Popen(["nice", "-n", str(nice), sys.executable, "-c", BUSY.format(s=60)])
    try:
        time.sleep(0.3)  # past its start-up
        ticks, start = _ticks(child.pid), host._counters()
        time.sleep(seconds)
        end, ticks = host._counters(), _ticks(child.pid) - ticks
    finally:
        child.kill()
        child.wait()
    assert start is not None and end is not None, "/proc/stat and /proc/self/stat are readable"
    return start, end, ticks


@pytest.mark.slow  # seconds of busy processes at two priorities, sampled
def test_a_busy_process_at_niceness_0_counts_and_one_at_19_does_not() -> None:
    """busy_frac * the window's ticks holds what the child took at niceness 0 (within the
    two ticks its reads and the host's are apart); at 19 the child's ticks count only for
    a measuring process that is itself niced. A loaded host gives the child fewer ticks,
    not a different answer."""
    start, end, child_ticks = _busy_child_window(0)
    total = sum(b - a for a, b in zip(start[0], end[0], strict=False))
    assert child_ticks >= MIN_TICKS, f"the nice-0 child hardly ran ({child_ticks} ticks)"
    others = host.busy_frac(start, end) * total
    assert others >= child_ticks - 2, (
        f"a nice-0 busy child took {child_ticks} ticks but busy_frac counts only {others:.0f}"
    )
    start, end, child_ticks = _busy_child_window(19)
    total = sum(b - a for a, b in zip(start[0], end[0], strict=False))
    assert child_ticks >= MIN_TICKS, f"the nice-19 child hardly ran ({child_ticks} ticks)"
    niced_share = host.busy_frac(start, end, include_niced=True) - host.busy_frac(start, end)
    assert niced_share * total >= child_ticks - 2, (
        f"the nice-19 child's {child_ticks} ticks must sit in the niced share only "
        f"({niced_share * total:.0f} ticks there)"
    )


def test_the_sampler_gives_the_window_and_the_rule() -> None:
    with host.HostSampler() as sampler:
        time.sleep(0.2)
    window = sampler.window
    assert 0.19 <= window.finished_at - window.started_at < 5
    assert window.busy_frac is not None and 0.0 <= window.busy_frac <= 1.0
    assert window.num_ticks > 0
    assert window.run_wait_frac is not None, "this kernel keeps schedstat"
    assert window.disturbed == (window.run_wait_frac > host.RUN_WAIT_DISTURBED)


def test_the_tick_fallback_says_when_it_cannot_tell() -> None:
    """Without schedstat the verdict comes from the ticks, and only from enough of them."""
    few = host.HostWindow(0.0, 0.05, busy_frac=0.5, num_ticks=host.MIN_TICKS - 1)
    assert few.disturbed is None, "a few ticks cannot tell quiet from busy"
    assert dataclasses.replace(few, num_ticks=host.MIN_TICKS).disturbed is True
    assert dataclasses.replace(few, busy_frac=0.05, num_ticks=200).disturbed is False
    assert host.HostWindow(0.0, 1.0, busy_frac=None).disturbed is None
    # schedstat decides wherever it is there, whatever the ticks say
    assert dataclasses.replace(few, run_wait_frac=0.01).disturbed is False
    assert dataclasses.replace(few, busy_frac=0.0, run_wait_frac=0.4).disturbed is True


# One thread per CPU hashing for `s` seconds (hashlib lets go of the GIL for large inputs,
# so the threads run at once, as IREE's workers do), timed by a HostSampler. The threads
# outlive the window, as a runtime's thread pool does: schedstat keeps no figures for a
# thread that has ended, so one that ends inside the window is not seen.
SPIN = (
    "import hashlib, json, os, threading, time\n"
    "from workers.core import host\n"
    "data = bytes(1 << 24)  # 16 MiB: a hash takes ms, the GIL is rarely taken\n"
    "done = threading.Event()\n"
    "def spin(end):\n"
    "    while time.perf_counter() < end: hashlib.sha256(data)\n"
    "    done.wait()\n"
    "time.sleep(0.3)  # the busy processes are running\n"
    "ts = []\n"
    "with host.HostSampler() as s:\n"
    "    end = time.perf_counter() + {s}\n"
    "    ts = [threading.Thread(target=spin, args=(end,)) for _ in os.sched_getaffinity(0)]\n"
    "    [t.start() for t in ts]\n"
    "    time.sleep(max(0.0, end - time.perf_counter()))\n"
    "done.set(); [t.join() for t in ts]\n"
    "print(json.dumps([s.window.run_wait_frac, s.window.disturbed]))\n"
)


def _spin_beside(nice: int | None, seconds: float) -> tuple[float, bool]:
    """run_wait_frac and the verdict of a process spinning for `seconds` beside one busy
    process per CPU at niceness `nice` (None: alone)."""
    busy = [
        subprocess.Popen(["nice", "-n", str(nice), sys.executable, "-c", BUSY.format(s=60)])
        for _ in (os.sched_getaffinity(0) if nice is not None else ())
    ]
    try:
        out = subprocess.run(
            [sys.executable, "-c", SPIN.format(s=seconds)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        for b in busy:
            b.kill()
            b.wait()
    frac, disturbed = json.loads(out.stdout)
    return frac, disturbed


@pytest.mark.slow  # competing busy processes, sampled
def test_run_queue_wait_sees_normal_priority_competitors() -> None:
    """One busy process per CPU at niceness 0: each spinning thread shares a core with one
    and waits about half its runnable time. A phase of 0.1 s, ten ticks per CPU, is judged
    as surely as one of a second. Alone (on the quiet VM 0.001-0.007; under a test suite's
    idle Ray more) and beside the same loops at niceness 19 they wait less."""
    frac, disturbed = _spin_beside(0, 0.1)
    assert disturbed is True and frac > 0.3, f"beside nice-0 loops it waited {frac:.3f}"
    quiet, _ = _spin_beside(None, 0.1)
    assert quiet < frac, f"alone it waited {quiet:.3f}, beside nice-0 loops {frac:.3f}"
    niced, _ = _spin_beside(19, 0.3)
    assert niced < frac, f"beside nice-19 loops it waited {niced:.3f}, beside nice-0 {frac:.3f}"


def _snapshot(threads: dict[int, tuple[int, int]], host_cpu_ms: float | None) -> host.Snapshot:
    return host.Snapshot(threads, None if host_cpu_ms is None else int(host_cpu_ms * 1e6))


def test_only_the_wait_other_processes_caused_counts() -> None:
    """Threads that waited 4 ms while other processes used 1 ms of CPU were delayed by the
    host at most 1 ms: the rest they spent behind their own siblings or waking an idle
    CPU. Without the host counter, all of the wait counts."""
    start = _snapshot({1: (0, 0), 2: (0, 0)}, 100.0)
    end = _snapshot({1: (int(5e6), int(1e6)), 2: (int(3e6), int(3e6)), 3: (int(2e6), 0)}, 111.0)
    waits = host.run_wait(start, end)  # own run 10 ms, so others used 11 - 10 = 1 ms
    assert waits == host.Waits(run_ns=int(10e6), wait_ns=int(1e6))
    assert abs(waits.frac - 1 / 11) < 1e-12
    busy = host.run_wait(start, dataclasses.replace(end, host_cpu_ns=int(130e6)))
    assert busy is not None and busy.wait_ns == int(4e6), "others used 20 ms: all 4 ms count"
    unknown = host.run_wait(_snapshot(start.threads, None), end)
    assert unknown is not None and unknown.wait_ns == int(4e6)
    assert host.run_wait(host.Snapshot(None, 0), end) is None, "no schedstat: no figure"


def test_a_paused_stretch_is_left_out() -> None:
    """The warm-up inside a window (`HostSampler.paused`) adds nothing to the wait figure:
    a thread that spins only while paused leaves the run time of the window's own
    stretches alone."""
    with host.HostSampler() as sampler, sampler.paused():
        end = time.perf_counter() + 0.2
        while time.perf_counter() < end:
            pass
    assert sampler.window.finished_at - sampler.window.started_at >= 0.2
    assert sampler.waits is not None and sampler.waits.run_ns < 50e6, "the spin was paused"


def _niceness_of_threads(pid: int) -> set[int]:
    """Every thread's niceness, as `ps -o ni` shows it (field 19 of /proc/PID/task/TID/stat)."""
    out = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        out.add(int((task / "stat").read_text().rsplit(")", 1)[1].split()[16]))
    return out


def test_set_niceness_sets_every_thread() -> None:
    """A child whose main thread is at niceness 3 and whose second thread is at 0 asks for
    0: privileged, every thread ends at 0 (setpriority of the process's pid alone would
    change one thread); unprivileged, raising 3 -> 0 is refused and it says why."""
    script = (
        "import os, threading, time, json\n"
        "from workers.core import host\n"
        "stop = threading.Event()\n"
        "t = threading.Thread(target=stop.wait); t.start()\n"
        "os.setpriority(os.PRIO_PROCESS, 0, 3)  # this thread only\n"
        "got = host.set_niceness(0)\n"
        "print(json.dumps(got), flush=True)\n"
        "time.sleep(1)\n"
        "stop.set()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        line = child.stdout.readline()  # type: ignore[union-attr]
        niceness, why = json.loads(line)
        threads = _niceness_of_threads(child.pid)
    finally:
        child.wait(timeout=30)
    if os.geteuid() == 0:
        assert (niceness, why) == (0, None)
        assert threads == {0}, f"every thread at niceness 0, got {threads}"
    else:  # raising 3 -> 0 is refused: the fallback keeps 3 and says why
        assert niceness == 3 and "not permitted" in why


@pytest.mark.skipif(os.geteuid() != 0, reason="root drops to an unprivileged user here")
def test_an_unprivileged_process_falls_back_and_says_why() -> None:
    """Asking for a higher priority without CAP_SYS_NICE: the niceness stays, and why."""
    script = (
        "import json, os\n"
        "from workers.core import host\n"
        "os.setgid(65534); os.setuid(65534)  # nobody: no CAP_SYS_NICE, RLIMIT_NICE 0\n"
        "print(json.dumps(host.set_niceness(-5)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    niceness, why = json.loads(out.stdout)
    assert niceness == 0, "the process keeps the niceness it had"
    assert "not permitted" in why and "CAP_SYS_NICE" in why and "RAY_worker_niceness" in why


def test_a_positive_priority_is_refused() -> None:
    with pytest.raises(ValueError, match="bench.priority=5"):
        host.set_niceness(5)


def test_bench_priority_is_checked_before_any_work() -> None:
    from sweep.plan.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"bench.priority=3: a niceness from -20"):
        load_config(["+grid=smoke", "bench.priority=3"])
    assert load_config(["+grid=smoke", "bench.priority=-5"])[0].bench.priority == -5


# --- the readers --------------------------------------------------------------------------


def _runs(tmp_path: Path) -> Path:
    """Run a and run b of four points; in b, one point is 2x slower on a disturbed host and
    one 2x slower on a quiet one."""
    rng = np.random.default_rng(7)
    results = tmp_path / "results"
    for run, factor in (("a", 1.0), ("b", 2.0)):
        rows = []
        for i, flag_set in enumerate(("default", "fuse", "O3", "extra")):
            slow = run == "b" and flag_set in ("fuse", "O3")
            busy = 0.4 if run == "b" and flag_set == "fuse" else 0.01
            rows.append(
                make_row(
                    f"p-{flag_set}",
                    "fp32",
                    samples(rng, 100.0 * (factor if slow else 1.0)),
                    flag_set=flag_set,
                    run_id=run,
                    niceness=0,
                    host_busy_frac=busy,
                    run_wait_frac=busy,
                    disturbed=busy > host.RUN_WAIT_DISTURBED,
                    created_at=T0 + dt.timedelta(minutes=i + 10 * (run == "b")),
                )
            )
        ResultsWriter(results, run).write(rows)
    return results


def test_compare_gives_no_verdict_for_a_disturbed_row(tmp_path: Path, capsys) -> None:
    results = _runs(tmp_path)
    code, out, _ = run_main(
        capsys, compare, "a", "b", "--results", str(results), "--format", "json"
    )
    assert code == 0
    points = {p["point_key"]: p for p in json.loads(out)["points"]}
    assert (
        points["p-fuse"]["verdict"] == analysis.DISTURBED and points["p-fuse"]["disturbed"] == "B"
    )
    assert points["p-O3"]["verdict"] == "slower", "a quiet 2x slowdown is still called"
    assert points["p-default"]["verdict"] == "same"
    code, out, _ = run_main(capsys, compare, "a", "b", "--results", str(results))
    _, header, body = md_table(out)
    verdicts = {row[header.index("flag_set")]: row[header.index("verdict")] for row in body}
    assert verdicts["fuse"] == "disturbed (B)"
    assert "1 disturbed" in out and "run_wait_frac" in out


def test_report_marks_disturbed_rows(tmp_path: Path, capsys) -> None:
    results = _runs(tmp_path)
    code, out, _ = run_main(capsys, report, "--results", str(results), "--run", "b")
    assert code == 0
    _, header, body = md_table(out)
    assert header[-1] == "disturbed"
    marks = {row[header.index("flag_set")]: row[-1] for row in body}
    assert marks == {"default": "", "extra": "", "fuse": "1/1", "O3": ""}
    assert "disturbed: 1 of 4 ok rows" in out and "40%" in out
    code, out, _ = run_main(
        capsys, report, "--results", str(results), "--run", "b", "--by", "flag_set"
    )
    _, header, body = md_table(out)
    verdicts = {row[header.index("flag_set")]: row[header.index("verdict")] for row in body}
    assert verdicts["fuse"] == "disturbed" and verdicts["O3"] == "slower"


def test_a_row_that_could_not_be_judged_gets_no_verdict(tmp_path: Path, capsys) -> None:
    """A null `disturbed` from schema 7 on means the window could not tell: compare, the
    report and the flag study say "not judged", never faster or slower. An older row
    without the column's value reads as quiet, as it always did."""
    results = _runs(tmp_path)
    rng = np.random.default_rng(8)
    unknown = make_row(
        "p-O3", "fp32", samples(rng, 200.0), flag_set="O3", run_id="c", niceness=0,
        disturbed=None, created_at=T0 + dt.timedelta(hours=1),
    )  # fmt: skip
    ResultsWriter(results, "c").write([unknown])
    code, out, _ = run_main(capsys, compare, "a", "c", "--results", str(results))
    _, header, body = md_table(out)
    (verdict,) = [row[header.index("verdict")] for row in body]
    assert verdict == "not judged (B)" and "not judged:" in out
    assert analysis.disturbance({**unknown, "schema_version": 7}) is None
    assert analysis.disturbance({**unknown, "schema_version": 6}) is False
    (note,) = report.host_notes([{**unknown, "schema_version": 7}])
    assert note.startswith("not judged: 1 of 1 ok rows")
    base = [{**unknown, "flag_set": "default", "disturbed": False, "schema_version": 7}]
    assert analysis.host_verdict(base, [{**unknown, "schema_version": 7}]) == "not judged"


def test_report_says_when_a_row_ran_niced() -> None:
    rows = [{"status": "ok", "niceness": 15, "disturbed": False}]
    (note,) = report.host_notes(rows)
    assert "niceness 15" in note and "RAY_worker_niceness=0" in note
    assert report.host_notes([{"status": "ok", "niceness": 0}], priority=-5)[0].startswith(
        "priority: rows measured at niceness 0, not bench.priority=-5"
    )
    assert report.host_notes([{"status": "ok", "niceness": 0, "disturbed": False}]) == []


@pytest.mark.slow  # busy processes pinned to each core, sampled
def test_a_core_share_counts_its_own_cores_only() -> None:
    """A GPU point on its core share (`workers.core.threads.CoreShare`) reads the per-CPU
    counters of its cores: a child spinning on one CPU lands in that CPU's counters, a
    fraction of the host's."""
    cpus = sorted(os.sched_getaffinity(0))
    assert len(cpus) >= 2, "a core share needs a host of two CPUs or more"
    spin = f"import os\nos.sched_setaffinity(0, {{{cpus[1]}}})\n" + BUSY.format(s=60)
    child = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.3)
        ticks = _ticks(child.pid)
        start, whole = host._counters([cpus[1]]), host._counters()
        time.sleep(2.0)
        end, whole_end = host._counters([cpus[1]]), host._counters()
        ticks = _ticks(child.pid) - ticks
    finally:
        child.kill()
        child.wait()
    assert start is not None and end is not None and whole is not None and whole_end is not None
    one_cpu = sum(b - a for a, b in zip(start[0], end[0], strict=False))
    all_cpus = sum(b - a for a, b in zip(whole[0], whole_end[0], strict=False))
    assert one_cpu < 0.75 * all_cpus, "the share's counters are its one CPU's, not the host's"
    assert host.busy_frac(start, end) * one_cpu >= ticks - 2, "the child's ticks are on its CPU"


def test_settle_waits_for_normal_priority_work_only() -> None:
    """Before a timed phase the worker waits for the host to calm down: alone it goes on
    after one stretch; beside busy loops at niceness 0 it waits its whole allowance,
    beside the same loops at niceness 19 it does not wait for them."""
    assert host.settle(max_wait_s=1.0) < 0.5, "a quiet host: no wait"
    for nice, waits in ((0, True), (19, False)):
        busy = [
            subprocess.Popen(["nice", "-n", str(nice), sys.executable, "-c", BUSY.format(s=60)])
            for _ in os.sched_getaffinity(0)
        ]
        try:
            time.sleep(0.3)  # past their start-up
            waited = host.settle(max_wait_s=0.6)
        finally:
            for b in busy:
                b.kill()
                b.wait()
        assert (waited >= 0.4) is waits, f"beside nice-{nice} loops it waited {waited:.2f} s"
