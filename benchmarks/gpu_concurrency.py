"""GPU concurrency: does a GPU point measure the same beside N-1 others as alone?

Why: a host times one point per GPU at once (`bench.gpu_concurrency`, default 0), each
on its own share of the host's cores. The points then share the host's PCIe links and
memory bus, and the number is only worth having if that costs little. This script
times the same point both ways through the sweep itself: `bench.repeats=N` makes N
copies of the point; with `bench.gpu_concurrency=1` they run one after another, each
alone on the host (the rule before), and with 0 they run at once, one per device. The
rows' `num_concurrent` says which ran beside how many. `--rounds` alternates the two
conditions (alone, together, alone, ...) so drift lands in both alike; a condition's
number is the median of its rows' `decode_ms_p50`.

- `--device cuda`: N = the GPUs `nvidia-smi -L` lists (or `--num-devices`).
- `--device cpu`, the analogue that runs on a CPU-only machine: a local Ray told it has
  N GPUs and 2N CPUs (Ray's GPU resource stands in for the GPUs) and a `fakegpu` device
  that asks for a GPU but runs IREE's CPU driver, with `grid.threads=[1]`: alone, the
  point runs on one pinned core with the others idle; together, N points run on N
  different pinned cores (the scheduler's core shares). N defaults to the CPUs this
  process may use, at most 2.

Usage:
    python benchmarks/gpu_concurrency.py --device cpu [--rounds 3] [--out PATH] [-- overrides]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _common as common  # noqa: E402
from sweep.readers.analysis import median  # noqa: E402

SCRIPT = "gpu_concurrency"
POINT = [
    "+grid=smoke",  # the tiny model
    "~grid.flag_sets.O3",
    "grid.variants=[fp32]",
    "grid.prompt_lengths=[8]",
    "grid.max_seq=1024",
    "bench.decode_steps=800",
    "rerun=true",
]
FAKE_GPU = [
    "+device@devices.fakegpu=cpu",
    "devices.fakegpu.name=fakegpu",
    "devices.fakegpu.ray_resource=GPU",
    "grid.devices=[fakegpu]",
    "grid.threads=[1]",
]
CONDITIONS = {"alone": 1, "together": 0}  # condition -> bench.gpu_concurrency


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--num-devices", type=int, default=None, help="N (default: see above)")
    p.add_argument("--rounds", type=int, default=3, help="alone, together: this many times")
    p.add_argument("--work", type=Path, default=None, help="cache and results here (default: tmp)")
    p.add_argument("--out", type=Path, default=None, help="JSON report path")
    p.add_argument("overrides", nargs="*", help="more sweep overrides, after --")
    return p.parse_args(argv)


def num_gpus() -> int:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    listed = subprocess.run([smi, "-L"], capture_output=True, text=True)
    return len(listed.stdout.splitlines()) if listed.returncode == 0 else 0


def start_ray(device: str, num_devices: int) -> None:
    """A local Ray for every sweep of the run (each sweep joins it); for the CPU analogue
    one that says it has `num_devices` GPUs and 2 CPUs for each (the scheduler's
    `CORES_PER_GPU_POINT`)."""
    import ray

    from sweep.execute.cluster import WORKER_PRIORITY
    from workers.core.devices import CPU_BENCH_RESOURCE

    fake = {"num_gpus": num_devices, "num_cpus": 2 * num_devices} if device == "cpu" else {}
    ray.init(
        address="local",
        resources={CPU_BENCH_RESOURCE: 1},
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
        include_dashboard=False,
        log_to_driver=False,
        _system_config=dict(WORKER_PRIORITY),
        **fake,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import os

    n = args.num_devices or (
        num_gpus() if args.device == "cuda" else min(2, len(os.sched_getaffinity(0)))
    )
    if n < 2:
        raise SystemExit(f"{SCRIPT}: needs 2 or more devices, found {n} ({args.device})")
    work = args.work or Path(tempfile.mkdtemp(prefix=f"{SCRIPT}-"))
    device = FAKE_GPU if args.device == "cpu" else ["grid.devices=[cuda]"]
    base = [*POINT, *device, f"bench.repeats={n}", f"results_dir={work / 'results'}",
            f"cache_dir={work / 'cache'}", *args.overrides]  # fmt: skip
    start_ray(args.device, n)
    common.timed_sweep("warm-up (compiles)", [*base, "bench.repeats=1"])
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in CONDITIONS}
    for round_ in range(args.rounds):
        for name, limit in CONDITIONS.items():
            _, outcome, _, log = common.timed_sweep(
                f"{name} {round_ + 1}", [*base, f"bench.gpu_concurrency={limit}"]
            )
            if outcome.exit_code != 0:
                raise SystemExit(f"{SCRIPT}: the {name} sweep failed:\n{log[-3000:]}")
            rows[name] += outcome.rows
    report = {
        "settings": {
            "device": args.device,
            "num_devices": n,
            "rounds": args.rounds,
            "overrides": base,
        },  # fmt: skip
        "conditions": {name: summarize(r) for name, r in rows.items()},
        "machine": common.machine_info(),
    }
    alone = report["conditions"]["alone"]["decode_ms_p50"]
    report["together_over_alone"] = report["conditions"]["together"]["decode_ms_p50"] / alone
    print_report(report)
    path = args.out or common.default_report_path(SCRIPT, f"tiny-{args.device}{n}")
    common.write_json(path, report)
    print(f"\nreport: {path}")
    return report


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    medians = [r["decode_ms_p50"] for r in rows]
    return {
        "decode_ms_p50": median(medians),
        "rows_decode_ms_p50": medians,
        "num_concurrent": sorted(r["num_concurrent"] for r in rows),
        # the load on the point's cores from other processes (its core share's, together)
        "host_busy_frac": median([r["host_busy_frac"] for r in rows]),
        "threads": sorted({r["threads"] for r in rows}),
        "node_ids": sorted({r["node_id"] for r in rows}),
    }


def print_report(report: dict[str, Any]) -> None:
    header = ("condition", "rows", "ms/token p50 (median of rows)", "num_concurrent", "cores",
              "host_busy_frac")  # fmt: skip
    lines = [
        [name, str(len(c["rows_decode_ms_p50"])), f"{c['decode_ms_p50']:.3f}",
         ",".join(map(str, sorted(set(c["num_concurrent"])))), ",".join(map(str, c["threads"])),
         f"{c['host_busy_frac']:.2f}"]
        for name, c in report["conditions"].items()
    ]  # fmt: skip
    print()
    print(common.markdown_table(header, lines))
    print(f"\ntogether / alone: {report['together_over_alone']:.3f}")


if __name__ == "__main__":
    main()
