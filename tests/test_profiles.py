"""Where the time goes: dispatch kinds, profile summaries, the dispatches dataset and how
report, compare, query and plots read it. Fast: synthetic profiles, real Parquet.

The profile of a real vmfb, taken by IREE's own tool in a sweep, is in
tests/test_sweep.py (`profile=true` on the smoke grid).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import pytest

from sweep.plan.config import load_config
from sweep.plan.grid import expand
from sweep.readers import compare, query, report
from sweep.readers import dispatches as profiles
from sweep.store.results import DISPATCH_SCHEMA, DISPATCHES, ResultsWriter, read_results
from sweep.store.rows import RunContext, dispatch_rows, measured_row
from tests.helpers import fake_measurement
from workers.measure.profile import _call_ms, dispatch_kind, summarize
from workers.records import DispatchTime, Profile

CTX = RunContext("run-a", "smoke", {})


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("main_dispatch_0_vecmat_8192x2048_f32", "matmul"),
        ("main_dispatch_38_matvec_like_512x64_f32", "matmul"),
        ("main_dispatch_5_batch_matmul_8x32x16x64_f32", "matmul"),
        ("main_dispatch_2_transpose_128x96_f32", "transpose"),
        ("main_dispatch_1_elementwise_transpose_512x256_f32", "transpose"),
        ("main_dispatch_6_elementwise_64x64_i4xf32xf32xf32", "elementwise"),
        ("main_dispatch_25_elementwise_broadcast_8x8x128_i32xi32xf32", "elementwise"),
        ("main_dispatch_44_reduction_512_f32xf32xi32", "reduction"),
        ("main_dispatch_3_softmax_256xf32_dispatch_tensor_store", "attention"),
        ("main_dispatch_9_slow_memcpy", "copy"),
        ("_encoding_7_encode_128x64xbf16_to_128x64xbf16", "pack"),
        ("main_dispatch_4_unset_encoding_1x1536xf32", "pack"),
        ("main_dispatch_7_scatter_4x2", "other"),
    ],
)
def test_dispatch_kinds_come_from_the_name(name: str, kind: str):
    assert dispatch_kind(name) == kind


def test_a_profile_sums_per_function_and_counts_overlap_once():
    def event(key: str, start: int, end: int) -> dict:
        return {
            "type": "host_dispatch_event",
            "key": key,
            "start_host_time_ns": start,
            "end_host_time_ns": end,
            "duration_ns": end - start,
            "valid": True,
        }

    # two calls: in each, q and k run side by side, then an argmax
    events = []
    for base in (0, 10_000):
        events += [
            event("main_dispatch_0_vecmat_64x64_f32", base, base + 4000),
            event("main_dispatch_1_vecmat_64x64_f32", base + 1000, base + 5000),
            event("main_dispatch_2_reduction_512_f32xf32xi32", base + 6000, base + 7000),
        ]
    dispatches, device_ms = summarize(events, num_calls=2)
    assert device_ms == pytest.approx(6000 / 1e6), "busy 0-5 us and 6-7 us per call"
    assert [d.name for d in dispatches][-1] == "main_dispatch_2_reduction_512_f32xf32xi32"
    first = dispatches[0]
    assert (first.kind, first.calls_per_step, first.ms_per_step) == ("matmul", 1.0, 0.004)
    assert sum(d.ms_per_step for d in dispatches) == pytest.approx(0.009), "spans each count"


def test_the_profiled_call_time_comes_from_the_tools_json():
    """What `iree-benchmark-module --benchmark_format=json` prints (3.13), abridged."""
    out = json.dumps(
        {
            "context": {"num_cpus": 2},
            "benchmarks": [
                {
                    "name": "BM_main/process_time/real_time",
                    "iterations": 10,
                    "real_time": 4.15e8,
                    "cpu_time": 8.02e8,
                    "time_unit": "ns",
                },
            ],
        }
    )
    assert _call_ms(out) == pytest.approx(415.0)
    assert _call_ms("not json") is None
    profiled = Profile((), device_ms=400.0, num_calls=1, mode="m", call_ms=500.0)
    assert profiled.device_share == pytest.approx(0.8)
    assert Profile((), device_ms=400.0, num_calls=1, mode="m").device_share is None


PROFILE = Profile(
    dispatches=(
        DispatchTime("main_dispatch_0_vecmat_64x64_f32", "matmul", 8.0, 3.0),
        DispatchTime("main_dispatch_1_transpose_64x64_f32", "transpose", 8.0, 1.0),
    ),
    device_ms=4.0,
    num_calls=10,
    mode="host-execution",
    raw=b"PROFILE",
    call_ms=5.0,
)


def profiled_point(steps_per_call: int = 1):
    cfg, _ = load_config(["+grid=smoke", f"bench.steps_per_call={steps_per_call}"])
    return expand(cfg, "weights")[0]


@pytest.mark.parametrize("steps_per_call", [1, 8])
def test_rows_split_a_step_into_device_and_host_time(steps_per_call: int):
    point = profiled_point(steps_per_call)
    m = fake_measurement((1, 2, 3), decode_samples_ms=(6.0,), profile=PROFILE)
    row = measured_row(point, CTX, m, attempt=1)
    assert row["steps_per_call"] == steps_per_call
    # the profile's share (4 of 5 ms in dispatches) of the unprofiled median step (6 ms)
    assert row["device_ms"] == pytest.approx(6.0 * 0.8)
    assert row["host_ms"] == pytest.approx(6.0 * 0.2)
    no_call_time = dataclasses.replace(PROFILE, call_ms=None)
    m = fake_measurement((1, 2, 3), decode_samples_ms=(6.0,), profile=no_call_time)
    assert measured_row(point, CTX, m, attempt=1)["device_ms"] == 4.0 / steps_per_call
    drows = dispatch_rows(point, CTX, m)
    assert [r["kind"] for r in drows] == ["matmul", "transpose"]
    assert [r["share"] for r in drows] == [0.75, 0.25]
    assert drows[0]["ms_per_token"] == pytest.approx(3.0 / steps_per_call)
    assert drows[0]["calls_per_token"] == pytest.approx(8.0 / steps_per_call)
    assert dispatch_rows(point, CTX, fake_measurement((1,))) == []
    assert "device_ms" not in measured_row(point, CTX, fake_measurement((1,)), attempt=1)


def test_kind_changes_read_like_a_diff():
    base = {"matmul": 10.0, "transpose": 12.0, "elementwise": 1.0}
    other = {"matmul": 7.0, "elementwise": 1.05}
    assert profiles.kind_change(base, other) == "transpose -12, matmul -3"
    assert profiles.kind_change(base, base) == "no kind changed"
    assert profiles.fmt_kinds({"matmul": 12.345, "copy": 0.5}) == "matmul 12.3, copy 0.5"


@pytest.fixture
def profiled_results(tmp_path: Path) -> Path:
    """Two runs of the same two points (default and O3), both profiled; O3 drops the transpose."""
    cfg, _ = load_config(["+grid=smoke", "grid.variants=[fp32]", "grid.prompt_lengths=[8]"])
    points = expand(cfg, "weights")
    at = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
    for i, run in enumerate(("run-a", "run-b")):
        ctx = RunContext(run, "smoke", {})
        rows, drows = [], []
        for point in points:
            o3 = point.flag_set == "O3"
            kinds = (("matmul", 3.0 - i), ("transpose", 0.0 if o3 else 2.0))
            profile = dataclasses.replace(
                PROFILE,
                dispatches=tuple(
                    DispatchTime(f"main_dispatch_{j}_{k}_64_f32", k, 1.0, ms)
                    for j, (k, ms) in enumerate(kinds)
                    if ms
                ),
                device_ms=sum(ms for _, ms in kinds),
            )
            samples = (4.0 - i - (2.0 if o3 else 0.0),) * 12
            m = fake_measurement((1, 2), decode_samples_ms=samples, profile=profile)
            rows.append({**measured_row(point, ctx, m, attempt=1), "created_at": at})
            drows += dispatch_rows(point, ctx, m)
        ResultsWriter(tmp_path, run).write(rows)
        ResultsWriter(tmp_path / DISPATCHES, run, DISPATCH_SCHEMA).write(drows)
        at += dt.timedelta(hours=1)
    return tmp_path


def test_report_dispatches_lists_the_top_dispatches_of_each_point(profiled_results, capsys):
    assert report.main(["--results", str(profiled_results), "--dispatches", "1"]) == 0
    out = capsys.readouterr().out
    assert "main_dispatch_0_matmul_64_f32" in out and "transpose_64" not in out, out
    assert report.main(["--results", str(profiled_results), "--dispatches"]) == 0
    assert "main_dispatch_1_transpose_64_f32" in capsys.readouterr().out


def test_the_flag_study_shows_time_per_kind(profiled_results, capsys):
    assert (
        report.main(["--results", str(profiled_results), "--by", "flag_set", "--format", "json"])
        == 0
    )
    records = {r["flag_set"]: r for r in json.loads(capsys.readouterr().out)}
    assert records["default"]["kinds"] == {"matmul": 2.0, "transpose": 2.0}
    assert records["O3"]["kind_change"] == "transpose -2"
    assert report.main(["--results", str(profiled_results), "--by", "flag_set"]) == 0
    assert "transpose -2" in capsys.readouterr().out


def test_compare_shows_what_changed_kind_by_kind(profiled_results, capsys):
    assert compare.main(["run-a", "run-b", "--results", str(profiled_results)]) == 0
    assert "matmul -1" in capsys.readouterr().out


def test_query_has_a_dispatches_table(profiled_results, capsys):
    sql = (
        "SELECT kind, round(sum(ms_per_token), 3) AS ms FROM dispatches GROUP BY kind ORDER BY kind"
    )
    assert query.main(["--results", str(profiled_results), "--format", "json", sql]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"kind": "matmul", "ms": 10.0},
        {"kind": "transpose", "ms": 4.0},
    ]
    table = read_results(profiled_results / DISPATCHES, schema=DISPATCH_SCHEMA)
    assert table.num_rows == 6 and set(table["profile_mode"].to_pylist()) == {"host-execution"}


def test_plots_stack_the_time_per_kind(profiled_results, tmp_path, capsys):
    out = tmp_path / "plots"
    assert (
        report.main(["--results", str(profiled_results), "--plots", "--plots-dir", str(out)]) == 0
    )
    png = out / "time_by_dispatch_kind.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
