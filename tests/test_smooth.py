"""SmoothQuant (workers/formats/smooth.py, workers/model/calibrate.py): the folds leave the
float model as it was, divide each linear's input by its s, help W8A8 where activations
have outlier channels, and the smoothed variant runs a sweep.

The fast tests run the tiny preset (grouped-query attention: 4 heads over 2 kv heads,
so o_proj's fold into v is taken per kv channel) through XLA; the sweep is slow.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tests.helpers import sweep, variant, xla_logits
from workers.checkpoints.source import lazy_synthetic_weights
from workers.core.config import LlamaConfig, is_linear, preset
from workers.core.kinds import Layout
from workers.formats.smooth import fold_scales, smoothed
from workers.formats.variant import Variant
from workers.formats.weights import prepare_variant
from workers.model.calibrate import (
    FP32,
    activation_max,
    calibration_ids,
    smoothed_tensors,
    weight_max,
)

TINY = preset("tiny")
QWEN2_LIKE = dataclasses.replace(TINY, attention_bias=True)  # v's bias folds with its rows
TOKENS = np.random.default_rng(7).integers(0, TINY.vocab_size, 24).astype(np.int32)


def _smoothed(name: str) -> bool:
    """The linears whose input is smoothed: all but down_proj (workers/formats/smooth.py)."""
    return is_linear(name) and not name.endswith("down_proj.weight")


def _weights(cfg: LlamaConfig, seed: int = 0) -> dict[str, np.ndarray]:
    lazy = lazy_synthetic_weights(cfg, seed)
    return {name: lazy[name] for name in lazy}


def _fp32(cfg: LlamaConfig, weights: dict[str, np.ndarray]):
    return prepare_variant(dict(weights), cfg, FP32, Layout.IN_MAJOR)


def _scales(cfg: LlamaConfig, weights: dict[str, np.ndarray], alpha: float):
    fp32 = _fp32(cfg, weights)
    act = activation_max(cfg, fp32, calibration_ids(cfg, None))
    return act, fold_scales(cfg, act, weight_max(fp32), alpha)


@pytest.mark.parametrize("cfg", [TINY, QWEN2_LIKE], ids=["llama", "qwen2-bias"])
@pytest.mark.parametrize("alpha", [0.5, 0.85])
def test_smoothing_leaves_the_float_model_as_it_was(cfg: LlamaConfig, alpha: float) -> None:
    weights = _weights(cfg)
    _, scales = _scales(cfg, weights, alpha)
    smooth = smoothed(weights, scales)
    changed = {n for n in weights if not np.array_equal(smooth[n], weights[n])}
    # every linear's columns scaled but down's, the two norms divided, and v's bias with
    # its rows
    expected = {
        n for n in weights if _smoothed(n) or n.endswith(("layernorm.weight", "v_proj.bias"))
    }
    assert changed == expected
    before = xla_logits(cfg, _fp32(cfg, weights), TOKENS)
    after = xla_logits(cfg, _fp32(cfg, {n: smooth[n] for n in smooth}), TOKENS)
    error = np.abs(after - before).max() / np.abs(before).max()
    assert error < 1e-4, f"the folds changed the float model's logits by {error:.2e}"


def test_each_linear_input_is_divided_by_its_s() -> None:
    """Calibrating the smoothed model finds every input channel's max divided by the s its
    fold applied, and the weights' column maxima multiplied by it: the folds act where
    the linears read (o_proj's s shared by the query heads of one kv head)."""
    weights = _weights(TINY)
    act, scales = _scales(TINY, weights, 0.5)
    lazy = smoothed(weights, scales)
    smooth = {n: lazy[n] for n in lazy}
    fp32 = _fp32(TINY, smooth)
    after = activation_max(TINY, fp32, calibration_ids(TINY, None))
    assert not any(n.endswith("down_proj.weight") for n in scales), "down stays unsmoothed"
    for name in filter(_smoothed, weights):
        columns, rows = scales[name]
        assert columns is not None, f"{name}: smoothed"
        np.testing.assert_allclose(after[name], act[name] / columns, rtol=2e-4, err_msg=name)
        expected = weights[name] * columns[None, :]
        if rows is not None:  # v: its rows take o's division
            expected = expected / rows[:, None]
        np.testing.assert_allclose(smooth[name], expected, rtol=1e-6, err_msg=name)
    o = "model.layers.0.self_attn.o_proj.weight"
    per_head = scales[o][0].reshape(TINY.num_key_value_heads, -1, TINY.head_dim)
    assert (per_head == per_head[:, :1]).all(), "a kv head's query heads share s"


def test_smoothing_helps_w8a8_on_outlier_channels() -> None:
    """A model whose residual stream has a few channels 30 times the others (the norms'
    weights, as in real LLMs): per-token int8 activations lose the small channels, and
    SmoothQuant brings the logits back towards fp32's."""
    weights = _weights(TINY, seed=3)
    outliers = np.ones(TINY.hidden_size, np.float32)
    outliers[[3, 17, 40]] = 30.0
    for name in weights:
        if name.endswith("layernorm.weight"):
            weights[name] = weights[name] * outliers
    fp32 = xla_logits(TINY, _fp32(TINY, weights), TOKENS)
    plain, smooth = variant("int8-w8a8"), variant("int8-w8a8-sq")
    errors = {}
    for v in (plain, smooth):
        source = dict(weights)
        if v.smooth_alpha is not None:
            source = smoothed_tensors(TINY, source, lambda: dict(weights), v.smooth_alpha, None)
        logits = xla_logits(TINY, prepare_variant(source, TINY, v, Layout.OUT_MAJOR), TOKENS)
        errors[v.name] = np.linalg.norm(logits - fp32) / np.linalg.norm(fp32)
    assert errors["int8-w8a8-sq"] < errors["int8-w8a8"] / 2, errors


def test_a_smoothed_variant_is_the_same_graph_with_other_numbers() -> None:
    plain, smooth = variant("int8-w8a8"), variant("int8-w8a8-sq")
    assert smooth.smooth_alpha == 0.5 and smooth.match == "first"
    for layout in (Layout.IN_MAJOR, Layout.OUT_MAJOR):
        assert smooth.arg_specs(TINY, layout) == plain.arg_specs(TINY, layout)
    assert smooth.fingerprint != plain.fingerprint, "other numbers: other weights"
    unsmoothed = dataclasses.replace(smooth, name=plain.name, smooth_alpha=None)
    assert unsmoothed.fingerprint == plain.fingerprint, "fingerprints from before the field"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"smooth_alpha": 0.5}, "smooth_alpha needs a quantized variant"),
        ({"bits": 8, "smooth_alpha": 1.5}, r"smooth_alpha=1.5 must be in \[0, 1\]"),
        ({"blocks": "Q8_0", "smooth_alpha": 0.5}, "blocks: null"),
    ],
)
def test_a_bad_smoothing_says_what_is_wrong(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Variant("bad", **fields)


def test_calibration_reads_the_end_of_the_builtin_text() -> None:
    """With a tokenizer, the calibration window is the built-in text's last tokens (the
    quality columns score its first), BOS first."""
    from workers.checkpoints.tokenizers import builtin_text

    class Chars:  # a tokenizer of one id per character, that adds a BOS (0)
        def encode(self, text: str):
            return type("E", (), {"ids": [0] + [ord(c) % 500 + 1 for c in text]})()

    ids = calibration_ids(TINY, Chars())
    tail = [ord(c) % 500 + 1 for c in builtin_text()[-(len(ids) - 1) :]]
    assert ids[0] == 0 and list(ids[1:]) == tail


@pytest.mark.slow  # a real sweep: export, iree-compile and a Ray actor
def test_a_smoothed_sweep_runs_and_matches_its_reference(
    ray_cluster, tmp_path, shared_cache
) -> None:
    outcome, text = sweep(
        tmp_path,
        shared_cache,
        "+grid=smoke",
        "~grid.flag_sets.O3",
        "grid.variants=[int8-w8a8,int8-w8a8-sq]",
        "grid.prompt_lengths=[8]",
        "grid.layouts=[out_major]",
    )
    assert outcome.exit_code == 0, text
    rows = {r["variant"]: r for r in outcome.rows}
    assert sorted(rows) == ["int8-w8a8", "int8-w8a8-sq"]
    for name, r in rows.items():
        assert r["status"] == "ok", (name, r["error_message"])
        assert r["num_tokens_matched"] >= 1, name  # match: first (the activation's rounding)
    sq, plain = rows["int8-w8a8-sq"], rows["int8-w8a8"]
    assert sq["weight_bytes"] == plain["weight_bytes"], "the same arguments"
    assert sq["quant_error"] != plain["quant_error"], "other numbers in them"
