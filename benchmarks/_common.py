"""Helpers shared by the scripts in `benchmarks/`: IREE's own tools, machine facts, reports.

Each script here measures one thing with this project's harness and with IREE's own
tool on the same vmfb, then writes a report named by model, host and date. The parts
that are not about the measurement itself (finding the tool, describing the machine,
naming and writing the report, printing a table) live here so the scripts stay short.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweep.execute.cluster import BENCH_ENV
from workers.measure.profile import (
    iree_tool as iree_tool,  # the scripts' IREE tools: the profiler's
)

if TYPE_CHECKING:
    from workers.records import Measurement

ROOT = Path(__file__).resolve().parents[1]
REPORT_DIR = Path("outputs/benchmarks")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """What a reader needs to compare this report with another machine's."""
    from workers.compile.iree import compiler_version

    try:
        iree_compiler = compiler_version()
    except metadata.PackageNotFoundError:  # a runtime-only machine (vmfbs compiled elsewhere)
        iree_compiler = None
    return {
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "nproc": os.cpu_count(),
        "nproc_usable": len(os.sched_getaffinity(0)),
        "mem_total_gb": _mem_total_gb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "iree_base_compiler": _version("iree-base-compiler"),
        "iree_base_runtime": _version("iree-base-runtime"),
        "iree_compiler_version": iree_compiler,
        "jax": _version("jax"),
        "jaxlib": _version("jaxlib"),
        "numpy": _version("numpy"),
        "kernel_thp_mode": kernel_thp_mode(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _mem_total_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) * 1024 / 1e9, 1)
    except (OSError, ValueError):
        pass
    return None


@contextlib.contextmanager
def workspace(args: argparse.Namespace, script: str, model: str) -> Iterator[tuple[Path, Path]]:
    """(the report's path, a work folder) for a benchmark's sweeps: `--out` or the
    default report path; `--work` or a temporary folder, removed afterwards."""
    out = args.out or ROOT / default_report_path(script, model)
    with tempfile.TemporaryDirectory(prefix=f"{script}-") as tmp:
        yield out, args.work or Path(tmp)


def default_report_path(script: str, model: str) -> Path:
    """`outputs/benchmarks/<script>-<model>-<host>-<date>.json`."""
    host = socket.gethostname().split(".")[0]
    date = datetime.date.today().isoformat()
    return REPORT_DIR / f"{script}-{model}-{host}-{date}.json"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Writes `data` atomically: a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _proc_stat_jiffies() -> tuple[int, int, int]:
    """(busy, steal, total) CPU jiffies over all cores since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields  # guest is inside user
    return user + nice + system + irq + softirq, steal, sum(fields)


class OtherCpu:
    """How busy the CPUs were with other processes while the `with` body ran.

    On a shared machine a benchmark is only as good as the quiet around it. This takes
    the busy time of all cores from /proc/stat, subtracts this process's own CPU time,
    that of the children it waited for (a tool run by subprocess) and that of `pids`
    (a benchmark actor in its own process), and divides by wall time x cores: 0.0
    means nothing else ran, 0.5 that one of two cores was taken. `steal` is the time
    the hypervisor gave our virtual CPUs to someone else. Resolution is one clock tick
    (10 ms), so it means little for runs under a second.
    """

    other: float = 0.0
    steal: float = 0.0

    def __init__(self, pids: Sequence[int] = ()) -> None:
        self.pids = tuple(pids)

    def _ours_s(self) -> float:
        t = os.times()
        return sum(t[:4]) + sum(process_cpu_s(pid) for pid in self.pids)

    def __enter__(self) -> OtherCpu:
        self._stat, self._ours = _proc_stat_jiffies(), self._ours_s()
        return self

    def __exit__(self, *exc: object) -> None:
        busy0, steal0, total0 = self._stat
        busy1, steal1, total1 = _proc_stat_jiffies()
        hz = os.sysconf("SC_CLK_TCK")
        ours = self._ours_s() - self._ours  # seconds
        total = max(total1 - total0, 1) / hz  # core-seconds that passed
        self.other = max(0.0, ((busy1 - busy0) / hz - ours) / total)
        self.steal = (steal1 - steal0) / hz / total


def process_cpu_s(pid: int) -> float:
    """User plus system CPU seconds of a live process (all its threads); 0 if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()  # after the command, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(
    max_wait_s: float, threshold: float = 0.1, window_s: float = 1.0, pids: Sequence[int] = ()
) -> float:
    """Waits (at most `max_wait_s`) until other processes use under `threshold` of the CPUs.

    Returns the last window's fraction, so a report can say how quiet it was at start.
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        with OtherCpu(pids) as probe:
            time.sleep(window_s)
        if probe.other < threshold or time.monotonic() >= deadline:
            return probe.other


# Transparent huge pages as benchmark actors get them (`BENCH_ENV`, whose comment says
# why): a fresh iree-benchmark-module process gets none unless given the same tunable.
THP_TUNABLE = BENCH_ENV["GLIBC_TUNABLES"]


def thp_env(enabled: bool, env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) with huge pages for malloc and numpy on or off."""
    env = dict(os.environ if env is None else env)
    tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t and t != THP_TUNABLE]
    env["GLIBC_TUNABLES"] = ":".join([*tunables, THP_TUNABLE] if enabled else tunables)
    env["NUMPY_MADVISE_HUGEPAGE"] = "1" if enabled else "0"
    return env


def thp_active(enabled: bool) -> bool:
    """True if this process started with the environment `thp_env(enabled)` gives."""
    has = THP_TUNABLE in os.environ.get("GLIBC_TUNABLES", "").split(":")
    return has == enabled and os.environ.get("NUMPY_MADVISE_HUGEPAGE") == ("1" if enabled else "0")


