"""llama.cpp as a runtime (workers/llamacpp.py): the GGUF file it is given, the tokens it
decodes, and the rows a sweep makes of it.

The reference is Hugging Face transformers on the same tiny random Llama: llama.cpp runs
a GGUF that `workers.gguf.write_gguf` wrote from the model's safetensors, so a wrong
tensor name, Q/K permutation or RoPE would show as different greedy tokens. The slow
tests need the `llamacpp` extra, which the test command installs.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

from sweep.store.results import read_results
from tests.helpers import device, save_tiny_llama, sweep, tiny_llama, variant
from workers.checkpoint import lazy_synthetic_weights
from workers.gguf import open_gguf, tensor_types, write_gguf
from workers.kinds import Runtime, Status
from workers.llama_config import TINY_SHAPES, preset
from workers.llamacpp import llamacpp_type


def test_each_variant_runs_as_its_nearest_llamacpp_type():
    assert llamacpp_type(variant("fp32")) == "F32"
    assert llamacpp_type(variant("bf16")) == "BF16"
    assert llamacpp_type(variant("int8")) == "Q8_0"  # llama.cpp's 8-bit is symmetric
    assert llamacpp_type(variant("int4")) == "Q4_1"  # affine, as our int4 formats
    assert llamacpp_type(variant("int4-fac-g32")) == "Q4_1"
    assert llamacpp_type(variant("gguf-q4_0")) == "Q4_0"  # a file's own blocks


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_a_written_gguf_reads_back_as_the_same_model(tmp_path: Path, tied: bool):
    """write_gguf is the reader's inverse: the same config and every tensor bit for bit
    (Q and K permuted for llama.cpp on the way out, un-permuted on the way in), and
    Llama 3 RoPE scaling through llama.cpp's rope_freqs factors."""
    rope = preset("llama-3.2-1b")
    cfg = dataclasses.replace(
        TINY_SHAPES,
        hidden_size=128,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        rope_theta=rope.rope_theta,
        rope_scaling=rope.rope_scaling,
        tie_word_embeddings=tied,
    )
    path = tmp_path / "model.gguf"
    write_gguf(path, cfg, lazy_synthetic_weights(cfg, seed=3))
    back = open_gguf(path)
    assert back.config.rope_scaling is not None
    assert back.config.rope_scaling.factor == cfg.rope_scaling.factor
    assert back.config.rope_scaling.original_max_position_embeddings == 8192
    assert dataclasses.replace(
        back.config, rope_scaling=cfg.rope_scaling, max_position_embeddings=2048
    ) == dataclasses.replace(cfg, rms_norm_eps=pytest.approx(cfg.rms_norm_eps))
    from workers.gguf import lazy_gguf

    source, read = lazy_synthetic_weights(cfg, seed=3), lazy_gguf(path)
    assert sorted(read) == sorted(source)
    for name in source:
        np.testing.assert_array_equal(read[name], source[name], err_msg=name)
    assert tensor_types(path) == {"F32": 7 * cfg.num_hidden_layers}
    assert not list(tmp_path.glob(".*.tmp")), "the temporary file was renamed into place"


def _transformers_greedy(model, prompt: np.ndarray, num_tokens: int) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(
            torch.as_tensor(prompt[None].astype(np.int64)),
            max_new_tokens=num_tokens,
            do_sample=False,
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        )
    return out[0, len(prompt) :].tolist()


@pytest.mark.slow
def test_llamacpp_decodes_what_transformers_decodes(tmp_path: Path):
    """The worker's llama.cpp point on the F32 GGUF written from a tiny checkpoint: every
    greedy token equals transformers' on the same weights, its row says what ran, and
    llama.cpp's own counters saw the timed steps."""
    from workers.point import BenchTask, ModelSource, PointWorker
    from workers.runtime import DecodeSteps

    model = tiny_llama(seed=5)
    model.save_pretrained(tmp_path / "ckpt", safe_serialization=True)
    source = ModelSource(name="tiny", path=str(tmp_path / "ckpt"))
    steps = DecodeSteps(warmup_steps=2, decode_steps=12, prefill_runs=2)
    task = BenchTask(variant("fp32"), Runtime.LLAMACPP, source.weights_id(), 8, 8, 64, steps)
    worker = PointWorker(device("cpu"), source, str(tmp_path))
    m = worker.run(task)
    prompt = np.asarray(m.prompt_ids, np.int32)
    assert list(m.tokens) == _transformers_greedy(model, prompt, steps.num_tokens)
    assert m.tokens == m.reference_tokens  # fp32's XLA reference agrees as well
    assert m.llamacpp_type == "F32" and m.fp32_agreement == 1.0
    assert m.fp32_logit_error < 1e-2  # llama.cpp keeps its KV cache in float16
    assert len(m.decode_samples_ms) == 12 and len(m.prefill_samples_ms) == 2
    assert m.runtime_decode_ms is not None and 0 < m.runtime_decode_ms <= max(m.decode_samples_ms)
    assert m.weight_bytes == next((tmp_path / "llamacpp").glob("*-F32.gguf")).stat().st_size
    # A second point of the same weights: the model stays resident, the file is reused.
    again = worker.run(dataclasses.replace(task, prompt_length=16, prompt_bucket=16))
    assert again.upload_s == 0.0 and again.num_uploads == m.num_uploads


