"""llama.cpp as a runtime (workers/runtimes/llamacpp.py): the GGUF file it is given, the tokens it
decodes, and the rows a sweep makes of it.

The reference is Hugging Face transformers on the same tiny random Llama: llama.cpp runs
a GGUF that `workers.checkpoints.gguf.write_gguf` wrote from the model's safetensors, so a wrong
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
from tests.helpers import TINY_CHECKPOINT, device, save_tiny_llama, sweep, tiny_llama, variant
from workers.checkpoints.gguf import open_gguf, tensor_types, write_gguf
from workers.checkpoints.source import lazy_synthetic_weights
from workers.core.config import preset
from workers.core.kinds import Runtime, Status


def test_each_variant_runs_as_its_nearest_llamacpp_type():
    assert variant("fp32").llamacpp_type == "F32"
    assert variant("bf16").llamacpp_type == "BF16"
    assert variant("int8").llamacpp_type == "Q8_0"  # llama.cpp's 8-bit is symmetric
    assert variant("int4").llamacpp_type == "Q4_1"  # affine, as our int4 formats
    assert variant("int4-fac-g32").llamacpp_type == "Q4_1"
    assert variant("gguf-q4_0").llamacpp_type == "Q4_0"  # a file's own blocks


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_a_written_gguf_reads_back_as_the_same_model(tmp_path: Path, tied: bool):
    """write_gguf is the reader's inverse: the same config and every tensor bit for bit
    (Q and K permuted for llama.cpp on the way out, un-permuted on the way in), and
    Llama 3 RoPE scaling through llama.cpp's rope_freqs factors."""
    rope = preset("llama-3.2-1b")
    cfg = dataclasses.replace(
        TINY_CHECKPOINT,
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
    from workers.checkpoints.gguf import lazy_gguf

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
    from workers.point import PointWorker
    from workers.tasks import BenchTask, DecodeSteps, ModelSource

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
    from workers.runtimes.llamacpp import model_file
    from workers.tasks import ModelSource

    save_tiny_llama(tmp_path / "ckpt", seed=2)
    source = ModelSource(name="tiny", path=str(tmp_path / "ckpt"))
    path, kind = model_file(source, variant("int4"), source.weights_id(), tmp_path)
    assert kind == "Q4_1" and path.parent == tmp_path / "llamacpp"
    assert tensor_types(path) == {"Q4_1": 7 * TINY_CHECKPOINT.num_hidden_layers}
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
    assert [(p.variant.name, p.variant.llamacpp_type) for p in llama] == [
        ("fp32", "F32"), ("int8-u8-pc", "Q8_0"), ("int4-ui4-pc", "Q4_1")
    ]  # fmt: skip
    assert {(p.flag_set, p.layout) for p in llama} == {(NO_FLAG_SET, "out_major")}
    assert not any(p.compiled_by_iree for p in llama)
    iree = [p for p in points if p.runtime == Runtime.IREE]
    assert len(iree) == 5 * 2 * 2  # variants x layouts x flag sets, untouched


# --- llama.cpp's switches and its process --------------------------------------------------


def test_the_settings_reach_llamacpps_parameters():
    """Each switch lands in the struct llama.cpp reads; `auto` is off where the CPU has AMX;
    a field the bindings lack is an error, not a silently ignored attribute."""
    import llama_cpp

    from workers.core.devices import cpu_has_amx
    from workers.runtimes.llamacpp import context_params, model_params, set_fields
    from workers.tasks import LlamaCppSettings

    for extra_bufts, expected in (("on", True), ("off", False), ("auto", not cpu_has_amx())):
        params = model_params(llama_cpp, LlamaCppSettings(extra_bufts=extra_bufts))
        assert params.use_extra_bufts is expected, extra_bufts
        assert params.load_mode == llama_cpp.LLAMA_LOAD_MODE_NONE, "resident, not mmapped"
    ctx = context_params(llama_cpp, LlamaCppSettings(flash_attn="off", n_ubatch=64), 256, 2)
    assert (ctx.n_ctx, ctx.n_batch, ctx.n_ubatch, ctx.n_threads) == (256, 256, 64, 2)
    assert ctx.flash_attn_type == llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    assert context_params(llama_cpp, LlamaCppSettings(), 32, 1).n_ubatch == 32, "at most n_ctx"
    with pytest.raises(RuntimeError, match="has no"):
        set_fields(llama_cpp.llama_model_default_params(), use_mmap=False)
    with pytest.raises(ValueError, match="llamacpp.flash_attn='maybe'"):
        LlamaCppSettings(flash_attn="maybe")


def test_the_extra_bufts_axis_makes_llamacpp_points_and_keeps_the_default_keys():
    from sweep.plan.config import ConfigError, load_config
    from sweep.plan.grid import expand

    overrides = ["+grid=smoke", "grid.runtimes=[iree,llamacpp]", "grid.prompt_lengths=[8]"]
    default = expand(load_config(overrides)[0], "m")
    both = expand(load_config([*overrides, "llamacpp.extra_bufts=[auto,off]"])[0], "m")
    llama = [p for p in both if p.runtime == Runtime.LLAMACPP]
    assert sorted(p.llamacpp.extra_bufts for p in llama) == ["auto", "auto", "off", "off"]
    assert {p.key for p in default} < {p.key for p in both}, "auto keeps the keys it had"
    assert len({p.key for p in llama}) == 4
    assert any(p.label.endswith("extra_bufts-off") for p in llama)
    with pytest.raises(ConfigError, match=r"llamacpp.extra_bufts: unknown \['yes'\]"):
        load_config([*overrides, "llamacpp.extra_bufts=[yes]"])


REPORT = """\
Fatal signal 11: native backtrace
/lib/x86_64-linux-gnu/libffi.so.8(+0x6f7a)[0x7efdd0a0ef7a]
/usr/lib/python3.11/lib-dynload/_ctypes.cpython-311-x86_64-linux-gnu.so(+0x1117a)[0x7f]
/lib/x86_64-linux-gnu/libc.so.6(+0x3c050)[0x7efdd0e5a050]
/venv/llama_cpp/lib/libggml-cpu.so(ggml_backend_amx_mul_mat+0x2d1)[0x7f0012345678]
/venv/llama_cpp/lib/libggml-base.so(ggml_graph_compute+0x88)[0x7f0012345699]
Current thread 0x00007f (most recent call first):
  File "/work/workers/runtimes/llamacpp.py", line 301 in _decode
  File "/work/workers/runtimes/session.py", line 140 in greedy_decode
"""


def test_a_crash_report_names_the_signal_and_the_function():
    from workers.runtimes.llamacpp_process import crash_site, describe_crash

    assert crash_site(REPORT) == "ggml_backend_amx_mul_mat (libggml-cpu.so)"
    python_only = "\n".join(line for line in REPORT.splitlines() if ".so" not in line)
    assert crash_site(python_only) == "_decode (llamacpp.py:301)"
    message = describe_crash(-11, REPORT, "decode")
    assert message.startswith(
        "llama.cpp's process died of SIGSEGV (signal 11) in ggml_backend_amx_mul_mat"
    )
    assert "during `decode`" in message


@pytest.mark.slow
def test_a_native_crash_costs_the_point_and_not_the_resident_weights(tmp_path, monkeypatch):
    """llama.cpp's process crashes natively (SIGSEGV) in its timed loop: the worker raises
    NativeCrash naming the signal and the function, its IREE weights stay resident (the
    next IREE point uploads nothing), and the next llama.cpp point gets a new process."""
    from workers.compile.iree import compile_graph
    from workers.point import PointWorker
    from workers.runtimes.llamacpp_process import NativeCrash
    from workers.tasks import FAULT_ENV, BenchTask, DecodeSteps, ModelSource

    save_tiny_llama(tmp_path / "ckpt", seed=4)
    source = ModelSource(name="tiny", path=str(tmp_path / "ckpt"))
    steps = DecodeSteps(warmup_steps=1, decode_steps=4)
    iree = BenchTask(variant("fp32"), Runtime.IREE, source.weights_id(), 8, 8, 64, steps)
    cfg = source.config()
    cpu = device("cpu")
    vmfbs = [
        compile_graph(iree.graph(cfg, kind), cpu, cache_dir=tmp_path).vmfb
        for kind in ("prefill", "decode")
    ]
    worker = PointWorker(cpu, source, str(tmp_path))
    first = worker.run(iree, *vmfbs)
    assert first.upload_s > 0
    monkeypatch.setenv(FAULT_ENV, "decode")
    llama = dataclasses.replace(iree, runtime=Runtime.LLAMACPP)
    with pytest.raises(NativeCrash, match=r"SIGSEGV \(signal 11\) in .*during `decode`"):
        worker.run(llama)
    again = worker.run(iree, *vmfbs)
    assert again.upload_s == 0.0 and worker.iree.num_uploads == 1, "IREE's weights stayed"
    assert again.tokens == first.tokens
    monkeypatch.delenv(FAULT_ENV)
    m = worker.run(llama)
    assert m.llamacpp_type == "F32" and m.tokens == m.reference_tokens
    assert m.llamacpp_extra_bufts is not None and m.llamacpp_n_ubatch == 512


@pytest.mark.slow
def test_a_sweep_records_a_native_crash_as_one_row(
    tmp_path: Path, ray_cluster, shared_cache, monkeypatch
):
    """The acceptance on a real cluster: the llama.cpp points whose process crashes are
    `runtime_error` rows naming the signal, every IREE point is ok, and no actor uploaded
    its IREE weights twice (a crash in the actor itself would have restarted it)."""
    from workers.tasks import FAULT_ENV

    monkeypatch.setenv(FAULT_ENV, "decode")
    outcome, text = sweep(
        tmp_path, shared_cache, "+grid=smoke", "grid.runtimes=[iree,llamacpp]",
        "grid.variants=[fp32]", "grid.prompt_lengths=[8]", "bench.repeats=2",
        "bench.eval_chunks=0",
    )  # fmt: skip
    assert outcome.exit_code == 1, text
    rows = read_results(tmp_path / "results").to_pylist()
    llama = [r for r in rows if r["runtime"] == Runtime.LLAMACPP]
    iree = [r for r in rows if r["runtime"] == Runtime.IREE]
    assert len(llama) == 2 and len(iree) == 4, text
    for r in llama:
        assert r["status"] == Status.RUNTIME_ERROR and r["error_class"] == "NativeCrash"
        assert "SIGSEGV" in r["error_message"]
    assert all(r["status"] == Status.OK for r in iree)
    uploads: dict[str, int] = {}
    for r in iree:
        uploads[r["node_id"]] = uploads.get(r["node_id"], 0) + (r["upload_s"] > 0)
    assert all(n == 1 for n in uploads.values()), f"uploads per actor: {uploads}"
