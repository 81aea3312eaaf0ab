"""The quality columns end to end: a tiny checkpoint with a byte-level tokenizer through a
real sweep (Ray, iree-compile, the score graphs, Parquet), checked against transformers.

The weights are random, so the numbers mean nothing about any format; what is checked
is that they are the right numbers: fp32's KLD is (rounding) zero and its top-1
agreement 1, the quantized rows carry all four columns, and our fp32 perplexity, from
fp32's own compiled graph, is transformers' perplexity on the same windows.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchmarks.perplexity import transformers_ppl
from sweep.plan.eval_text import default_text
from sweep.readers.report import main as report_main
from tests.helpers import save_byte_tokenizer, save_tiny_llama, sweep
from workers.tasks import eval_windows

pytestmark = pytest.mark.slow  # a real Ray cluster, iree-compile of three graphs per point


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-with-tokenizer")
    save_tiny_llama(directory)
    return save_byte_tokenizer(directory)


def test_every_row_has_its_quality_and_fp32_matches_transformers(
    ray_cluster, tmp_path, shared_cache, checkpoint, capsys
):
    outcome, text = sweep(
        tmp_path,
        shared_cache,
        "+grid=smoke",
        f"model.path={checkpoint}",
        "grid.variants=[fp32,int8-u8,int4-ui4-pc]",
        "grid.layouts=[out_major]",
        "grid.prompt_lengths=[8]",
        "~grid.flag_sets.O3",
        "grid.runtimes=[iree,xla,llamacpp]",
        "bench.eval_ctx=256",
        "bench.eval_chunks=5",
    )
    assert outcome.exit_code == 0, text
    assert "quality: 635 scored tokens of the Python Language Reference" in text
    rows = {(r["variant"], r["runtime"]): r for r in outcome.rows}
    assert len(rows) == 9 and {r["status"] for r in rows.values()} == {"ok"}, text
    for (variant, runtime), r in rows.items():
        assert r["num_eval_tokens"] == 5 * 127, (variant, runtime)
        for column in ("ppl", "kld_mean", "kld_p99", "top1_agree"):
            assert r[column] is not None and math.isfinite(r[column]), (variant, column)
    for runtime in ("iree", "xla"):
        fp32 = rows[("fp32", runtime)]
        assert abs(fp32["kld_mean"]) < 1e-6 and abs(fp32["kld_p99"]) < 1e-5, fp32["kld_mean"]
        assert fp32["top1_agree"] == 1.0
    pc, int8 = rows[("int4-ui4-pc", "iree")], rows[("int8-u8", "iree")]
    assert 0 < int8["kld_mean"] < pc["kld_mean"], "int8 is closer to fp32 than per-channel int4"
    assert pc["top1_agree"] < 1.0
    # llama.cpp's rows, from its own logits: F32 all but fp32 (its KV cache is float16),
    # Q8_0 closer to fp32 than Q4_1
    f32, q8, q4 = (rows[(v, "llamacpp")] for v in ("fp32", "int8-u8", "int4-ui4-pc"))
    assert 0 <= f32["kld_mean"] < 1e-3 and f32["top1_agree"] > 0.99
    assert f32["ppl"] == pytest.approx(rows[("fp32", "iree")]["ppl"], rel=1e-3)
    assert f32["kld_mean"] < q8["kld_mean"] < q4["kld_mean"]

    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(checkpoint / "tokenizer.json")).encode(default_text()).ids
    windows = eval_windows(ids, 256, 5, None).windows()
    expected = transformers_ppl(checkpoint, windows)
    ours = rows[("fp32", "iree")]["ppl"]
    assert ours == pytest.approx(expected, rel=1e-3), "fp32 perplexity equals transformers'"

    # the Pareto view of the run: a table and one PNG
    results = tmp_path / "results"
    plots = tmp_path / "plots"
    code = report_main(
        ["--results", str(results), "--pareto", "--plots", "--plots-dir", str(plots)]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "int4-ui4-pc/out_major/default" in out.out and "Pareto" in out.out
    assert (plots / "pareto_speed_vs_kld.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
