"""The architectures besides llama (qwen2, qwen3, and mistral read as llama) against
transformers, from a Hugging Face directory and from a GGUF file.

The references are tiny random `Qwen2ForCausalLM`, `Qwen3ForCausalLM` and
`MistralForCausalLM` (`tests.helpers.tiny_causal_lm`: 2 layers, 64 wide, unit gain,
biases and per-head norms 1 + noise) saved with `save_pretrained`; the GGUF file is the
project's own writer's (`write_gguf`), read back by transformers' GGUF loader as well
as ours. qwen3's head_dim is 32 with hidden 64 and 4 heads, so a head size taken from
hidden / heads would fail. qwen2 and qwen3 files are stored unpermuted (NEOX RoPE): a
llama-style permutation on the way out or in would change the greedy tokens.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from tests.helpers import hf_greedy, load_checkpoint, tiny_causal_lm, variant, xla_logits
from workers.checkpoints.gguf import write_gguf
from workers.checkpoints.source import check_checkpoint, lazy_checkpoint
from workers.checkpoints.tensors import CheckpointError
from workers.core.config import expected_shapes, preset
from workers.formats.weights import prepare_variant
from workers.measure.reference import GreedyRun, reference_tokens
from workers.model.export import prompt_bucket
from workers.runtimes.session import prompt_ids

MAX_SEQ = 32
PROMPT_LENGTH = 11
NUM_TOKENS = 16
ATOL = RTOL = 1e-4  # fp32 logits, ours (XLA) against transformers (torch)

# model_type -> (our architecture, transformers config overrides)
FAMILIES: dict[str, tuple[str, dict]] = {
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", {"head_dim": 32}),
    "mistral": ("llama", {"sliding_window": None}),
}


def _greedy(
    model: transformers.PreTrainedModel, prompt: np.ndarray, num_tokens: int = NUM_TOKENS
) -> list[int]:
    return hf_greedy(model, prompt, num_tokens)


def _our_greedy(path: Path, prompt: np.ndarray) -> list[int]:
    """Our XLA graph's greedy tokens on the checkpoint as our loader reads it."""
    cfg = check_checkpoint(path)
    vw = prepare_variant(lazy_checkpoint(path), cfg, variant("fp32"), consume=True)
    run = GreedyRun(prompt, prompt_bucket(len(prompt), MAX_SEQ), MAX_SEQ, NUM_TOKENS)
    return list(reference_tokens(cfg, vw, run, weights_id="test"))


@pytest.fixture(scope="module")
def prompt() -> np.ndarray:
    return prompt_ids(256, PROMPT_LENGTH)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(model_type, the saved directory, the transformers model)."""
    model_type = request.param
    model = tiny_causal_lm(
        model_type, seed=7, tied=model_type != "qwen3", **FAMILIES[model_type][1]
    )
    directory = tmp_path_factory.mktemp(model_type)
    model.save_pretrained(directory, safe_serialization=True)
    return model_type, directory, model


def test_the_config_names_the_architecture_and_its_tensors(family) -> None:
    model_type, directory, model = family
    cfg, weights = load_checkpoint(directory)
    assert cfg.architecture == FAMILIES[model_type][0]
    assert cfg.attention_bias == (model_type == "qwen2")
    assert cfg.qk_norm == (model_type == "qwen3")
    assert cfg.head_dim == model.config.head_dim
    reference = model.state_dict()
    assert set(weights) == set(expected_shapes(cfg)) <= set(reference)
    for name, w in weights.items():
        np.testing.assert_array_equal(w, reference[name].numpy(), err_msg=name)


@pytest.mark.slow
def test_logits_and_greedy_tokens_match_transformers(family, prompt: np.ndarray) -> None:
    model_type, directory, model = family
    cfg, weights = load_checkpoint(directory)
    vw = prepare_variant(weights, cfg, variant("fp32"))
    with torch.no_grad():
        expected = model(torch.from_numpy(prompt.astype(np.int64))[None]).logits[0].numpy()
    ours = xla_logits(cfg, vw, prompt, MAX_SEQ)
    np.testing.assert_allclose(ours, expected, atol=ATOL, rtol=RTOL)
    tokens = _greedy(model, prompt)
    assert len(set(tokens)) >= 4, f"a near-constant reference says little: {tokens}"
    assert _our_greedy(directory, prompt) == tokens


@pytest.mark.slow
def test_a_written_gguf_gives_transformers_greedy_tokens(
    family, prompt: np.ndarray, tmp_path: Path
) -> None:
    """write_gguf's file, read by transformers' GGUF loader and by ours: the same tensors
    and the same greedy tokens as the Hugging Face directory."""
    model_type, directory, model = family
    path = tmp_path / f"{model_type}.gguf"
    cfg = check_checkpoint(directory)
    write_gguf(path, cfg, lazy_checkpoint(directory))
    back = check_checkpoint(path)
    assert back.architecture == cfg.architecture and back.head_dim == cfg.head_dim
    assert (back.attention_bias, back.qk_norm) == (cfg.attention_bias, cfg.qk_norm)
    # transformers' GGUF loader drops qwen3.attention.key_length (its ggml.py maps it to
    # nothing, so head_dim would be hidden / heads): it is passed as the config's.
    head_dim = {"head_dim": cfg.head_dim} if model_type == "qwen3" else {}
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, **head_dim
    ).eval()
    ours = lazy_checkpoint(path)
    reference = loaded.state_dict()
    for name in list(ours):
        np.testing.assert_array_equal(ours.pop(name), reference[name].numpy(), err_msg=name)
    tokens = _greedy(model, prompt)
    assert _greedy(loaded, prompt) == tokens
    assert _our_greedy(path, prompt) == tokens


@pytest.mark.slow
def test_llamacpp_decodes_transformers_greedy_tokens(family, tmp_path: Path) -> None:
    """The llama.cpp runtime on the F32 GGUF the worker writes from the directory: each
    architecture's tensors, metadata and (absent) permutation as llama.cpp reads them."""
    from tests.helpers import device
    from workers.core.kinds import Runtime
    from workers.point import PointWorker
    from workers.tasks import BenchTask, DecodeSteps, ModelSource

    model_type, directory, model = family
    source = ModelSource(name=model_type, path=str(directory))
    steps = DecodeSteps(warmup_steps=0, decode_steps=NUM_TOKENS - 1, prefill_runs=1)
    task = BenchTask(variant("fp32"), Runtime.LLAMACPP, source.weights_id(), 8, 8, 64, steps)
    m = PointWorker(device("cpu"), source, str(tmp_path)).run(task)
    assert list(m.tokens) == _greedy(model, np.asarray(m.prompt_ids, np.int32))
    assert m.tokens == m.reference_tokens  # and our XLA graph's