def kernel_thp_mode() -> str | None:
    """The kernel's THP mode: "always", "madvise" or "never"."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return None
    return text[text.index("[") + 1 : text.index("]")] if "[" in text else text.strip()


def memory_mb(pid: int | str = "self") -> dict[str, int]:
    """Resident and transparent-huge-page memory of a process, in MB (empty if gone)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return {}
    fields = {"Rss": "rss_mb", "AnonHugePages": "anon_huge_mb"}
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in fields:
            out[fields[name]] = int(value.split()[0]) // 1024
    return out


def add_sweep_args(p: argparse.ArgumentParser) -> None:
    """The options of a benchmark that times whole sweeps (efficiency, search_efficiency)."""
    p.add_argument("--work", type=Path, default=None, help="cache and results here (default: tmp)")
    p.add_argument("--out", type=Path, default=None, help="JSON report path")
    p.add_argument("--quiet-wait-s", type=float, default=60.0, help="wait for quiet CPUs first")
    p.add_argument("overrides", nargs="*", help="more sweep overrides, after --")


def timed_sweep(name: str, overrides: list[str]) -> tuple[Any, Any, float, str]:
    """One sweep in this process, timed from composing its config to its return (Ray's
    start and stop included): (config, outcome, wall seconds, what it printed)."""
    import io

    from sweep.plan.config import load_config
    from sweep.run import run_sweep

    print(f"## {name}: python -m sweep {' '.join(overrides)}", flush=True)
    log = io.StringIO()
    start = time.perf_counter()
    cfg, resolved = load_config(overrides)
    outcome = run_sweep(cfg, resolved, out=log)
    return cfg, outcome, time.perf_counter() - start, log.getvalue()


def time_split(outcome: Any, wall_s: float, bench_s: float) -> dict[str, Any]:
    """A sweep's wall time against the benchmark time inside it, and where the rest went."""
    counters = outcome.counters
    return {
        "wall_s": wall_s,
        "bench_s": bench_s,
        "ratio": wall_s / bench_s,
        "compile_phase_s": counters.compile_phase_s,
        "bench_phase_s": counters.bench_phase_s,
        # actors' start, weight builds and uploads, references, dispatch, Parquet writes
        "bench_phase_overhead_s": counters.bench_phase_s - bench_s,
        # config, Ray start and stop, node inventory, results folder
        "setup_s": wall_s - counters.compile_phase_s - counters.bench_phase_s,
        "num_compiles": counters.num_compiles,
        "num_compile_cache_hits": counters.num_compile_cache_hits,
    }


TIME_COLUMNS = ("wall s", "benchmark s", "wall / benchmark")
PHASE_COLUMNS = ("compile phase s", "bench phase overhead s", "Ray and setup s")


def print_runs(header: Sequence[str], rows: Sequence[Sequence[str]], report_path: Path) -> None:
    print()
    print(markdown_table(header, rows))
    print(f"\nreport: {report_path}")


def time_cells(r: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(wall, benchmark, ratio) and (compile phase, bench-phase overhead, setup) cells."""
    totals = [f"{r['wall_s']:.1f}", f"{r['bench_s']:.1f}", f"{r['ratio']:.3f}"]
    phases = [f"{r[k]:.1f}" for k in ("compile_phase_s", "bench_phase_overhead_s", "setup_s")]
    return totals, phases


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def processes(*files: str) -> Iterator[tuple[int, list[bytes]]]:
    """(pid, the bytes of /proc/<pid>/<file> for each of `files`) of every live process;
    one that exits while it is read is left out."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            contents = [(entry / name).read_bytes() for name in files]
        except OSError:
            continue  # exited while it was read
        yield int(entry.name), contents


def busy_actor_pids(method: str = "run") -> list[int]:
    """Benchmark actors inside `method` right now (Ray titles the process by method):
    with `run`, those inside a point."""
    title = f"ray::BenchActorImpl.{method}".encode()
    return [pid for pid, (cmdline,) in processes("cmdline") if cmdline.startswith(title)]


def num_alive_nodes(address: str, env: dict[str, str]) -> int:
    """Alive nodes of the Ray cluster at `address`, asked from a new process (0: no answer)."""
    probe = (
        f"import ray; ray.init(address={address!r}, logging_level='ERROR'); "
        "print(sum(n['Alive'] for n in ray.nodes()))"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env
        )
    except subprocess.TimeoutExpired:
        return 0
    return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else 0


def fake_measurement(
    tokens: tuple[int, ...], reference: tuple[int, ...] | None = None, **fields: object
) -> Measurement:
    """A measurement as a worker returns it, for code that only reads one: the scheduler's
    tests and `cluster_sim`'s simulated workers."""
    reference = tokens if reference is None else reference
    from workers.measure.reference import num_matching
    from workers.records import Measurement

    matched = num_matching(tokens, reference)
    defaults: dict[str, object] = {
        "prefill_samples_ms": (3.0, 1.0, 2.0),
        "decode_samples_ms": (4.0, 2.0, 3.0, 5.0),
        "prompt_ids": (1, 2),
        "tokens": tokens,
        "reference_tokens": reference,
        "num_tokens_matched": matched,
        "bench_s": 0.5,
        "upload_s": 0.25,
        "weight_bytes": 1000,
        "quant_error": 0.0,
        "fp32_agreement": 1.0,
        "fp32_logit_error": 0.0,
        "bytes_per_token": 3_000_000,
        "peak_gbps": 1.0,
        "hostname": "h",
        "device_name": "a CPU",
        "node_id": "n1",
        "run_wait_frac": 0.0,  # a quiet host (workers.core.host)
        "disturbed": False,
    }
    return Measurement(**{**defaults, **fields})  # type: ignore[arg-type]
