"""The checkpoint loader against checkpoints written by transformers itself, and its error paths.

The reference is a tiny random `LlamaForCausalLM` saved with `save_pretrained`: every
loaded tensor must equal torch's own state_dict widened to float32, bit for bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers import TINY_CHECKPOINT, load_checkpoint, save_tiny_llama, variant
from workers.checkpoints.safetensors import INDEX_FILE, SINGLE_FILE
from workers.checkpoints.source import lazy_checkpoint, lazy_synthetic_weights
from workers.checkpoints.tensors import CheckpointError
from workers.core.config import (
    PRESETS,
    LlamaConfig,
    RopeScaling,
    expected_shapes,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


def save_checkpoint(
    directory: Path,
    dtype: torch.dtype = torch.bfloat16,
    tied: bool = True,
    rope_scaling: dict | None = LLAMA3_ROPE,
    **kwargs: object,
) -> dict[str, torch.Tensor]:
    """The shared tiny Llama as a real checkpoint holds it: transformers' own init, bf16,
    Llama 3 rope scaling; returns its state_dict."""
    return save_tiny_llama(
        directory,
        dtype=str(dtype).removeprefix("torch."),
        unit_gain=False,
        tied=tied,
        rope_scaling=rope_scaling,
        rms_norm_eps=1e-6,
        rope_theta=500000.0,
        **kwargs,
    )


def expected_config(tied: bool = True, rope: RopeScaling | None = None) -> LlamaConfig:
    """What `save_checkpoint` saved, as the project's own config."""
    return dataclasses.replace(TINY_CHECKPOINT, rope_scaling=rope, tie_word_embeddings=tied)


LLAMA3_SCALING = RopeScaling(
    factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=64
)


def assert_matches_state_dict(
    cfg: LlamaConfig, weights: dict[str, np.ndarray], state_dict: dict[str, torch.Tensor]
) -> None:
    assert list(weights) == list(expected_shapes(cfg)), "weights must be in canonical order"
    for name, array in weights.items():
        assert array.dtype == np.float32 and array.flags.c_contiguous, name
        np.testing.assert_array_equal(array, state_dict[name].float().numpy(), err_msg=name)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_loads_transformers_checkpoint_exactly(tmp_path: Path, dtype: torch.dtype, tied: bool):
    state_dict = save_checkpoint(tmp_path, dtype=dtype, tied=tied)
    cfg, weights = load_checkpoint(tmp_path)
    assert cfg == expected_config(tied=tied, rope=LLAMA3_SCALING)
    assert ("lm_head.weight" in weights) == (not tied)
    assert_matches_state_dict(cfg, weights, state_dict)


def test_sharded_checkpoint_loads_identically(tmp_path: Path):
    state_dict = save_checkpoint(tmp_path / "sharded", tied=False, max_shard_size="20KB")
    save_checkpoint(tmp_path / "single", tied=False)
    assert (tmp_path / "sharded" / INDEX_FILE).is_file()
    assert not (tmp_path / "sharded" / SINGLE_FILE).exists()
    cfg, weights = load_checkpoint(tmp_path / "sharded")
    assert_matches_state_dict(cfg, weights, state_dict)
    assert fingerprint(weights) == fingerprint(load_checkpoint(tmp_path / "single")[1])


def test_default_rope_has_no_scaling(tmp_path: Path):
    save_checkpoint(tmp_path, rope_scaling=None)
    cfg, _ = load_checkpoint(tmp_path)
    assert cfg == expected_config(rope=None), "rope_theta must come from rope_parameters"


