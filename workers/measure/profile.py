"""Where a step's time goes: IREE's own per-dispatch profile of a point's graphs.

IREE 3.13 profiles itself (HAL device profiling, read by `iree-profile`), but its
Python bindings cannot write a profile: `HalDevice.begin_profiling` takes no sink
(verified with 3.13). So the profile comes from IREE's benchmark tool, run by the
benchmark worker after the point's timed steps, on the same decode vmfb and the same
resident weights (written once per weight set as raw binary tool inputs under the
cache directory), with a zero KV cache: the graph is static-shaped and does the same
work on any values. Prefill is profiled the same way, a few calls of a zero prompt of the
point's length (`PREFILL_CALLS`): where pp's time goes. A graph that holds its weights as parameters
(`workers.model.parameters`) takes them from an `.irpa` archive of the same arrays
(`--parameters=model=FILE`, written once per weight set), so the tool loads the module
as the worker did: its initializers pack the weights, off the profiled calls.
`host-execution` gives per-dispatch spans on the CPU drivers; CUDA gets
`dispatch-events` (device timestamps).

From the profile come one record per dispatch function (calls and milliseconds per
decode step, its kind from its name), `device_ms`: the time per step during which
some dispatch ran (the union of the spans, so dispatches that overlap count once), and
`call_ms`: the tool's own wall time per profiled call. Profiling costs time (on this
project's 2-core CPU host a 1B fp32 decode call took 365 ms unprofiled, 415 ms
profiled, of which 408 ms inside dispatches), so the profile gives the split, not the
time: the share of a profiled call spent inside dispatches (`device_share`), which the
row applies to the point's unprofiled median step.
The raw `.ireeprof` comes back too, so `iree-profile explain` can be run on it later.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from workers.core.files import atomic_write
from workers.core.kinds import Weights
from workers.formats.weights import VariantWeights
from workers.model.export import GraphSpec
from workers.records import DispatchKind, DispatchTime, Profile

# A dispatch's kind from the summary IREE puts in its name (the most expensive op:
# compiler/src/iree/compiler/Dialect/Flow/Transforms/AnnotateDispatches.cpp), first match.
KINDS: tuple[tuple[str, DispatchKind], ...] = (
    (r"(^|_)(batch_)?(matmul|vecmat|matvec|mmt4d|contract|conv)", DispatchKind.MATMUL),
    (r"(^|_)(softmax|attention)", DispatchKind.ATTENTION),
    (r"(^|_)elementwise_transpose|(^|_)transpose", DispatchKind.TRANSPOSE),
    (r"(^|_)reduction", DispatchKind.REDUCTION),
    # data tiling's packing (`flow.tensor.encode`: `_encoding_3_encode_512x64xbf16_to_...`)
    (r"(^|_)(encode|set_encoding|unset_encoding|pack|unpack)(_|$)", DispatchKind.PACK),
    (r"(^|_)(elementwise|generic)", DispatchKind.ELEMENTWISE),
    (r"memcpy|copy|(^|_)slice|(^|_)update", DispatchKind.COPY),
)
TOOL_TIMEOUT_S = 600.0
PREFILL_CALLS = 3  # prefill calls profiled at most: one takes a second or more at 512 tokens


def dispatch_kind(name: str) -> str:
    """matmul, attention, transpose, reduction, elementwise, copy or other."""
    summary = re.sub(r"^.*?_dispatch_\d+_?", "", name)
    for pattern, kind in KINDS:
        if re.search(pattern, summary):
            return kind
    return DispatchKind.OTHER


def iree_tool(name: str) -> str:
    """Path of an IREE runtime tool (`iree-benchmark-module`, `iree-profile`, ...).

    The binary inside the installed iree-base-runtime package, so the tool is the same
    build as the `iree.runtime` bindings; else the venv's `bin/`, else PATH.
    """
    import shutil

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


def profile_graph(
    vmfb: bytes,
    graph: GraphSpec,
    vw: VariantWeights,
    driver: str,
    *,
    weights_key: str,
    values: dict[str, int],
    num_calls: int,
    inputs_dir: Path,
    num_threads: int = 0,
) -> Profile:
    """Profiles `num_calls` calls of a graph with IREE's tool (see module docstring).

    `values`: its scalar inputs by name (decode's `token` and `pos`, prefill's
    `real_len`), every other dynamic input zero; `num_threads` local-task workers as the
    point ran with (0: the default). A graph whose weights are parameters is called as its
    module's entry point on an `.irpa` of them (`GraphSpec.entry_flags`).
    """
    mode = "dispatch-events" if driver == "cuda" else "host-execution"
    if graph.weights == Weights.PARAMETERS:
        entry, weights = graph.entry_flags(weight_archive(vw, weights_key, inputs_dir)), []
    else:
        entry, weights = graph.entry_flags(), weight_inputs(vw, weights_key, inputs_dir)
    dynamic = graph.args()[len(vw.specs) :]  # token, pos, kcache, vcache; tokens, real_len
    inputs = [*weights, *(f"--input={a.tool_type}={values.get(a.name, 0)}" for a in dynamic)]
    with tempfile.TemporaryDirectory(prefix="sweep-profile-") as tmp:
        module, output = Path(tmp) / "graph.vmfb", Path(tmp) / "graph.ireeprof"
        module.write_bytes(vmfb)
        command = [
            iree_tool("iree-benchmark-module"),
            f"--device={driver}",
            *([f"--task_topology_max_group_count={num_threads}"] if num_threads else []),
            f"--module={module}",
            *entry,
            *inputs,
            f"--benchmark_min_time={num_calls}x",
            "--benchmark_repetitions=1",
            "--benchmark_format=json",
            f"--device_profiling_mode={mode}",
            f"--device_profiling_output={output}",
        ]
        call_ms = _call_ms(_run(command))
        events = _jsonl(
            [
                iree_tool("iree-profile"),
                "dispatch",
                "--format=jsonl",
                "--dispatch_events",
                str(output),
            ]
        )
        raw = output.read_bytes()
    dispatches, device_ms = summarize(events, num_calls)
    return Profile(dispatches, device_ms, num_calls, mode, raw, shlex.join(command), call_ms)


def summarize(
    events: list[dict[str, Any]], num_calls: int
) -> tuple[tuple[DispatchTime, ...], float]:
    """Per-dispatch totals and the busy time per call, from `iree-profile` event records."""
    spans = [e for e in events if e.get("type") in ("dispatch_event", "host_dispatch_event")]
    spans = [e for e in spans if e.get("valid", True)]
    if not spans:
        raise RuntimeError("the profile holds no dispatch events")
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # name -> [calls, ns]
    intervals = []
    for e in spans:
        totals[e["key"]][0] += 1
        totals[e["key"]][1] += e["duration_ns"]
        start = e.get("start_host_time_ns", e.get("start_time_ns"))
        end = e.get("end_host_time_ns", e.get("end_time_ns"))
        if start is not None and end is not None:
            intervals.append((start, end))
    dispatches = tuple(
        DispatchTime(name, dispatch_kind(name), calls / num_calls, ns / num_calls / 1e6)
        for name, (calls, ns) in sorted(totals.items(), key=lambda kv: -kv[1][1])
    )
    busy = _union_ns(intervals) if intervals else sum(ns for _, ns in totals.values())
    return dispatches, busy / num_calls / 1e6


def weight_inputs(vw: VariantWeights, key: str, inputs_dir: Path) -> list[str]:
    """`--input=SHAPExTYPE=@file.bin` for every weight, the files written once per weight
    set (`key` names it: weights, variant, layout) and reused by every later profile."""
    folder = _weights_folder(key, inputs_dir)
    done = folder / "inputs.json"
    if not done.exists():
        folder.mkdir(parents=True, exist_ok=True)
        for i, array in enumerate(vw.arrays):
            raw = np.ascontiguousarray(array).view(np.uint8)
            atomic_write(folder / f"w{i:04d}.bin", lambda f, raw=raw: raw.tofile(f))
        atomic_write(done, json.dumps([spec.name for spec in vw.specs]).encode())
    return [
        f"--input={spec.tool_type}=@{folder / f'w{i:04d}.bin'}" for i, spec in enumerate(vw.specs)
    ]


def weight_archive(vw: VariantWeights, key: str, inputs_dir: Path) -> Path:
    """The weights as an `.irpa` archive of named parameters (`iree.runtime`'s own
    writer), written once per weight set (`key`) and reused by every later profile."""
    import iree.runtime as rt

    from workers.runtimes.iree import as_runtime_bytes

    path = _weights_folder(key, inputs_dir) / "weights.irpa"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = {s.name: as_runtime_bytes(a) for s, a in zip(vw.specs, vw.arrays, strict=True)}
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            partial = Path(tmp) / path.name  # the archive appears whole or not at all
            rt.save_archive_file(entries, str(partial))
            os.replace(partial, path)
    return path


def _weights_folder(key: str, inputs_dir: Path) -> Path:
    return inputs_dir / hashlib.sha256(key.encode()).hexdigest()[:20]


def _union_ns(intervals: list[tuple[int, int]]) -> int:
    total, end = 0, None
    for start, stop in sorted(intervals):
        if end is None or start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total


def _run(command: list[str]) -> str:
    proc = subprocess.run(command, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(command[:2])} failed ({proc.returncode}): {proc.stderr[-2000:]}"
        )
    return proc.stdout


_TIME_UNITS_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}


def _call_ms(benchmark_json: str) -> float | None:
    """The wall time per call from `iree-benchmark-module --benchmark_format=json`."""
    try:
        (bench,) = [b for b in json.loads(benchmark_json)["benchmarks"] if "real_time" in b]
        return float(bench["real_time"]) * _TIME_UNITS_MS[bench.get("time_unit", "ns")]
    except (ValueError, KeyError, TypeError):
        return None


def _jsonl(command: list[str]) -> list[dict[str, Any]]:
    proc = subprocess.run(command, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"iree-profile failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