@pytest.mark.slow
def test_quantized_points_run_llamacpps_own_quantization(tmp_path: Path):
    """int4 runs the checkpoint quantized by llama.cpp's quantizer to Q4_1 (cached by
    content); a GGUF checkpoint that already holds Q4_1 linears runs as it is."""
    from workers.llamacpp import model_file
    from workers.point import ModelSource

    save_tiny_llama(tmp_path / "ckpt", seed=2)
    source = ModelSource(name="tiny", path=str(tmp_path / "ckpt"))
    path, kind = model_file(source, variant("int4"), source.weights_id(), tmp_path)
    assert kind == "Q4_1" and path.parent == tmp_path / "llamacpp"
    assert tensor_types(path) == {"Q4_1": 7 * TINY_SHAPES.num_hidden_layers}
    mtime = path.stat().st_mtime_ns
    again, _ = model_file(source, variant("int4"), source.weights_id(), tmp_path)
    assert again == path and path.stat().st_mtime_ns == mtime  # from the cache

    gguf_source = ModelSource(name="q41", path=str(path))
    own, own_kind = model_file(gguf_source, variant("int4"), gguf_source.weights_id(), tmp_path)
    assert (own, own_kind) == (path, "Q4_1")


@pytest.mark.slow
def test_smoke_sweep_runs_all_three_runtimes(tmp_path: Path, ray_cluster, shared_cache):
    """`grid.runtimes=[iree,xla,llamacpp]` on the smoke grid: ok rows for every runtime,
    and the report puts them side by side."""
    outcome, _ = sweep(
        tmp_path, shared_cache, "+grid=smoke", "grid.runtimes=[iree,xla,llamacpp]",
        "grid.prompt_lengths=[8]",
    )  # fmt: skip
    assert outcome.exit_code == 0
    rows = read_results(tmp_path / "results").to_pylist()
    statuses = {(r["runtime"], r["variant"]): r["status"] for r in rows}
    assert set(statuses.values()) == {Status.OK}, statuses
    assert {runtime for runtime, _ in statuses} == {"iree", "xla", "llamacpp"}
    llama = {r["variant"]: r for r in rows if r["runtime"] == Runtime.LLAMACPP}
    assert {v: r["llamacpp_type"] for v, r in llama.items()} == {"fp32": "F32", "int4": "Q4_1"}
    assert all(r["flag_set"] == "-" and r["runtime_decode_ms"] > 0 for r in llama.values())
    assert llama["fp32"]["num_tokens_matched"] == len(llama["fp32"]["tokens"])

    from sweep.readers.report import main as report

    out = tmp_path / "report.md"
    assert report(["--results", str(tmp_path / "results"), "--out", str(out)]) == 0
    text = out.read_text()
    assert "Runtimes side by side" in text and "llama.cpp ms/tok" in text and "Q4_1" in text


@pytest.mark.slow
def test_without_the_extra_llamacpp_points_are_skipped_and_the_rest_runs(
    tmp_path: Path, ray_cluster, shared_cache, monkeypatch
):
    """A host without llama-cpp-python: its llama.cpp points are `skipped` naming the
    install command, the XLA points are ok, the exit code 0. The benchmark actors get a
    `llama_cpp` that cannot be imported first on their path (their runtime env's
    PYTHONPATH), as on a host where the extra is not installed."""
    from sweep.execute import cluster

    stub = tmp_path / "stub" / "llama_cpp"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('llama_cpp is not installed here')\n")
    root = cluster._project_root()
    monkeypatch.setattr(cluster, "_project_root", lambda: f"{stub.parent}{os.pathsep}{root}")
    outcome, text = sweep(
        tmp_path, shared_cache, "+grid=smoke", "grid.runtimes=[xla,llamacpp]",
        "grid.variants=[fp32]", "grid.prompt_lengths=[8]",
    )  # fmt: skip
    assert outcome.exit_code == 0, text
    rows = {r["runtime"]: r for r in read_results(tmp_path / "results").to_pylist()}
    assert rows["xla"]["status"] == Status.OK
    assert rows["llamacpp"]["status"] == Status.SKIPPED
    assert 'pip install -e ".[llamacpp]"' in rows["llamacpp"]["error_message"]


def test_the_grid_makes_one_llamacpp_point_per_gguf_type():
    """llama.cpp runs a GGUF file, not our graphs: no flag sets, one layout, and one
    point per llama.cpp type (both int8 formats of the baselines grid run Q8_0)."""
    from sweep.plan.config import load_config
    from sweep.plan.grid import NO_FLAG_SET, expand

    cfg, _ = load_config(["+grid=baselines", "grid.layouts=[out_major,in_major]"])
    points = expand(cfg, "model-id")
    llama = [p for p in points if p.runtime == Runtime.LLAMACPP]
    assert [(p.variant.name, llamacpp_type(p.variant)) for p in llama] == [
        ("fp32", "F32"), ("int8-u8-pc", "Q8_0"), ("int4-ui4-pc", "Q4_1")
    ]  # fmt: skip
    assert {(p.flag_set, p.layout) for p in llama} == {(NO_FLAG_SET, "out_major")}
    assert not any(p.compiled_by_iree for p in llama)
    iree = [p for p in points if p.runtime == Runtime.IREE]
    assert len(iree) == 5 * 2 * 2  # variants x layouts x flag sets, untouched
