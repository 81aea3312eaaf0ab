"""GGUF checkpoints against transformers' own GGUF loading, and their error paths.

The files are written with `gguf.GGUFWriter` (tests/helpers/gguf_files.py), as llama.cpp's
converter writes them:
a random tiny Llama from transformers, Q and K rows permuted for llama.cpp's RoPE,
tensors quantized with `gguf.quants.quantize`, and a GPT-2 style byte-level BPE
vocabulary in the metadata. The reference is transformers reading the same file
(`from_pretrained(dir, gguf_file=...)`, which dequantizes and un-permutes by its own
code): every tensor must be equal, and (slow tier) the sweep's compiled graph must give
transformers' greedy tokens. No real model is needed.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import transformers

from tests.helpers.gguf_files import (
    FFN,
    HEAD_DIM,
    HEADS,
    HIDDEN,
    KV_HEADS,
    LAYERS,
    MIXED,
    TOKENS,
    T,
    write_tiny_gguf,
)
from workers.checkpoints.source import check_checkpoint, fingerprint, lazy_checkpoint
from workers.checkpoints.tensors import CheckpointError
from workers.checkpoints.tokenizers import load_tokenizer
from workers.core.config import LlamaConfig, expected_shapes


def transformers_gguf(path: Path) -> transformers.LlamaForCausalLM:
    return transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_tensors_equal_transformers_gguf_loading(tmp_path: Path, tied: bool):
    path = tmp_path / "tiny.gguf"
    original = write_tiny_gguf(path, tied=tied)
    cfg = check_checkpoint(path)
    assert cfg == LlamaConfig(
        vocab_size=len(TOKENS),
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        rms_norm_eps=pytest.approx(1e-6),
        rope_theta=10000.0,
        rope_scaling=None,
        tie_word_embeddings=tied,
        max_position_embeddings=2048,
    )
    ours = lazy_checkpoint(path)
    assert list(ours) == list(expected_shapes(cfg)), "canonical order, lm_head only if untied"
    reference = transformers_gguf(path).state_dict()
    before = original.state_dict()
    for name in list(ours):
        w = ours.pop(name)
        assert w.dtype == np.float32 and w.flags.c_contiguous, name
        np.testing.assert_array_equal(w, reference[name].numpy(), err_msg=name)
        # and close to the weights before quantization: the un-permute is right
        np.testing.assert_allclose(w, before[name].numpy(), atol=0.25, err_msg=name)
    assert len(ours) == 0, "pop forgets each tensor"


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_each_block_type_dequantizes_like_gguf(tmp_path: Path, qtype: str):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, types=dict.fromkeys(MIXED, T[qtype]))
    by_name = {t.name: t for t in gguf.GGUFReader(path).tensors}
    ours = lazy_checkpoint(path)
    t = by_name["blk.1.ffn_down.weight"]
    assert t.tensor_type.name == qtype
    expected = gguf.quants.dequantize(t.data, t.tensor_type).reshape(HIDDEN, FFN)
    np.testing.assert_array_equal(ours["model.layers.1.mlp.down_proj.weight"], expected)


def test_llama3_rope_scaling_is_recovered_from_rope_freqs(tmp_path: Path):
    """Llama 3.1/3.2 GGUFs carry `rope_freqs` instead of rope_scaling's numbers: the
    frequencies we rebuild from it must be transformers' own for the original model."""
    from workers.core.config import rope_inv_freq

    rope = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    model = write_tiny_gguf(tmp_path / "t.gguf", rope=rope)
    cfg = check_checkpoint(tmp_path / "t.gguf")
    assert cfg.rope_scaling is not None and cfg.rope_scaling.factor == 8.0
    expected = model.model.rotary_emb.inv_freq.numpy()
    np.testing.assert_allclose(rope_inv_freq(cfg), expected, rtol=1e-6)


