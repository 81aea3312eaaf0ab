"""Helpers the tests share: the project's own devices, variants and smoke points, one way
to run a sweep in-process, one tiny-model factory, and checkpoint tools that only tests
need. Larger helpers live beside this module: `scheduler_sim` (a simulated cluster for the
scheduler), `gguf_files` (tiny GGUF files as llama.cpp writes them), `rows` (synthetic
result rows and the report readers' output), `search` (a scripted search measurement).

Test modules import helpers from here, never from one another.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks._common import fake_measurement as fake_measurement  # a benchmark's too
from workers.core.config import EMBEDDING, LlamaConfig, preset
from workers.core.devices import DeviceSpec
from workers.formats.packing import dequantize, unpack_lanes, unpack_uint4
from workers.formats.variant import Variant
from workers.formats.weights import VariantWeights

if TYPE_CHECKING:
    from sweep.plan.grid import Point


ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def _defaults():
    from sweep.plan.config import load_config

    return load_config([])[0]


def device(name: str) -> DeviceSpec:
    """A device as conf/device/<name>.yaml defines it: the sweep's own definition."""
    return _defaults().devices[name]


def variant(name: str) -> Variant:
    """A variant as conf/variant/<name>.yaml defines it."""
    return _defaults().variants[name]


def points(*overrides: str) -> list[Point]:
    """The smoke grid's points (`+grid=smoke` and `overrides`), keyed by their weights."""
    from sweep.plan.config import load_config
    from sweep.plan.grid import expand

    cfg, _ = load_config(["+grid=smoke", *overrides])
    return expand(cfg, "weights")


def load_checkpoint(path: Path) -> tuple[LlamaConfig, dict[str, np.ndarray]]:
    """Every tensor of a checkpoint directory, read by the project's own loader."""
    from workers.checkpoints.source import check_checkpoint, lazy_checkpoint

    tensors = lazy_checkpoint(path)
    return check_checkpoint(path), {name: tensors[name] for name in tensors}


def host_dequantized(vw: VariantWeights) -> dict[str, np.ndarray]:
    """A variant dequantized on the host back to fp32 checkpoint tensors ([out, in]): what
    the graph's in-graph dequant must compute."""
    by_name = dict(zip(vw.names, vw.arrays, strict=True))
    specs = {spec.name: spec for spec in vw.specs}
    out: dict[str, np.ndarray] = {}
    for name, array in by_name.items():
        if name.endswith((".scale", ".minimum", ".qbytes")):
            continue
        if not name.endswith(".qweight"):
            w = np.asarray(array, dtype=np.float32)
            out[name] = w.T.copy() if w.ndim == 2 and vw.layout == "in_major" else w
            continue
        base = name.removesuffix(".qweight")
        transposed = vw.layout == "in_major" and base not in (EMBEDDING, "lm_head.weight")
        axis = 0 if transposed else 1
        if specs[name].dtype == "uint32":
            assert vw.variant.bits is not None
            values = unpack_lanes(array, vw.variant.bits, axis)
        elif specs[name].dtype == "uint4":
            values = unpack_uint4(array).reshape(specs[name].shape)
        else:
            values = array
        if values.ndim == 3:  # factored: [N, K/G, G] or [K/G, G, N] -> the 2-D matrix
            values = (
                values.reshape(-1, values.shape[-1])
                if transposed
                else values.reshape(values.shape[0], -1)
            )
        scale, minimum = by_name[f"{base}.scale"], by_name[f"{base}.minimum"]
        if transposed:
            values, scale, minimum = values.T, scale.T, minimum.T
        offset = vw.variant.offset_of(base)
        out[base] = dequantize(np.ascontiguousarray(values), scale, minimum, offset)
    return out


def xla_logits(
    cfg: LlamaConfig, vw: VariantWeights, tokens: np.ndarray, max_seq: int = 64
) -> np.ndarray:
    """The logits at every position of `tokens` from the project's graph, jitted by XLA
    (no IREE): the in-graph computation to compare with a reference."""
    import jax

    from workers.formats.weights import jax_arrays
    from workers.model.graphs import LlamaGraphs

    graphs = LlamaGraphs(cfg, vw.variant, max_seq, vw.layout)
    return np.asarray(jax.jit(graphs.logits_all)(jax_arrays(vw), tokens))


# The smallest smoke sweep: the tiny model in fp32 with default flags.
SMOKE_FP32 = ("+grid=smoke", "grid.variants=[fp32]", "~grid.flag_sets.O3")


def sweep(tmp_path: Path, cache: Path, *overrides: str) -> tuple[Any, str]:
    """A sweep run in-process on the session cluster, as `python -m sweep` runs it, into
    `tmp_path/results` with `cache`: (its outcome, what it printed)."""
    from sweep.plan.config import load_config
    from sweep.run import run_sweep

    cfg, resolved = load_config(
        [f"results_dir={tmp_path / 'results'}", f"cache_dir={cache}", *overrides]
    )
    out = io.StringIO()
    return run_sweep(cfg, resolved, out=out), out.getvalue()


