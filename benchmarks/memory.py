"""Peak memory of a whole sweep: driver, Ray, compile tasks and actors together.

A sweep spreads over many processes, so one process's RSS says little. This script
runs a command and samples the machine's used memory (MemTotal - MemAvailable from
/proc/meminfo) twice a second; the peak minus the idle baseline before the start is
the sweep's footprint. It also records the largest single process seen. A 1B fp32
model is 4.9 GB: a benchmark actor should hold it about once.

    python benchmarks/memory.py [--label phase2b] -- python -m sweep +grid=phase2b
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import default_report_path, machine_info, markdown_table, write_json  # noqa: E402

GIB = 1 << 30


def used_bytes() -> int:
    info = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, value = line.partition(":")
        info[name] = int(value.split()[0]) * 1024
    return info["MemTotal"] - info["MemAvailable"]


def largest_process() -> tuple[int, str]:
    """(RSS bytes, command) of the process with the most resident memory."""
    best = (0, "")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            pages = int((entry / "statm").read_text().split()[1])
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        best = max(best, (pages * 4096, cmd[:120]))
    return best


def sample(stop: threading.Event, peaks: dict) -> None:
    while not stop.is_set():
        peaks["used"] = max(peaks["used"], used_bytes())
        rss, cmd = largest_process()
        if rss > peaks["process"][0]:
            peaks["process"] = (rss, cmd)
        time.sleep(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="sweep")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    baseline = used_bytes()
    peaks = {"used": baseline, "process": (0, "")}
    stop = threading.Event()
    sampler = threading.Thread(target=sample, args=(stop, peaks), daemon=True)
    sampler.start()
    start = time.monotonic()
    returncode = subprocess.call(command)
    wall_s = time.monotonic() - start
    stop.set()
    sampler.join()
    report = {
        "command": command,
        "returncode": returncode,
        "wall_s": round(wall_s, 1),
        "baseline_gib": baseline / GIB,
        "peak_used_gib": peaks["used"] / GIB,
        "sweep_peak_gib": (peaks["used"] - baseline) / GIB,
        "largest_process_gib": peaks["process"][0] / GIB,
        "largest_process": peaks["process"][1],
        "machine": machine_info(),
    }
    print(
        markdown_table(
            ["label", "wall s", "peak of all processes GiB", "largest process GiB", "exit"],
            [
                [
                    args.label,
                    f"{wall_s:.0f}",
                    f"{report['sweep_peak_gib']:.2f}",
                    f"{report['largest_process_gib']:.2f}",
                    str(returncode),
                ]
            ],
        )
    )
    print(f"largest process: {report['largest_process']}")
    out = args.out or default_report_path("memory", args.label)
    write_json(out, report)
    print(f"wrote {out}")
    return returncode


if __name__ == "__main__":
    sys.exit(main())
