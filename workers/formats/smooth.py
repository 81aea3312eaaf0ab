"""SmoothQuant (Xiao et al., 2023): a variant's activation outliers moved into its weights.

A per-token int8 activation (`per_token.py`) shares one scale across all K inputs of a
token, so a few channels with large values leave the others a handful of levels.
SmoothQuant divides each input channel j of a linear by

    s_j = max|x_j| ^ a / max_n |W[n, j]| ^ (1 - a)

and multiplies the weight's column j by s_j before quantizing: x W^T is unchanged in
exact arithmetic, the activation is flatter and the weight (one scale per output row)
takes the difference. `max|x_j|` comes from running the float model on a calibration
text (`workers.model.calibrate`); `a` is the variant's `smooth_alpha`.

The division is never a new op in the graph: it is folded into the tensor that makes
the linear's input, so the smoothed variant's graph is its unsmoothed variant's graph
with other numbers in it. Three folds per layer, each exact:

- q, k, v share the input RMSNorm's output: the norm's weight is divided by s;
- gate and up share the post-attention RMSNorm's output: likewise;
- o_proj's input is attention's output, linear in v: v_proj's output rows (and its
  bias) are divided by s, which costs v's own quantization nothing (each row has its
  own scale and minimum, which shrink with it). With grouped-query attention a v
  channel feeds `group` query heads' channels, so s is taken per (kv head, dim), from
  the maxima over the group.

down_proj stays unsmoothed. Its input, silu(gate) * up, is linear in up, so up's rows
could take the division as v's do; but its input has Llama's largest outliers, and at
a = 0.5 the columns they give a large s to dominate down's per-row weight scales (the
likely reason): on SmolLM2-135M that fold left W8A8's KLD worse than no
smoothing at all (0.046 against 0.032), where o's fold lowered it (docs/results.md).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from workers.checkpoints.tensors import LazyTensors
from workers.core.config import LlamaConfig

# Floors of the maxima and of s, as the SmoothQuant reference code clamps them.
_MIN_MAX = 1e-5
_MIN_SCALE = 1e-5


@dataclasses.dataclass(frozen=True)
class Fold:
    """One smoothing: the linears that read one input (their columns times s) and the
    tensors that make that input (divided by s: a norm's weight, or a linear's rows and
    bias). `group` > 1: the linears' inputs are `group` copies of each channel of the
    tensors divided (grouped-query attention's o_proj), which share one s."""

    linears: tuple[str, ...]  # weight names, [out, in] each
    divided: tuple[str, ...]  # a norm's weight [in], or a linear's rows [out, ..] and bias
    group: int = 1


def folds(cfg: LlamaConfig) -> tuple[Fold, ...]:
    """Every layer's three folds (see the module docstring)."""
    rep = cfg.num_attention_heads // cfg.num_key_value_heads
    out: list[Fold] = []
    for layer in range(cfg.num_hidden_layers):
        p = f"model.layers.{layer}"
        v = (f"{p}.self_attn.v_proj.weight",)
        if cfg.attention_bias:
            v += (f"{p}.self_attn.v_proj.bias",)
        out += [
            Fold(
                tuple(f"{p}.self_attn.{n}_proj.weight" for n in "qkv"),
                (f"{p}.input_layernorm.weight",),
            ),
            Fold((f"{p}.self_attn.o_proj.weight",), v, rep),
            Fold(
                (f"{p}.mlp.gate_proj.weight", f"{p}.mlp.up_proj.weight"),
                (f"{p}.post_attention_layernorm.weight",),
            ),
        ]
    return tuple(out)


def smoothing_scale(act_max: np.ndarray, weight_max: np.ndarray, alpha: float) -> np.ndarray:
    """s [K] from the activation's and the weight's maxima per input channel [K]."""
    act = np.maximum(np.asarray(act_max, np.float64), _MIN_MAX)
    weight = np.maximum(np.asarray(weight_max, np.float64), _MIN_MAX)
    return np.maximum(act**alpha / weight ** (1 - alpha), _MIN_SCALE).astype(np.float32)


def fold_scales(
    cfg: LlamaConfig,
    act_max: Mapping[str, np.ndarray],
    weight_max: Mapping[str, np.ndarray],
    alpha: float,
) -> dict[str, tuple[np.ndarray | None, np.ndarray | None]]:
    """Tensor name -> (its columns' factors [in], its rows' divisors [out]), None where
    untouched: every fold's s, from the maxima per input channel of each linear's input
    (`act_max`) and of its weight's columns (`weight_max`), both by weight name."""
    columns: dict[str, np.ndarray] = {}
    rows: dict[str, np.ndarray] = {}
    d = cfg.head_dim
    for fold in folds(cfg):
        act = _grouped_max(act_max[fold.linears[0]], fold.group, d)
        weight = np.max([weight_max[n] for n in fold.linears], axis=0)
        s = smoothing_scale(act, _grouped_max(weight, fold.group, d), alpha)
        for name in fold.linears:
            columns[name] = _expanded(s, fold.group, d)
        for name in fold.divided:
            rows[name] = s
    return {n: (columns.get(n), rows.get(n)) for n in {*columns, *rows}}


def _grouped_max(values: np.ndarray, group: int, head_dim: int) -> np.ndarray:
    """[heads * D] -> [kv_heads * D]: the maximum over each kv head's `group` query heads
    (query head h reads kv head h // group, as the graph's reshape has it)."""
    values = np.asarray(values)
    if group == 1:
        return values
    return values.reshape(-1, group, head_dim).max(axis=1).reshape(-1)


def _expanded(s: np.ndarray, group: int, head_dim: int) -> np.ndarray:
    """[kv_heads * D] -> [heads * D]: each kv channel's s for its `group` query heads."""
    if group == 1:
        return s
    return np.repeat(s.reshape(-1, 1, head_dim), group, axis=1).reshape(-1)


def smoothed(
    tensors: Any, scales: Mapping[str, tuple[np.ndarray | None, np.ndarray | None]]
) -> Any:
    """The checkpoint tensors with `fold_scales` applied, each made when asked for (a
    `LazyTensors` over `tensors`, which may be lazy itself): fp32 [out, in] matrices and
    1-D norms and biases, as the checkpoint gives them."""
    return LazyTensors(
        {name: functools.partial(_one, tensors, name, scales.get(name)) for name in tensors}
    )


def _one(
    tensors: Any, name: str, scale: tuple[np.ndarray | None, np.ndarray | None] | None
) -> np.ndarray:
    w = tensors[name]
    if scale is None:
        return w
    columns, rows = scale
    w = np.asarray(w, np.float32)
    if columns is not None:
        w = w * columns[None, :]
    if rows is not None:
        w = w / (rows[:, None] if w.ndim == 2 else rows)
    return w