# The tests' transformers checkpoints (`tiny_llama`): the `tiny` preset's layers with a byte
# vocabulary of 256 (`save_byte_tokenizer`'s), eps 1e-6 and no RoPE scaling. Not the preset
# itself (`model=tiny`: vocabulary 512, Llama 3 RoPE scaling), which sweeps build from a seed.
TINY_CHECKPOINT = dataclasses.replace(
    preset("tiny"), vocab_size=256, rms_norm_eps=1e-6, rope_scaling=None
)

# TINY_CHECKPOINT as transformers' config keys (the same names); eps, RoPE and tying are
# each test's own choice.
TINY_LLAMA = {
    key: value
    for key, value in TINY_CHECKPOINT.to_dict().items()
    if key not in ("rms_norm_eps", "rope_theta", "rope_scaling", "tie_word_embeddings")
}


def tiny_llama(
    *,
    seed: int = 0,
    dtype: str = "float32",
    unit_gain: bool = True,
    tied: bool = True,
    **config: Any,
) -> Any:
    """A random 2-layer transformers Llama of TINY_CHECKPOINT's shapes (`config` overrides
    them): the one tiny model every test builds on.

    `unit_gain` draws every matrix with unit output scale and norms near 1, so greedy
    decode gives varied tokens (transformers' own init, std 0.02, repeats one token);
    without it the weights are transformers' init with the norms made distinguishable.
    """
    import torch
    import transformers

    torch.manual_seed(seed)
    hf_cfg = transformers.LlamaConfig(**{**TINY_LLAMA, "tie_word_embeddings": tied, **config})
    model = transformers.LlamaForCausalLM(hf_cfg).eval().to(getattr(torch, dtype))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if unit_gain and param.ndim == 1:
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            elif unit_gain:
                param.copy_(torch.randn_like(param) / math.sqrt(param.shape[-1]))
            elif "norm" in name:  # transformers inits norms to exactly 1.0
                param.add_(torch.randn_like(param) * 0.1)
    return model


def tiny_causal_lm(model_type: str, *, seed: int = 0, tied: bool = True, **config: Any) -> Any:
    """A random 2-layer transformers model of another family (`mistral`, `qwen2`,
    `qwen3`) with TINY_CHECKPOINT's shapes: norms (per-head ones too) 1 + noise, biases
    noise, so a graph that drops them gives other tokens, and the per-layer matrices at
    twice unit gain (with a tied embedding at unit gain greedy decode otherwise repeats
    the current token, as tests/test_model.py explains)."""
    import torch
    import transformers

    classes = {
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    }
    config_class, model_class = classes[model_type]
    torch.manual_seed(seed)
    keys = {**TINY_LLAMA, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": tied}
    # No special tokens: nothing in generate may stop early or mask a logit.
    keys |= {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    model = model_class(config_class(**{**keys, **config})).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.copy_(0.5 * torch.randn_like(param))
            elif param.ndim == 1:
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            else:
                gain = 2.0 if ".layers." in name else 1.0
                param.copy_(gain * torch.randn_like(param) / math.sqrt(param.shape[-1]))
    return model


def save_tiny_llama(
    directory: Path, *, max_shard_size: str | None = None, **kwargs: Any
) -> dict[str, Any]:
    """`tiny_llama(**kwargs)` saved by transformers itself (safetensors); its state_dict."""
    model = tiny_llama(**kwargs)
    extra = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(directory, safe_serialization=True, **extra)
    return model.state_dict()


def save_byte_tokenizer(directory: Path) -> Path:
    """A byte-level BPE `tokenizer.json` of exactly 256 tokens (the bytes, no merges),
    trained by the `tokenizers` library: the vocabulary of `save_tiny_llama`'s model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=256, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    lines = ["The quick brown fox jumps over the lazy dog.", "Pack my box with liquor jugs."]
    tokenizer.train_from_iterator(lines, trainer)
    assert tokenizer.get_vocab_size() == 256, tokenizer.get_vocab_size()
    tokenizer.save(str(Path(directory) / "tokenizer.json"))
    return directory


def hf_greedy(model: Any, prompt: np.ndarray, num_tokens: int) -> list[int]:
    """transformers' greedy continuation of `prompt`: exactly `num_tokens` tokens (no EOS
    stop), the reference our graphs' greedy tokens are checked against."""
    import torch

    input_ids = torch.from_numpy(prompt.astype(np.int64))[None]
    with torch.no_grad():
        out = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=num_tokens,
            min_new_tokens=num_tokens,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )
    return out[0, len(prompt) :].tolist()
