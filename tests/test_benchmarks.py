"""benchmarks/fidelity.py end to end on the tiny model: our runner and IREE's own tool
on the same vmfb and inputs. Only that the comparison is made honestly is asserted
(same tokens every run, a sample per step on each side, the ratio their medians give):
the ratio itself belongs to the benchmark's report, not to a timed unit test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow  # iree-compile and IREE's own tools

ROOT = Path(__file__).resolve().parents[1]


def _fidelity(tmp_path: Path, shared_cache: Path, *extra: str) -> tuple[str, dict[str, Any]]:
    """fidelity.py on the tiny model through the bare runner: (its stdout, its report)."""
    out = tmp_path / "fidelity.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "fidelity.py"),
        *("--model", "tiny", "--via", "runner", "--steps", "4"),
        *("--warmup", "1", "--prompt-length", "8", "--max-seq", "64"),
        *("--quiet-wait-s", "0", "--retries", "0"),
        *("--cache-dir", str(shared_cache / "fidelity"), "--out", str(out)),
        *extra,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_fidelity_compares_both_sides_on_the_same_graph(tmp_path: Path, shared_cache: Path):
    stdout, report = _fidelity(tmp_path, shared_cache, "--rounds", "2")
    assert set(report["variants"]) == {"fp32", "int4"}
    for variant, r in report["variants"].items():
        assert len(r["rounds"]) == 2, variant
        for rnd in r["rounds"]:
            assert len(rnd["ours_samples_ms"]) == 4 and len(rnd["theirs_samples_ms"]) == 4
        assert r["ratio"] == r["ours_ms"] / r["iree_benchmark_module_ms"] > 0
        assert r["ratio_ci95"][0] <= r["ratio"] <= r["ratio_ci95"][1]
        assert len(r["tokens"]) == 1 + 1 + 4, "prefill token, warmup and timed steps"
        assert "--device=local-task" in r["iree_benchmark_module_command"]
        assert r["num_dispatches"] > 0
    assert "| fp32 | cpu | runner |" in stdout


def test_fidelity_runs_parameters_packed_at_load(tmp_path: Path, shared_cache: Path):
    """`--weights parameters --flags packed`: one module, its weights packed at load; the
    tool calls its decode entry point on an .irpa of the same bytes, no weight inputs."""
    _, report = _fidelity(
        tmp_path,
        shared_cache,
        *("--rounds", "1", "--variants", "int8", "--weights", "parameters", "--flags", "packed"),
    )
    r = report["variants"]["int8"]
    assert r["prefill_compile_s"] is None, "prefill and decode are one module"
    assert r["packed_at_load"] > 0, "data tiling hoisted the weights' packing to load"
    command = r["iree_benchmark_module_command"]
    assert "--function=decode" in command and "--parameters=model=" in command
    assert ".irpa" in command and "w000" not in command, "the weights come as parameters"
    assert len(r["tokens"]) == 1 + 1 + 4 and r["ratio"] > 0