def test_a_directory_holding_one_gguf_is_the_same_checkpoint(tmp_path: Path):
    write_tiny_gguf(tmp_path / "a" / "tiny.gguf")
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "tiny.gguf", tmp_path / "b" / "renamed.gguf")
    assert check_checkpoint(tmp_path / "a") == check_checkpoint(tmp_path / "a" / "tiny.gguf")
    assert fingerprint(tmp_path / "a") == fingerprint(tmp_path / "b" / "renamed.gguf"), (
        "identity is the content, not the file name"
    )
    write_tiny_gguf(tmp_path / "c" / "tiny.gguf", seed=1)
    assert fingerprint(tmp_path / "c") != fingerprint(tmp_path / "a")
    shutil.copy(tmp_path / "c" / "tiny.gguf", tmp_path / "a" / "other.gguf")
    with pytest.raises(CheckpointError, match="holds 2 GGUF files"):
        check_checkpoint(tmp_path / "a")


def test_tokenizer_from_metadata(tmp_path: Path):
    write_tiny_gguf(tmp_path / "smollm" / "t.gguf", pre="smollm")
    write_tiny_gguf(tmp_path / "gpt2" / "t.gguf", pre="gpt2")
    smollm, gpt2 = load_tokenizer(tmp_path / "smollm"), load_tokenizer(tmp_path / "gpt2")
    ids = smollm.encode("the cat 12<|endoftext|>").ids  # no merge "t he": t, he
    assert [TOKENS[i] for i in ids] == ["t", "he", "Ġcat", "Ġ", "1", "2", "<|endoftext|>"], (
        "smollm splits digits one by one; a control token is one token"
    )
    assert [TOKENS[i] for i in gpt2.encode(" 12").ids] == ["Ġ", "12"], "gpt2 merges digits"
    assert smollm.decode(ids) == "the cat 12", "byte-level decoding, control tokens dropped"
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path / "gpt2", gguf_file="t.gguf")
    text = "the cat sat on éé the mat"
    assert gpt2.encode(text).ids == reference(text).input_ids


def _patch_tensor_type(path: Path, name: str, value: int) -> None:
    """Overwrites one tensor's GGML type id in the header (tensor info: name, n_dims,
    dims as uint64, type as uint32, offset)."""
    raw = bytearray(path.read_bytes())
    at = raw.index(name.encode()) + len(name)
    n_dims = int.from_bytes(raw[at : at + 4], "little")
    at += 4 + 8 * n_dims
    raw[at : at + 4] = value.to_bytes(4, "little")
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("breakage", "named"),
    [
        ("arch", r"general.architecture='gpt2': supported GGUF architectures: llama, qwen2"),
        ("truncated", r"truncated: the GGUF file needs at least \d+ bytes but has \d+"),
        ("header", r"truncated"),
        ("unknown_type", r"a tensor has unknown GGML type id 99"),
        ("unsupported_type", r"'blk.0.attn_q.weight': tensor type I32 is not supported"),
        ("tokenizer", r"tokenizer.ggml.pre='no-such-pre' is not supported"),
        ("missing", r"GGUF file not found"),
    ],
)
def test_a_bad_gguf_is_exit_2_naming_the_problem(tmp_path: Path, breakage: str, named: str):
    """Through `python -m sweep`'s main: exit 2, before Ray and before any file is written."""
    from sweep.__main__ import main

    path = tmp_path / "bad.gguf"
    write_tiny_gguf(
        path,
        arch="gpt2" if breakage == "arch" else "llama",
        pre="no-such-pre" if breakage == "tokenizer" else "smollm",
    )
    if breakage == "truncated":
        os.truncate(path, path.stat().st_size - 100)
    elif breakage == "header":
        os.truncate(path, 2000)  # inside the vocabulary
    elif breakage == "unknown_type":
        _patch_tensor_type(path, "blk.0.attn_q.weight", 99)
    elif breakage == "unsupported_type":
        _patch_tensor_type(path, "blk.0.attn_q.weight", int(T.I32))
    elif breakage == "missing":
        path.unlink()
    prompt = ["bench.prompt=the cat"] if breakage == "tokenizer" else []
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["+grid=smoke", f"model.path={path}", *prompt, f"results_dir={tmp_path / 'r'}"])
    assert code == 2, err.getvalue()
    assert re.search(named, err.getvalue()), err.getvalue()
    assert str(path) in err.getvalue(), "the message names the file"
    assert not (tmp_path / "r").exists(), "nothing may be written for a bad checkpoint"


