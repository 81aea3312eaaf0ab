"""Reports, run comparison, plots and SQL over a synthetic results dataset.

The dataset is written by the real `ResultsWriter` into tmp_path: two runs of a phase
2b-like grid (fp32/int4 x cpu/cuda x 2 prompt lengths x 3 cache sizes x 3 flag sets),
decode samples drawn from numpy, so every expected number is computed here from the
rows themselves. No Ray, no IREE.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sweep.readers import analysis, compare, query, report, tables
from sweep.readers.plots import write_plots
from sweep.store.results import COLUMNS, ResultsWriter
from tests.helpers.rows import (
    BASE_MS,
    FLAG_SETS,
    MAX_SEQS,
    NUM_TOKENS,
    T0,
    make_row,
    md_table,
    run_main,
    samples,
)

PROMPT_LENGTHS = (32, 128)


def run_rows(run: str, seed: int, slow: tuple[str, str] | None = None) -> list[dict[str, Any]]:
    """Every grid point of one run; `slow` (variant, device) takes twice as long."""
    rng = np.random.default_rng(seed)
    start = T0 if run == "r1" else T0 + dt.timedelta(hours=1)
    rows = []
    for i, (variant, device, flag_set, prompt_length, max_seq) in enumerate(
        (v, d, f, p, m)
        for (v, d) in BASE_MS
        for f in FLAG_SETS
        for p in PROMPT_LENGTHS
        for m in MAX_SEQS
    ):
        ms = BASE_MS[variant, device] * FLAG_SETS[flag_set][0] * MAX_SEQS[max_seq]
        ms *= 2.0 if (variant, device) == slow else 1.0
        key = f"{variant}-{device}-{flag_set}-p{prompt_length}-s{max_seq}"
        rows.append(
            make_row(
                key,
                variant,
                samples(rng, ms),
                device=device,
                flag_set=flag_set,
                prompt_length=prompt_length,
                max_seq=max_seq,
                created_at=start + dt.timedelta(seconds=i),
            )
        )
    return rows


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """r1 (older): the grid, a compile error and a wrong output. r2 (newer): the same
    points with new seeds, int4 on cuda twice as slow, one point dropped, one added."""
    root = tmp_path_factory.mktemp("results")
    r1 = run_rows("r1", seed=1)
    wrong = next(r for r in r1 if r["point_key"] == "fp32-cpu-fuse-p128-s512")
    wrong.update(status="wrong_output", error_class="wrong_output", num_tokens_matched=3)
    r1.append(
        {
            "point_key": "int4-cuda-broken-p32-s256",
            "grid": "phase2b",
            "model": "llama-3.2-1b",
            "variant": "int4",
            "group_size": 64,
            "device": "cuda",
            "driver": "cuda",
            "runtime": "iree",
            "prompt_length": 32,
            "max_seq": 256,
            "flag_set": "broken",
            "status": "compile_error",
            "error_class": "compile_error",
            "created_at": T0,
        }
    )
    ResultsWriter(root, "r1").write(r1)
    r2 = [
        r
        for r in run_rows("r2", seed=2, slow=("int4", "cuda"))
        if r["point_key"] != "fp32-cpu-O3-p32-s256"
    ]
    rng = np.random.default_rng(3)
    r2.append(
        make_row(
            "fp32-cpu-default-p512-s512",
            "fp32",
            samples(rng, 600.0),
            device="cpu",
            flag_set="default",
            prompt_length=512,
            max_seq=512,
            created_at=T0 + dt.timedelta(hours=2),
        )
    )
    writer = ResultsWriter(root, "r2")
    writer.write(r2[:40])
    writer.write(r2[40:])
    return root


def rows_of(run: str) -> list[dict[str, Any]]:
    """The rows the fixture wrote for `run`, rebuilt (same seeds), for expected values."""
    return run_rows(run, seed=1 if run == "r1" else 2)


def run_report(capsys, results: Path, *argv: str) -> tuple[int, str, str]:
    """`python -m sweep.report --results RESULTS ARGV...`, in-process."""
    return run_main(capsys, report, "--results", str(results), *argv)


# --- verdict ---------------------------------------------------------------------------


def test_verdict_follows_the_spread() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = samples(rng, 100.0), samples(rng, 100.0)
        assert analysis.verdict(a, b) == "same", "the same distribution must read as noise"
    a = samples(rng, 100.0)
    assert analysis.verdict(a, samples(rng, 200.0)) == "slower"
    assert analysis.verdict(a, samples(rng, 80.0)) == "faster"
    # a 1 % shift on a quiet device is significant but under the 2 % minimum effect
    quiet = rng.normal(100.0, 0.1, 200)
    assert analysis.mann_whitney_p(quiet, quiet * 1.01) < analysis.ALPHA
    assert analysis.verdict(quiet, quiet * 1.01) == "same"
    # a 10 % shift drowned in 30 % noise on few samples is not called
    noisy = rng.normal(100.0, 30.0, 8)
    assert analysis.verdict(noisy, noisy * 1.1) == "same"
    assert analysis.verdict([100.0, 101.0], [200.0, 201.0]) == "n/a", "2 samples cannot decide"
    assert analysis.verdict(range(100, 105), range(200, 205)) == "n/a"
    assert analysis.verdict(range(100, 106), range(200, 206)) == "slower"


# --- report ----------------------------------------------------------------------------


def test_report_numbers_are_medians_of_the_rows(results: Path, capsys) -> None:
    code, out, _ = run_main(
        capsys, report, "--results", str(results), "--run", "r1", "--format", "json"
    )
    assert code == 0
    records = json.loads(out)
    rows = [r for r in rows_of("r1") if r["point_key"] != "fp32-cpu-fuse-p128-s512"]
    assert len(records) == 4 * 3 * 2 + 1, "one record per variant x device x flag x prompt"
    for rec in records:
        if rec["flag_set"] == "broken":
            assert rec["status_counts"] == {"compile_error": 1} and rec["decode_ms_p50"] is None
            continue
        group = [r for r in rows if all(r.get(c) == rec.get(c) for c in analysis.DEFAULT_BY)]
        p50 = np.median([r["decode_ms_p50"] for r in group])
        assert rec["decode_ms_p50"] == pytest.approx(p50), rec
        assert rec["tok_s"] == pytest.approx(1000.0 / p50)
        assert rec["decode_ms_p10"] == pytest.approx(np.median([r["decode_ms_p10"] for r in group]))
        assert rec["prefill_ms"] == pytest.approx(np.median([r["prefill_ms"] for r in group]))
        assert rec["num_dispatches"] == group[0]["num_dispatches"]
        if "roofline_frac" in COLUMNS:  # a percent column once the schema has it
            roof = np.median([r["roofline_frac"] for r in group])
            assert rec["roofline_frac"] == pytest.approx(roof)
    wrong = next(
        r
        for r in records
        if (r["variant"], r["device"], r["flag_set"], r["prompt_length"])
        == ("fp32", "cpu", "fuse", 128)
    )
    assert wrong["status_counts"] == {"ok": 2, "wrong_output": 1}
    assert (wrong["num_tokens_matched"], wrong["num_tokens"]) == (8 + 8 + 3, 3 * NUM_TOKENS)


def test_report_by_pools_groups(results: Path, capsys) -> None:
    """--by variant,device: the median over flag sets, prompt lengths and cache sizes."""
    code, out, _ = run_main(
        capsys, report, "--results", str(results), "--by", "variant,device", "--format", "json"
    )
    assert code == 0
    r2 = {r["point_key"]: r for r in run_rows("r2", seed=2, slow=("int4", "cuda"))}
    records = {(r["variant"], r["device"]): r for r in json.loads(out)}
    expected = np.median(
        [r["decode_ms_p50"] for r in r2.values() if (r["variant"], r["device"]) == ("int4", "cuda")]
    )
    assert records["int4", "cuda"]["decode_ms_p50"] == pytest.approx(expected)
    assert records["fp32", "cpu"]["num_ok"] == 18 - 1 + 1, "the default run is the newest, r2"


def test_report_folds_constant_columns_into_the_header(results: Path, capsys) -> None:
    code, out, _ = run_main(capsys, report, "--results", str(results), "--run", "r1")
    assert code == 0
    above, header, body = md_table(out)
    context = " ".join(above)
    for folded in (
        "run: r1",
        "model: llama-3.2-1b",
        "grid: phase2b",
        "runtime: iree",
        "group_size: 64",
    ):
        assert folded in context, f"{folded!r} should be in the header line: {context!r}"
    assert "max_seq" not in context, "max_seq varies over the rows: not a constant"
    assert "runtime" not in header and "model" not in header
    assert header[:4] == ["variant", "device", "flag_set", "prompt_length"]
    assert {
        "tok/s",
        "ms/tok p50",
        "p10-p90",
        "prefill ms",
        "dispatches",
        "matched",
        "status",
    } <= set(header)
    assert ("roofline" in header) == ("roofline_frac" in COLUMNS)
    assert len(body) == 25
    int4_cuda = next(row for row in body if row[:4] == ["int4", "cuda", "default", "32"])
    assert int4_cuda[header.index("matched")] == "24/24"
    assert int4_cuda[header.index("status")] == "ok 3"

    code, out, _ = run_report(capsys, results, "--run", "r1", "--by", "variant", "--format", "md")
    assert code == 0
    above, header, _ = md_table(out)
    assert header[0] == "variant" and "device" not in header
    assert "device:" not in " ".join(above), "device varies, so it is not a constant either"


def test_flag_study(results: Path, capsys) -> None:
    code, out, _ = run_report(
        capsys, results, "--run", "r1", "--by", "flag_set", "--format", "json"
    )
    assert code == 0
    records = json.loads(out)
    rows = rows_of("r1")

    def median_p50(variant: str, device: str, flag_set: str, prompt_length: int) -> float:
        return float(
            np.median(
                [
                    r["decode_ms_p50"]
                    for r in rows
                    if (r["variant"], r["device"], r["flag_set"], r["prompt_length"])
                    == (variant, device, flag_set, prompt_length)
                    and r["point_key"] != "fp32-cpu-fuse-p128-s512"
                ]
            )
        )

    for rec in records:
        ctx = (rec["variant"], rec["device"])
        if rec["flag_set"] == "broken":
            assert rec["speedup"] is None and rec["status_counts"] == {"compile_error": 1}
            continue
        base = median_p50(*ctx, "default", rec["prompt_length"])
        mine = median_p50(*ctx, rec["flag_set"], rec["prompt_length"])
        assert rec["speedup"] == pytest.approx(base / mine)
        expected = {"default": "baseline", "fuse": "faster", "O3": "same"}[rec["flag_set"]]
        assert rec["verdict"] == expected, rec
        assert rec["dispatch_change"] == FLAG_SETS[rec["flag_set"]][1]
        assert rec["compile_s"] == pytest.approx(4.0 if rec["flag_set"] == "default" else 4.5)
    contexts = [tuple(r[c] for c in analysis.FLAG_CONTEXT) for r in records]
    firsts = [r["flag_set"] for i, r in enumerate(records) if contexts[i] not in contexts[:i]]
    assert firsts == ["default"] * 8, "the baseline comes first in each context"

    code, out, _ = run_main(
        capsys, report, "--results", str(results), "--run", "r1", "--by", "flag_set"
    )
    _, header, body = md_table(out)
    for title in (
        "flag_set",
        "ms/tok p50",
        "speedup",
        "verdict",
        "dispatches",
        "vs default",
        "compile s",
        "vmfb",
        "matched",
    ):
        assert title in header, f"flag study lacks the {title!r} column: {header}"
    fuse = next(r for r in body if r[:4] == ["fp32", "cuda", "32", "fuse"])
    cell = dict(zip(header, fuse, strict=True))
    assert cell["verdict"] == "faster" and cell["vs default"] == "-12"
    assert cell["dispatches"] == "388" and cell["speedup"].endswith("x")
    assert float(cell["speedup"][:-1]) == pytest.approx(1.25, abs=0.03)
    default = next(r for r in body if r[:4] == ["fp32", "cuda", "32", "default"])
    assert dict(zip(header, default, strict=True))["vs default"] == "0"


def test_roofline_column_when_present() -> None:
    rows = [
        make_row(
            f"k{i}",
            "fp32",
            [1.0, 1.1, 1.2],
            device="cuda",
            flag_set="default",
            prompt_length=32,
            max_seq=256,
            created_at=T0,
            roofline_frac=f,
        )
        for i, f in enumerate((0.04, 0.05, 0.06))
    ]
    table = report.summary_table(rows, list(analysis.DEFAULT_BY), {"run": "x"})
    _, header, body = md_table(tables.render_md(table))
    assert body[0][header.index("roofline")] == "5.0%"
    no_roofline = [{k: v for k, v in r.items() if k != "roofline_frac"} for r in rows]
    table = report.summary_table(no_roofline, list(analysis.DEFAULT_BY), {"run": "x"})
    assert "roofline" not in md_table(tables.render_md(table))[1]


def test_report_csv_and_out_file(results: Path, tmp_path: Path, capsys) -> None:
    out_path = tmp_path / "report.csv"
    code, out, err = run_main(
        capsys, report, "--results", str(results), "--format", "csv", "--out", str(out_path)
    )
    assert code == 0 and out == "" and str(out_path) in err
    lines = out_path.read_text().splitlines()
    assert lines[0].startswith("variant,layout,weights,device,runtime,flag_set,prompt_length,")
    assert len(lines) == 1 + 4 * 3 * 2 + 1, "r2 adds a prompt length for fp32 on cpu"


# --- compare ---------------------------------------------------------------------------


def test_compare_flags_a_slowdown_and_not_the_noise(results: Path, capsys) -> None:
    code, out, _ = run_main(
        capsys, compare, "r1", "r2", "--results", str(results), "--format", "json"
    )
    assert code == 0
    result = json.loads(out)
    verdicts = {p["point_key"]: p["verdict"] for p in result["points"]}
    assert len(verdicts) == 72 - 1 - 1, "every point ok in both runs is compared"
    for key, verdict in verdicts.items():
        expected = "slower" if key.startswith("int4-cuda") else "same"
        assert verdict == expected, f"{key}: 2x slower must be 'slower', noise 'same'"
    ratios = [p["ratio"] for p in result["points"] if p["point_key"].startswith("int4-cuda")]
    assert np.median(ratios) == pytest.approx(2.0, rel=0.05)
    assert [p["point_key"] for p in result["only_in_a"]] == [
        "fp32-cpu-O3-p32-s256",
        "int4-cuda-broken-p32-s256",
    ]
    assert [p["point_key"] for p in result["only_in_b"]] == ["fp32-cpu-default-p512-s512"]
    assert result["not_ok"][0]["status_a"] == "wrong_output"

    code, out, _ = run_main(capsys, compare, "r1", "r2", "--results", str(results))
    above, header, body = md_table(out)
    assert "A: r1  B: r2" in above[0] and "model: llama-3.2-1b" in above[0]
    assert header[-4:] == ["A ms/tok", "B ms/tok", "B/A", "verdict"]
    assert "only in B: fp32-cpu-default-p512-s512" in out
    assert "not ok: fp32-cpu-fuse-p128-s512" in out
    assert "18 slower" in out


# --- plots -----------------------------------------------------------------------------


def test_plots_are_pngs(results: Path, tmp_path: Path, capsys) -> None:
    import matplotlib.image

    code, _, err = run_main(capsys, report, "--results", str(results), "--run", "r1", "--plots")
    assert code == 0
    paths = sorted((results / "plots" / "r1").glob("*.png"))
    assert [p.name for p in paths] == [
        "decode_ms_by_variant_device.png",
        "flag_sets_vs_dispatches.png",
        "prefill_ms_by_prompt_length.png",
    ]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
        assert str(path) in err, "the paths written are printed"
    image = matplotlib.image.imread(paths[0])
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300

    one_length = [
        r for r in rows_of("r1") if r["prompt_length"] == 32 and r["flag_set"] == "default"
    ]
    written, notes = write_plots(one_length, tmp_path / "one")
    assert [p.name for p in written] == ["decode_ms_by_variant_device.png"]
    assert any("prefill" in n and "prompt lengths" in n for n in notes)
    assert any("flag sets" in n for n in notes)


# --- query -----------------------------------------------------------------------------


def test_query_group_by(results: Path, capsys) -> None:
    sql = (
        "SELECT variant, device, count(*) AS n, median(decode_ms_p50) AS ms FROM results "
        "WHERE run_id = 'r1' AND status = 'ok' GROUP BY ALL ORDER BY variant, device"
    )
    code, out, _ = run_main(capsys, query, "--results", str(results), "--format", "json", sql)
    assert code == 0
    answer = {(r["variant"], r["device"]): r for r in json.loads(out)}
    rows = [r for r in rows_of("r1") if r["point_key"] != "fp32-cpu-fuse-p128-s512"]
    for (variant, device), got in answer.items():
        mine = [
            r["decode_ms_p50"] for r in rows if (r["variant"], r["device"]) == (variant, device)
        ]
        assert got["n"] == len(mine) and got["ms"] == pytest.approx(np.median(mine))
    assert len(answer) == 4

    code, out, _ = run_main(capsys, query, "--results", str(results), sql)
    _, header, body = md_table(out)
    assert header == ["variant", "device", "n", "ms"]
    assert body[0][:3] == ["fp32", "cpu", "17"]
    assert float(body[0][3]) == pytest.approx(answer["fp32", "cpu"]["ms"], rel=1e-5)


# --- errors ----------------------------------------------------------------------------


def test_errors_exit_2_with_a_message(results: Path, tmp_path: Path, capsys) -> None:
    code, out, err = run_main(capsys, report, "--results", str(results), "--run", "nope")
    assert code == 2 and out == ""
    assert "unknown run id 'nope'" in err and "newest first: r2, r1" in err

    code, _, err = run_main(capsys, compare, "r1", "nope", "--results", str(results))
    assert code == 2 and "unknown run id 'nope'" in err

    missing = tmp_path / "missing"
    code, _, err = run_main(capsys, report, "--results", str(missing))
    assert code == 2 and f"results directory {missing} does not exist" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_main(capsys, report, "--results", str(tmp_path / "empty"))
    assert code == 2 and "holds no result files" in err

    code, _, err = run_main(capsys, report, "--results", str(results), "--by", "variant,color")
    assert code == 2 and "unknown --by column color" in err and "flag_set" in err

    code, _, err = run_main(capsys, report, "--results", str(results), "--grid", "nope")
    assert code == 2 and "no rows of grid 'nope'" in err and "phase2b" in err

    code, _, err = run_main(capsys, query, "--results", str(results), "SELEC 1 FROM results")
    assert code == 2 and "SQL error" in err and "syntax error" in err
    code, _, err = run_main(capsys, query, "--results", str(results), "SELECT nope FROM results")
    assert code == 2 and "nope" in err

    code, _, err = run_main(capsys, report, "--format", "xml")
    assert code == 2 and "invalid choice" in err


def test_run_all_takes_the_newest_row_per_point(results: Path, capsys) -> None:
    code, out, _ = run_report(capsys, results, "--run", "all", "--by", "run_id", "--format", "json")
    assert code == 0
    counts = {r["run_id"]: r["num_rows"] for r in json.loads(out)}
    assert counts == {"r2": 72, "r1": 2}, "r1 only where r2 lacks the point"


def test_the_summary_answers_which_variant_decodes_fastest() -> None:
    """The run's closing line per device: the fastest variant against fp32 at the same
    points (every point column but the variant's own), from the rows alone."""
    rows = []
    for device, ms in (("cpu", {"fp32": 540.0, "int4": 1274.0, "int4-fac-g64": 281.0}),
                       ("cuda", {"fp32": 182.0, "int4": 252.0})):  # fmt: skip
        for variant, base in ms.items():
            for length in PROMPT_LENGTHS:
                rows.append(
                    make_row(
                        f"{variant}-{device}-{length}",
                        "int4" if variant != "fp32" else "fp32",  # BASE_DISPATCHES' keys
                        [base] * 10,
                        device=device,
                        prompt_length=length,
                    )
                    | {"variant": variant, "group_size": None if variant == "fp32" else 64}
                )
    rows.append(rows[0] | {"status": "wrong_output", "variant": "int8"})  # not ok: left out
    assert report.fp32_notes(rows) == [
        "cpu: int4-fac-g64 decodes at 0.52x fp32's ms/token (median of 2 points; int4 2.36x)",
        "cuda: fp32 decodes fastest (int4 1.38x its ms/token; median of 2 points)",
    ]
    assert report.fp32_notes([r for r in rows if r["variant"] != "fp32"]) == [], (
        "without fp32 there is nothing to compare with"
    )


def test_the_llamabench_view_says_per_family_what_stands_in_the_way() -> None:
    """IREE's answer is its fastest tg inside twice llama.cpp's KLD, not its fastest: and
    where it does not reach llama.cpp, its profile says what its step spends."""
    from sweep.readers.llamabench import gap_records, gap_table

    def point(key, runtime, decode, prefill, kld, variant="int4", **extra):
        extra = {"bits": 8, **extra}
        return make_row(
            key, variant, decode, prompt_length=512, runtime=runtime, kld_mean=kld,
            prefill_samples_ms=prefill, weights="parameters", **extra,
        )  # fmt: skip

    rows = [
        point("cpp", "llamacpp", [10.0, 10.0], [500.0], 0.004, llamacpp_type="Q8_0"),
        point("fast", "iree", [5.0, 5.0], [250.0], 0.03, flag_set="fuse"),  # outside 2x KLD
        point("good", "iree", [20.0, 20.0], [1000.0], 0.005),
        point("float", "iree", [30.0], [900.0], 0.001, bits=None, variant="fp32"),  # no twin
    ]
    profile = [
        {"point_key": "good", "name": "d_7_elementwise_64", "kind": "elementwise",
         "calls_per_token": 30.0, "ms_per_token": 12.0},
        {"point_key": "good", "name": "d_3_matvec_like_64", "kind": "matmul",
         "calls_per_token": 10.0, "ms_per_token": 8.0},
    ]  # fmt: skip
    (gap,) = gap_records(rows, profile)
    assert gap["family"] == "8-bit" and gap["llamacpp"] == "Q8_0"
    assert "fuse" not in gap["iree"] and gap["inside_bound"], "the fast one costs too much KLD"
    assert gap["tg_x"] == pytest.approx(2.0) and gap["pp_x"] == pytest.approx(0.5)
    assert not gap["meets"]
    assert gap["step"].startswith(
        "40 dispatches a step of 20 ms, 20 ms inside them as profiled (500 us each)"
    )
    assert "elementwise 12 ms in 30, matmul 8 ms in 10" in gap["step"]
    assert "heaviest: d_7_elementwise_64 12 ms (30x)" in gap["step"]
    stands = "what stands in the way: decode: 40 dispatches"
    assert any(stands in note for note in gap_table(rows, profile).notes)
    assert not any(stands in note for note in gap_table(rows, []).notes)
    quick = [rows[0], point("good", "iree", [11.0, 11.0], [600.0], 0.005)]
    (gap,) = gap_records(quick, [])
    assert gap["meets"] is False, "pp below llama.cpp's"
    quick[1]["prefill_samples_ms"] = [450.0]
    (gap,) = gap_records(quick, [])
    assert gap["meets"] and gap["step"] == "not profiled (profile=true)"
    prompt = [  # prefill's rows are per prompt token: a call of 512 tokens
        {"point_key": "good", "graph": "prefill", "name": "p_1_matmul_like_512", "kind": "matmul",
         "calls_per_token": 2 / 512, "ms_per_token": 0.5},
    ]  # fmt: skip
    (gap,) = gap_records(rows, profile + prompt)
    assert gap["prompt"] == (
        "2 dispatches a prompt of 1000 ms, 256 ms inside them as profiled (128000 us each): "
        "matmul 256 ms in 2; "
        "heaviest: p_1_matmul_like_512 256 ms (2x)"
    )
    assert gap["step"].startswith("40 dispatches a step"), "decode's profile alone"


def test_the_llamabench_view_is_mean_and_sd_over_repetitions() -> None:
    """pp: every prefill run of every repeat; tg: one per repeat, steps / their total time."""
    from sweep.readers.llamabench import llamabench_records

    rows = [
        make_row(
            f"k{r}",
            "int4",
            [10.0, 10.0 + r],
            prompt_length=512,
            repeat=r,
            repeat_of="k",
            prefill_samples_ms=[500.0, 1000.0],
            weights="parameters",
        )
        for r in range(3)
    ]
    pp, tg = llamabench_records(rows)
    assert pp["test"] == "pp512" and pp["n"] == 6
    assert pp["t_s"] == pytest.approx((1024 + 512) / 2) and pp["t_s_sd"] > 0
    assert tg["test"] == "tg2" and tg["n"] == 3
    assert tg["t_s"] == pytest.approx(np.mean([1e3 / (10 + r / 2) for r in range(3)]))
    assert "parameters" in pp["config"] and pp["backend"] == "IREE cpu"