def test_quantized_variants_keep_biases_and_head_norms_float() -> None:
    cfg = dataclasses.replace(
        preset("tiny"), architecture="qwen3", attention_bias=True, qk_norm=True
    )
    specs = {s.name: s for s in variant("int8").arg_specs(cfg)}
    for name in ("q_proj.bias", "k_proj.bias", "v_proj.bias", "q_norm.weight", "k_norm.weight"):
        spec = specs[f"model.layers.1.self_attn.{name}"]
        assert spec.dtype == "float32" and len(spec.shape) == 1, spec
    assert "model.layers.1.self_attn.q_proj.weight.qweight" in specs


def test_llama_hashes_keep_their_fields() -> None:
    """At llama's defaults the new fields are not in `to_dict`, so the weights ids and graph
    fingerprints that hash it are what they were before architectures existed."""
    tiny = preset("tiny")
    assert not {"architecture", "attention_bias", "qk_norm"} & set(tiny.to_dict())
    qwen = dataclasses.replace(tiny, architecture="qwen2", attention_bias=True)
    assert qwen.to_dict() == {**tiny.to_dict(), "architecture": "qwen2", "attention_bias": True}


@pytest.mark.parametrize("model_type", ["phi3", "gemma2", "gpt2"])
def test_other_hf_architectures_are_refused_by_name(tmp_path: Path, model_type: str) -> None:
    config = {"model_type": model_type, "vocab_size": 8, "hidden_size": 8}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=f"model_type='{model_type}'.*phi3"):
        check_checkpoint(tmp_path)


def test_biases_the_graph_lacks_are_refused(tmp_path: Path, family) -> None:
    """transformers' attention_bias on llama or qwen3 biases o_proj too; a llama GGUF with
    q/k/v biases would lose them: both are refused, naming what is not supported."""
    model_type, directory, _ = family
    raw = json.loads((directory / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, "mlp_bias": True}))
    if model_type == "qwen2":  # its q/k/v biases are the architecture's; the MLP's are not
        with pytest.raises(CheckpointError, match="mlp_bias"):
            check_checkpoint(tmp_path)
        cfg = check_checkpoint(directory)
        path = tmp_path / "as-llama.gguf"
        write_gguf(path, dataclasses.replace(cfg, architecture="llama"), lazy_checkpoint(directory))
        with pytest.raises(CheckpointError, match="bias tensors the llama graph.*attn_k.bias"):
            check_checkpoint(path)
    else:
        (tmp_path / "config.json").write_text(json.dumps({**raw, "attention_bias": True}))
        with pytest.raises(CheckpointError, match="attention_bias: true"):
            check_checkpoint(tmp_path)


def test_other_gguf_architectures_are_refused_by_name(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "phi.gguf"
    writer = gguf.GGUFWriter(str(path), "phi3")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match="'phi3' \\(not yet.*llama, qwen2, qwen3"):
        check_checkpoint(path)


@pytest.mark.slow  # a real Ray cluster and iree-compile
def test_a_sweep_on_a_qwen3_directory_gives_transformers_tokens(
    ray_cluster, tmp_path: Path, shared_cache: Path
) -> None:
    """The IREE path end to end on a tiny qwen3 directory: fp32 and int8 points ok, fp32's
    compiled tokens transformers' own, the rows and the report's header say qwen3."""
    from sweep.readers import report
    from tests.helpers import sweep

    model = tiny_causal_lm("qwen3", seed=7, head_dim=32)
    model.save_pretrained(tmp_path / "qwen3", safe_serialization=True)
    outcome, printed = sweep(
        tmp_path, shared_cache, "+grid=smoke", "~grid.flag_sets.O3", "grid.variants=[fp32,int8]",
        "grid.prompt_lengths=[8]", f"model.path={tmp_path / 'qwen3'}",
    )  # fmt: skip
    assert outcome.exit_code == 0, printed
    rows = {r["variant"]: r for r in outcome.rows}
    assert {v: r["status"] for v, r in rows.items()} == {"fp32": "ok", "int8": "ok"}
    assert {r["architecture"] for r in rows.values()} == {"qwen3"}
    fp32 = rows["fp32"]
    assert fp32["tokens"] == _greedy(model, np.asarray(fp32["prompt_ids"]), len(fp32["tokens"]))
    out = tmp_path / "report.md"
    assert report.main(["--results", str(tmp_path / "results"), "--out", str(out)]) == 0
    assert "architecture: qwen3" in out.read_text().splitlines()[0]