def test_legacy_rope_keys_parse(tmp_path: Path):
    """Hub checkpoints (transformers 4) use top-level rope_theta / rope_scaling."""
    save_checkpoint(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    params = raw.pop("rope_parameters")
    raw["rope_theta"] = params.pop("rope_theta")
    raw["rope_scaling"] = params
    (tmp_path / "config.json").write_text(json.dumps(raw))
    cfg, _ = load_checkpoint(tmp_path)
    assert cfg == expected_config(rope=LLAMA3_SCALING)


def test_loads_without_torch(tmp_path: Path):
    save_checkpoint(tmp_path)
    code = (
        "import sys; from workers.checkpoints.source import lazy_checkpoint; "
        f"t = lazy_checkpoint({str(tmp_path)!r}); [t[n] for n in t]; "
        "assert 'torch' not in sys.modules, 'the checkpoint loader imported torch'"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


# --- errors: each names the file, and the tensor where one is involved ---


def raises(*parts: str) -> contextlib.AbstractContextManager:
    """pytest.raises(CheckpointError) whose message contains every part, in order."""
    return pytest.raises(CheckpointError, match=".*".join(re.escape(p) for p in parts))


def rewrite_tensors(directory: Path, edit: Callable[[dict[str, torch.Tensor]], object]) -> None:
    """Re-saves model.safetensors after `edit(tensors)` changes the tensor dict."""
    path = directory / SINGLE_FILE
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_missing_directory(tmp_path: Path):
    with raises(str(tmp_path / "nope"), "does not exist"):
        load_checkpoint(tmp_path / "nope")


def test_missing_config(tmp_path: Path):
    save_checkpoint(tmp_path)
    (tmp_path / "config.json").unlink()
    with raises(str(tmp_path / "config.json"), "not found"):
        load_checkpoint(tmp_path)


def test_non_llama_config(tmp_path: Path):
    save_checkpoint(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["model_type"] = "gpt2"
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with raises(str(tmp_path / "config.json"), "'gpt2'", "supported model types"):
        load_checkpoint(tmp_path)


def test_no_weights_file(tmp_path: Path):
    save_checkpoint(tmp_path)
    (tmp_path / SINGLE_FILE).unlink()
    with raises(str(tmp_path), SINGLE_FILE, INDEX_FILE):
        load_checkpoint(tmp_path)


def test_index_references_missing_shard(tmp_path: Path):
    save_checkpoint(tmp_path, max_shard_size="20KB")
    weight_map = json.loads((tmp_path / INDEX_FILE).read_text())["weight_map"]
    shard = weight_map["model.layers.1.mlp.up_proj.weight"]
    (tmp_path / shard).unlink()
    with raises(INDEX_FILE, shard, "model.layers.1.mlp.up_proj.weight", "not found"):
        load_checkpoint(tmp_path)


def test_index_missing_tensor(tmp_path: Path):
    save_checkpoint(tmp_path, max_shard_size="20KB")
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    del index["weight_map"]["model.norm.weight"]
    (tmp_path / INDEX_FILE).write_text(json.dumps(index))
    with raises(INDEX_FILE, "'model.norm.weight'", "missing"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_missing_tensor(tmp_path: Path, tied: bool):
    save_checkpoint(tmp_path, tied=tied)
    name = "model.layers.1.mlp.up_proj.weight" if tied else "lm_head.weight"
    rewrite_tensors(tmp_path, lambda tensors: tensors.pop(name))
    with raises(SINGLE_FILE, repr(name), "missing"):
        load_checkpoint(tmp_path)


def test_untied_config_needs_lm_head(tmp_path: Path):
    save_checkpoint(tmp_path, tied=True)  # no lm_head.weight in the file
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["tie_word_embeddings"] = False
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with raises(SINGLE_FILE, "'lm_head.weight'", "missing"):
        load_checkpoint(tmp_path)


def test_extra_tensors_are_ignored(tmp_path: Path):
    state_dict = save_checkpoint(tmp_path, tied=True)

    def add_extras(tensors: dict[str, torch.Tensor]) -> None:
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
        tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)

    rewrite_tensors(tmp_path, add_extras)
    cfg, weights = load_checkpoint(tmp_path)
    assert_matches_state_dict(cfg, weights, state_dict)


def test_wrong_shape(tmp_path: Path):
    save_checkpoint(tmp_path)
    name = "model.layers.0.mlp.gate_proj.weight"
    rewrite_tensors(tmp_path, lambda tensors: tensors.update({name: torch.zeros(64, 128)}))
    with raises(SINGLE_FILE, repr(name), "expected (128, 64)", "got (64, 128)"):
        load_checkpoint(tmp_path)


def test_unsupported_dtype(tmp_path: Path):
    save_checkpoint(tmp_path)
    name = "model.norm.weight"
    rewrite_tensors(tmp_path, lambda tensors: tensors.update({name: torch.ones(64, dtype=int)}))
    with raises(SINGLE_FILE, repr(name), "unsupported dtype 'I64'", "BF16"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize(
    ("keep_bytes", "message"),
    [(4, "shorter than the 8-byte header length"), (100, "the header claims")],
    ids=["no-header-length", "header-cut"],
)
def test_truncated_file(tmp_path: Path, keep_bytes: int, message: str):
    save_checkpoint(tmp_path)
    path = tmp_path / SINGLE_FILE
    os.truncate(path, keep_bytes)
    with raises(str(path), message):
        load_checkpoint(tmp_path)


def test_data_cut_names_tensor(tmp_path: Path):
    save_checkpoint(tmp_path)
    path = tmp_path / SINGLE_FILE
    with open(path, "rb") as f:
        header_bytes = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_bytes))
    header.pop("__metadata__")
    last = max(header, key=lambda name: header[name]["data_offsets"][1])
    os.truncate(path, path.stat().st_size - 1)
    with raises(SINGLE_FILE, repr(last), "truncated"):
        load_checkpoint(tmp_path)


def test_corrupt_header(tmp_path: Path):
    save_checkpoint(tmp_path)
    path = tmp_path / SINGLE_FILE
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(b"\xffnot json")
    with raises(str(path), "corrupt safetensors header"):
        load_checkpoint(tmp_path)


# --- synthetic weights ---


def synthetic_weights(cfg: LlamaConfig, seed: int = 0) -> dict[str, np.ndarray]:
    tensors = lazy_synthetic_weights(cfg, seed)
    return {name: tensors[name] for name in tensors}


def fingerprint(weights: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name, array in weights.items():
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def test_synthetic_weights_are_seeded():
    cfg = PRESETS["tiny"]
    first = synthetic_weights(cfg, seed=0)
    assert fingerprint(first) == fingerprint(synthetic_weights(cfg, seed=0))
    assert fingerprint(first) != fingerprint(synthetic_weights(cfg, seed=1))
    assert {name: a.shape for name, a in first.items()} == expected_shapes(cfg)
    assert list(first) == list(expected_shapes(cfg))
    for name, array in first.items():
        assert array.dtype == np.float32 and array.flags.c_contiguous, name
        if array.ndim == 1:  # norms are near 1, not exactly 1
            assert abs(array.mean() - 1.0) < 0.01 and 0.01 < array.std() < 0.03, name
        else:  # unit gain: std 1/sqrt(fan_in)
            expected_std = 1.0 / np.sqrt(array.shape[-1])
            assert abs(array.mean()) < 0.1 * expected_std, name
            assert abs(array.std() / expected_std - 1.0) < 0.1, name


def test_synthetic_tensor_depends_only_on_seed_and_name():
    """Adding layers must not change the existing layers' bytes (no shared stream)."""
    tiny = PRESETS["tiny"]
    deeper = dataclasses.replace(tiny, num_hidden_layers=3)
    a, b = synthetic_weights(tiny), synthetic_weights(deeper)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    same_shape = ["model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight"]
    same_shape += ["model.layers.1.mlp.gate_proj.weight"]
    fingerprints = {fingerprint({"w": a[name]}) for name in same_shape}
    assert len(fingerprints) == len(same_shape), "each tensor needs its own generator stream"


def test_consumed_tensors_build_the_same_variant(tmp_path: Path):
    """The actor builds a variant from tensors made and dropped one at a time; it must be
    the variant built from all of them at once, for seeded and for real weights."""
    from workers.formats.weights import prepare_variant

    cfg = PRESETS["tiny"]
    made = prepare_variant(lazy_synthetic_weights(cfg, seed=3), cfg, variant("int4"), consume=True)
    expected = prepare_variant(synthetic_weights(cfg, seed=3), cfg, variant("int4"))
    assert made.names == expected.names and made.quant_error == expected.quant_error
    for name, a, b in zip(made.names, made.arrays, expected.arrays, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)

    save_checkpoint(tmp_path)
    _, loaded = load_checkpoint(tmp_path)
    from_disk = lazy_checkpoint(tmp_path)
    assert len(from_disk) == len(loaded)
    for name in list(from_disk.keys()):
        np.testing.assert_array_equal(from_disk.pop(name), loaded[name], err_msg=name)
    assert len(from_disk) == 0, "pop hands a tensor over and forgets it"


# --- the identity of a checkpoint's weights ---


def test_fingerprint_follows_the_content_and_is_remembered(tmp_path: Path, monkeypatch):
    import workers.checkpoints.source as ckpt_module
    from workers.checkpoints.source import fingerprint
    from workers.tasks import ModelSource

    model, cache = tmp_path / "model", tmp_path / "cache"
    save_checkpoint(model)
    source = ModelSource("mine", path=str(model))
    first = source.weights_id(cache)
    assert first == source.weights_id(cache) and len(first) == 16

    hashed = []
    original = ckpt_module._file_sha256
    monkeypatch.setattr(ckpt_module, "_file_sha256", lambda p: hashed.append(p.name) or original(p))
    assert fingerprint(model, cache) == fingerprint(model, cache)
    assert hashed == [], "unchanged files are not hashed again"

    data = bytearray((model / SINGLE_FILE).read_bytes())
    data[-2:] = bytes(255 - b for b in data[-2:])  # the last weight changes, the size does not
    time.sleep(0.01)
    (model / SINGLE_FILE).write_bytes(bytes(data))
    assert source.weights_id(cache) != first, "new weights at the same path are new weights"
    assert SINGLE_FILE in hashed
    assert ModelSource("mine", path=str(model)).weights_id(None) == source.weights_id(cache)
