"""Calibration for a smoothed variant (`Variant.smooth_alpha`): what SmoothQuant needs to
know about the float model's activations, and the variant's tensors smoothed with it.

The float model (fp32, the project's own graph through XLA on the CPU, the same one the
references run) reads one window of calibration tokens from an empty cache, and every
linear's input records its maximum |x| per input channel over the window's tokens
(`activation_max`). `workers.formats.smooth` turns those maxima and the weights' into
the folds.

The calibration text is the end of the built-in text (`workers.checkpoints.tokenizers.
builtin_text`): the quality columns score the windows at its start (the default
`bench.eval_text`), so the two never share a token unless a run asks for more windows
than the text has. A checkpoint without a tokenizer (seeded weights) calibrates on
seeded token ids.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from workers.core.config import LlamaConfig, is_linear
from workers.core.kinds import Layout
from workers.formats.variant import Variant
from workers.formats.weights import VariantWeights, jax_arrays, prepare_variant
from workers.model.graphs import LlamaGraphs

NUM_CALIBRATION_TOKENS = 512
_CALIBRATION_SEED = 20230118  # seeded ids for a model without a tokenizer
_TAIL_CHARS = 16_000  # of the built-in text, tokenized for its last tokens: ~4,000 tokens
FP32 = Variant("fp32")


def calibration_ids(cfg: LlamaConfig, tokenizer: Any | None) -> np.ndarray:
    """The calibration window [NUM_CALIBRATION_TOKENS] int32: the last tokens of the
    built-in text (the BOS first where the tokenizer adds one), or seeded ids."""
    if tokenizer is None:
        rng = np.random.Generator(np.random.PCG64(_CALIBRATION_SEED))
        return rng.integers(0, cfg.vocab_size, NUM_CALIBRATION_TOKENS).astype(np.int32)
    from workers.checkpoints.tokenizers import builtin_text

    ids = np.asarray(tokenizer.encode(builtin_text()[-_TAIL_CHARS:]).ids, np.int32)
    assert ids.size > NUM_CALIBRATION_TOKENS, "the built-in text's tail is too short"
    ids = ids[-NUM_CALIBRATION_TOKENS:].copy()
    if empty := tokenizer.encode("").ids:  # a tokenizer that adds a BOS gives [bos]
        ids[0] = empty[0]
    return ids


class _Tapped(LlamaGraphs):
    """The float graph, recording every linear's max |input| per channel as it runs."""

    taps: dict[str, Any]

    def _linear(self, w: dict[str, Any], name: str, x: Any) -> Any:
        import jax.numpy as jnp

        self.taps[f"{name}.weight"] = jnp.max(jnp.abs(x.astype(jnp.float32)), axis=0)
        return super()._linear(w, name, x)


def activation_max(cfg: LlamaConfig, fp32: VariantWeights, ids: np.ndarray) -> dict[str, Any]:
    """Weight name -> max |x| [in] of that linear's input over the tokens `ids` (fp32
    weights, through XLA on the CPU)."""
    import jax

    assert fp32.variant.name == FP32.name, "calibrate the float model"
    graphs = _Tapped(cfg, fp32.variant, len(ids), fp32.layout)

    def run(weights: tuple[Any, ...], tokens: Any) -> dict[str, Any]:
        graphs.taps = {}
        graphs.forward_all(weights, tokens, jax.numpy.int32(0))
        return graphs.taps

    cpu = jax.devices("cpu")[0]
    weights = tuple(jax.device_put(a, cpu, may_alias=True) for a in jax_arrays(fp32))
    taps = jax.jit(run)(weights, jax.device_put(ids, cpu))
    return {name: np.asarray(v) for name, v in taps.items()}


def weight_max(fp32: VariantWeights) -> dict[str, np.ndarray]:
    """Weight name -> max |W[:, j]| [in] over each linear's output rows."""
    axis = 1 if fp32.layout == Layout.IN_MAJOR else 0  # in_major: [in, out]
    return {
        name: np.abs(a).max(axis=axis)
        for name, a in zip(fp32.names, fp32.arrays, strict=True)
        if is_linear(name)
    }


def smoothed_tensors(
    cfg: LlamaConfig, tensors: Any, make_tensors: Any, alpha: float, tokenizer: Any | None
) -> Any:
    """`tensors` (fp32 checkpoint tensors, lazy) smoothed by SmoothQuant with `alpha`,
    calibrated on a float copy made from `make_tensors()` and freed before returning."""
    from workers.formats.smooth import fold_scales, smoothed

    fp32 = prepare_variant(make_tensors(), cfg, FP32, Layout.IN_MAJOR, consume=True)
    act = activation_max(cfg, fp32, calibration_ids(cfg, tokenizer))
    scales = fold_scales(cfg, act, weight_max(fp32), alpha)
    del fp32
    return smoothed(tensors, scales)
