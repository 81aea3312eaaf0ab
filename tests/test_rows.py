"""Rows: every column built from typed values, every status decided in one place."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

import pytest

from sweep.plan.config import load_config
from sweep.store.results import COLUMNS, ResultsWriter, read_results
from sweep.store.rows import (
    RunContext,
    compile_failure_row,
    failure_row,
    measured_row,
    repro_command,
)
from tests.helpers import fake_measurement, points
from workers.compile.iree import CompileResult
from workers.core.config import preset

CTX = RunContext(
    "run-1", "smoke", {"iree_version": "3.13", "jax_version": "0.10", "ray_version": "2.60"}
)
TINY = preset("tiny")


def compiled(command: str = "iree-compile x.mlir --flag -o /c/work/abc.vmfb") -> CompileResult:
    return CompileResult(
        ok=True,
        key="k",
        vmfb=b"\0" * 10,
        compile_s=1.5,
        num_dispatches=42,
        cache_hit=True,
        command=command,
        error_class=None,
        error_message=None,
        returncode=0,
    )


def test_a_measured_row_has_every_column_the_schema_knows_and_writes(tmp_path: Path):
    point = points()[0]
    decode = point.graph(TINY, "decode")
    m = fake_measurement((5, 6, 7), (5, 6, 7))
    row = measured_row(
        point, CTX, m, attempt=1, compiled=(compiled(), compiled()), decode_graph=decode
    )
    assert row["status"] == "ok" and row["error_class"] is None
    assert (row["variant"], row["device"], row["driver"], row["group_size"]) == (
        "fp32",
        "cpu",
        "local-task",
        None,
    )
    assert row["architecture"] == "llama"  # the run's model's
    qwen = dataclasses.replace(CTX, architecture="qwen3")
    assert failure_row(point, qwen, "skipped", "x", attempt=1)["architecture"] == "qwen3"
    assert row["decode_ms_p50"] == 3.5 and row["tok_s"] == pytest.approx(1000 / 3.5)
    assert row["prefill_ms"] == 2.0, "time to first token is the median of the prefill runs"
    assert row["compile_s"] == 3.0 and row["num_dispatches"] == 42 and row["vmfb_bytes"] == 10
    assert row["compile_cache_hit"] is True
    assert row["roofline_frac"] == pytest.approx(3.0 / 3.5), "3 MB at 1 GB/s is 3 ms of 3.5"
    assert set(row) <= set(COLUMNS)
    ResultsWriter(tmp_path, "run-1").write([row])
    assert read_results(tmp_path).to_pylist()[0]["num_tokens_matched"] == 3


def test_tokens_decide_ok_or_wrong_output_by_the_variants_rule():
    fp32, bf16 = (
        points()[0],
        dataclasses.replace(points()[0], variant=load_config([])[0].variants["bf16"]),
    )
    drifted = fake_measurement((5, 6, 9), (5, 6, 7))
    assert measured_row(fp32, CTX, drifted, attempt=1)["status"] == "wrong_output"
    assert "2 of 3 tokens" in measured_row(fp32, CTX, drifted, attempt=1)["error_message"]
    assert measured_row(bf16, CTX, drifted, attempt=1)["status"] == "ok", (
        "bf16: the first must match"
    )
    first_wrong = fake_measurement((4, 6, 7), (5, 6, 7))
    assert measured_row(bf16, CTX, first_wrong, attempt=1)["status"] == "wrong_output"


def test_an_xla_row_reports_the_workers_compile_and_no_repro():
    xla = [p for p in points("grid.runtimes=[iree,xla]") if p.runtime == "xla"][0]
    row = measured_row(xla, CTX, fake_measurement((1,), (1,), xla_compile_s=0.75), attempt=1)
    assert row["compile_s"] == 0.75 and row["repro_command"] is None and row["flag_set"] == "-"
    assert row.get("num_dispatches") is None


def test_the_repro_command_runs_the_compiled_decode_graph():
    point = points()[-1]  # int4
    decode = point.graph(TINY, "decode")
    command = repro_command(compiled(), decode, "local-task")
    compile_part, bench_part = command.split(" && ")
    assert compile_part == "iree-compile x.mlir --flag -o /c/work/abc.vmfb"
    bench = shlex.split(bench_part)
    assert bench[:4] == [
        "iree-benchmark-module",
        "--module=/c/work/abc.vmfb",
        "--device=local-task",
        "--function=main",
    ]
    inputs = [a.removeprefix("--input=") for a in bench[4:]]
    assert len(inputs) == len(decode.args())
    assert inputs[0] == "64x512xf32=0", "the embedding, [hidden, vocab]"
    assert inputs[1:3] == ["64xf32=0", "64xf32=0"], "the first layer's norms"
    assert inputs[3] == "8x64xui32=0", "q_proj's int4 lanes: 64 inputs / 8 per lane"
    assert inputs[-4:] == ["i32=0", "i32=0", "2x128x2x16xf32=0", "2x128x2x16xf32=0"]


def test_failure_rows():
    point = points()[0]
    failed = CompileResult.failed("compile_timeout", "killed after 5 s", command="iree-compile y")
    row = compile_failure_row(point, CTX, failed)
    assert (row["status"], row["error_class"], row["repro_command"]) == (
        "compile_timeout",
        "compile_timeout",
        "iree-compile y",
    )
    long = "headline\n" + "x" * 5000 + "\nlast words"
    skipped = failure_row(point, CTX, "skipped", long, error_class="no_device")
    message = skipped["error_message"]
    assert len(message) <= 2000 and "characters ...]" in message
    assert message.startswith("headline") and message.endswith("last words"), "head and tail"
    with pytest.raises(AssertionError):
        failure_row(point, CTX, "ok", "not a failure")
