"""Helpers shared by the scripts in `benchmarks/`: IREE's own tools, machine facts, reports.

Each script here measures one thing with this project's harness and with IREE's own
tool on the same vmfb, then writes a report named by model, host and date. The parts
that are not about the measurement itself (finding the tool, describing the machine,
naming and writing the report, printing a table) live here so the scripts stay short.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import socket
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

REPORT_DIR = Path("outputs/benchmarks")


def iree_tool(name: str) -> str:
    """Path of an IREE runtime tool (`iree-benchmark-module`, `iree-run-module`, ...).

    Prefers the binary inside the installed iree-base-runtime package, so the tool is
    the same build as the `iree.runtime` bindings; the `bin/` entry of the same name is
    only a Python wrapper that starts it. Falls back to the venv and then to PATH.
    """
    try:
        from iree._runtime import libs

        candidate = Path(libs.library_path) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    except ImportError:
        pass
    for candidate in (Path(sys.executable).parent / name, shutil.which(name)):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise FileNotFoundError(
        f"{name} not found: install it with `pip install 'iree-base-runtime>=3.13'`"
    )


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
    from workers.compile import compiler_version

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
        "iree_compiler_version": compiler_version(),
        "jax": _version("jax"),
        "jaxlib": _version("jaxlib"),
        "numpy": _version("numpy"),
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


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
