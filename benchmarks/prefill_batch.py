"""Prefill at batch B against batch 1: where the extra time goes, dispatch by dispatch.

    python benchmarks/prefill_batch.py --model llama-3.2-1b --bucket 256 --max-seq 1024

Compiles the prefill graph of each batch size (fp32, default flags, llvm-cpu for this
host), runs one call of each with IREE's own tool on zero inputs (dense kernels take the
same time on any values) under its profiler (`--device_profiling_mode=host-execution`),
and prints each dispatch kind's time per batch with the ratio to batch 1, then each
matmul dispatch with its form in the `--compile-to=flow` output: `A.B^T` (both operands
contiguous along the contraction) or `A.B` (the right operand [K, N]). The question it
answers: does batch B cost B times batch 1, and if not, which dispatch does not scale.
The report goes to `outputs/benchmarks/prefill_batch-<model>-<host>-<date>.json`.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import default_report_path, iree_tool, machine_info, markdown_table, write_json

from sweep.plan.config import load_config
from workers.compile.iree import iree_compile_path
from workers.core.config import preset
from workers.core.kinds import GraphKind
from workers.measure.profile import dispatch_kind
from workers.model.export import GraphSpec, export_graph

TARGET = [
    "--iree-input-type=stablehlo",
    "--iree-hal-target-device=local",
    "--iree-hal-local-target-device-backends=llvm-cpu",
    "--iree-llvmcpu-target-cpu=host",
]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llama-3.2-1b", help="a preset of workers/core/config.py")
    p.add_argument("--bucket", type=int, default=256, help="prefill tokens per sequence")
    p.add_argument("--max-seq", type=int, default=1024)
    p.add_argument("--batches", default="1,4")
    p.add_argument("--layout", default="out_major", choices=["in_major", "out_major"])
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args()


def matmul_forms(flow: str) -> dict[str, str]:
    """Each matmul dispatch of a flow module: A.B^T (indexing maps given) or A.B."""
    forms = {}
    pattern = (
        r"func.func @main_dispatch_\d+_((?:batch_)?matmul\w*)\(.*?linalg\.(?:batch_)?matmul(.*?)ins"
    )
    for m in re.finditer(pattern, flow, re.S):
        forms[m.group(1)] = "A.B^T" if "affine_map" in m.group(2) else "A.B"
    return forms


def profile_one(spec: GraphSpec, work: Path) -> dict[str, Any]:
    src = work / f"b{spec.batch}.mlir"
    src.write_text(export_graph(spec).stablehlo)
    flow, vmfb, prof = (work / f"b{spec.batch}{ext}" for ext in (".flow", ".vmfb", ".ireeprof"))
    compiler = iree_compile_path()
    subprocess.run([compiler, str(src), *TARGET, "--compile-to=flow", "-o", str(flow)], check=True)
    subprocess.run([compiler, str(src), *TARGET, "-o", str(vmfb)], check=True)
    values = {"real_len": str(spec.bucket)}
    inputs = [f"--input={a.tool_type}={values.get(a.name, '0')}" for a in spec.args()]
    start = time.perf_counter()
    bench = subprocess.run(
        [
            iree_tool("iree-benchmark-module"),
            "--device=local-task",
            f"--module={vmfb}",
            "--function=main",
            *inputs,
            "--benchmark_min_time=1x",
            "--benchmark_format=json",
            "--device_profiling_mode=host-execution",
            f"--device_profiling_output={prof}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    wall_s = time.perf_counter() - start
    call_ms = json.loads(bench.stdout)["benchmarks"][0]["real_time"]
    events = subprocess.run(
        [iree_tool("iree-profile"), "dispatch", "--format=jsonl", str(prof)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    dispatch_ms: dict[str, float] = collections.defaultdict(float)
    for line in events.splitlines():
        event = json.loads(line)
        if event.get("type") == "host_dispatch_group":
            name = re.sub(r"^main_dispatch_\d+_", "", event["key"])
            dispatch_ms[name] += event["total_ns"] / 1e6
    return {
        "batch": spec.batch,
        "call_ms": call_ms,
        "wall_s": wall_s,
        "dispatch_ms": dict(dispatch_ms),
        "matmul_forms": matmul_forms(flow.read_text()),
    }


def main() -> None:
    args = parse_args()
    cfg, _ = load_config(["+grid=phase2b"])
    model = preset(args.model)
    batches = [int(b) for b in args.batches.split(",")]
    runs = []
    with tempfile.TemporaryDirectory(prefix="prefill-batch-") as tmp:
        for batch in batches:
            spec = GraphSpec(
                model,
                cfg.variants["fp32"],
                args.max_seq,
                GraphKind.PREFILL,
                args.bucket,
                args.layout,
                batch=batch,
            )
            runs.append(profile_one(spec, Path(tmp)))
            print(f"batch {batch}: {runs[-1]['call_ms']:.0f} ms per call", flush=True)
    base = runs[0]
    by_kind = [collections.defaultdict(float) for _ in runs]
    for run, kinds in zip(runs, by_kind, strict=True):
        for name, ms in run["dispatch_ms"].items():
            kinds[dispatch_kind(name)] += ms
    header = ["dispatch kind", *(f"b{r['batch']} ms" for r in runs), f"b{runs[-1]['batch']}/b1"]
    rows = [
        [kind, *(f"{k.get(kind, 0.0):.1f}" for k in by_kind), _ratio(by_kind, kind)]
        for kind in sorted(by_kind[-1], key=lambda k: -by_kind[-1][k])
    ]
    total = [r["call_ms"] for r in runs]
    rows.append(["whole call", *(f"{t:.0f}" for t in total), f"{total[-1] / total[0]:.1f}"])
    matmuls = [
        [f"b{r['batch']}", name, r["matmul_forms"][name], f"{r['dispatch_ms'].get(name, 0):.1f}"]
        for r in (base, runs[-1])
        for name in sorted(r["matmul_forms"], key=lambda n: -r["dispatch_ms"].get(n, 0))
    ]
    path = args.out or default_report_path("prefill_batch", args.model)
    write_json(
        path, {"machine": machine_info(), "args": vars(args) | {"out": str(path)}, "runs": runs}
    )
    print()
    print(markdown_table(header, rows))
    print()
    print(markdown_table(["batch", "matmul dispatch", "form", "ms"], matmuls))
    print(f"\nreport: {path}")


def _ratio(by_kind: list[dict[str, float]], kind: str) -> str:
    first, last = by_kind[0].get(kind, 0.0), by_kind[-1].get(kind, 0.0)
    return f"{last / first:.1f}" if first else ""


if __name__ == "__main__":
    main()