def test_a_gguf_sweep_names_the_checkpoint_not_the_preset(tmp_path: Path):
    """`model` in rows, reports and plots comes from `Point.model`: the checkpoint's file
    name and content fingerprint, never the preset name `conf/model/*.yaml` left."""
    from sweep.plan.config import load_config
    from sweep.run import run_sweep

    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    cfg, resolved = load_config(
        ["+grid=smoke", f"model.path={path}", "dry_run=true", f"results_dir={tmp_path}/r"]
    )
    assert cfg.model.name == "tiny", "the preset's name, before the sweep names the model"
    out = io.StringIO()
    assert run_sweep(cfg, resolved, out=out).exit_code == 0
    name = f"tiny.gguf@{fingerprint(path)[:12]}"
    assert f"model: {name}\n" in out.getvalue()
    own, _ = load_config(["+grid=smoke", f"model.path={tmp_path}", "model.name=mine"])
    assert own.model.label() == f"mine@{fingerprint(path)[:12]}", "a name of one's own is kept"
    seeded, _ = load_config(["+grid=smoke"])
    assert seeded.model.label() == "tiny", "seeded weights keep the preset's name"


@pytest.mark.slow  # a real Ray cluster and iree-compile
def test_sweep_gives_transformers_greedy_tokens_on_a_quantized_gguf(
    ray_cluster, tmp_path: Path, shared_cache: Path
):
    """Q4_1, Q8_0, F16 and F32 tensors, untied: the sweep's compiled fp32 graph on our
    dequantized weights and transformers' GGUF model decode the same greedy tokens."""
    from sweep.plan.config import load_config
    from sweep.readers import report
    from sweep.run import run_sweep

    path = tmp_path / "model" / "tiny-mixed.gguf"
    write_tiny_gguf(path, tied=False)
    cfg, resolved = load_config(
        [
            "+grid=smoke",
            "~grid.flag_sets.O3",
            "grid.variants=[fp32]",
            f"model.path={path}",
            "bench.prompt=the cat sat on the mat 12",
            f"results_dir={tmp_path / 'results'}",
            f"cache_dir={shared_cache}",
        ]
    )
    outcome = run_sweep(cfg, resolved, out=io.StringIO())
    assert outcome.exit_code == 0
    (row,) = outcome.rows
    assert row["status"] == "ok" and row["model"].startswith("tiny-mixed.gguf@")
    model = transformers_gguf(path)
    model.generation_config.eos_token_id = None  # nothing may stop early or mask a logit
    model.generation_config.pad_token_id = 0
    prompt = torch.tensor([row["prompt_ids"]])
    with torch.no_grad():
        generated = model.generate(prompt, max_new_tokens=len(row["tokens"]), do_sample=False)
    assert row["tokens"] == generated[0, prompt.shape[1] :].tolist()
    assert row["output_text"] == load_tokenizer(path).decode(row["tokens"])
    out = tmp_path / "report.md"
    assert report.main(["--results", str(tmp_path / "results"), "--out", str(out)]) == 0
    assert f"model: {row['model']}" in out.read_text(), "the report's header names the file"


def test_a_gguf_checkpoint_has_the_quality_columns_text(tmp_path: Path):
    """A GGUF file carries its tokenizer: the sweep scores its quality text with it (no
    tokenizer.json needed), windows as llama-perplexity cuts them."""
    from sweep.plan.config import load_config
    from sweep.plan.eval_text import eval_spec, read_text
    from workers.checkpoints.tokenizers import gguf_tokenizer

    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    cfg, _ = load_config([f"model.path={path}", "bench.eval_ctx=256", "bench.eval_chunks=5"])
    out = io.StringIO()
    spec = eval_spec(cfg, out)
    assert spec is not None and spec.num_eval_tokens == 5 * 127, out.getvalue()
    assert "quality: 635 scored tokens" in out.getvalue()
    text, _ = read_text(cfg.bench.eval_text)  # the default: the Python Language Reference
    assert list(spec.tokens[:256]) == gguf_tokenizer(path).encode(text).ids[:256]
