"""The Llama 3.x architecture and its close kin as a frozen dataclass, read from a Hugging
Face `config.json`.

`architecture` names the family, as llama.cpp names it: `llama` (Llama 3.x, Mistral,
TinyLlama), `qwen2` (Qwen2.5: a bias on q, k and v) and `qwen3` (an RMSNorm over each
head of q and k before RoPE, and a head_dim of its own). The graph asks the two facts it
needs, `attention_bias` and `qk_norm`, never the name. Other families (phi3's fused
qkv, gemma's scaled embedding and extra norms) are refused by name.

Everything downstream (weights, graphs, quantization) is a pure function of this
config, so it is the one place that knows the Hugging Face key names. Presets give
the shapes of real models for synthetic weights, so the default sweep needs no
download.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

# The seven per-layer linears, in Hugging Face naming; the order is the graph's
# argument order and never changes.
LINEARS: tuple[str, ...] = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
NORMS: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")
# The per-layer float vectors some architectures add: q, k, v biases (attention_bias)
# and the per-head RMSNorms of q and k (qk_norm). Never quantized.
BIASES: tuple[str, ...] = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
QK_NORMS: tuple[str, ...] = ("self_attn.q_norm", "self_attn.k_norm")
# Architectures the graph runs (llama.cpp's names); Hugging Face `model_type` -> ours.
ARCHITECTURES: tuple[str, ...] = ("llama", "qwen2", "qwen3")
HF_MODEL_TYPES: dict[str, str] = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
}
# Hugging Face keys for biases the graph does not have (refused when true).
_BIAS_KEYS: tuple[str, ...] = ("attention_bias", "mlp_bias")
# Families seen among small GGUFs that the graph does not take yet, named when refused.
REFUSED_ARCHITECTURES: tuple[str, ...] = ("phi3", "gemma", "gemma2", "gemma3")


def is_linear(name: str) -> bool:
    """True for a per-layer linear's checkpoint tensor (q, k, v, o, gate, up or down)."""
    return any(name.endswith(f"{linear}.weight") for linear in LINEARS)


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama 3 frequency-dependent RoPE scaling (`rope_type: llama3`)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: RopeScaling | None = None
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 131072
    # The family and what sets it apart from llama (see the module docstring); at their
    # defaults they are left out of `to_dict`, so llama's hashes stay as they were.
    architecture: str = "llama"
    attention_bias: bool = False  # q, k and v have a bias (qwen2)
    qk_norm: bool = False  # RMSNorm over each head of q and k before RoPE (qwen3)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"model config: architecture {self.architecture!r} is not supported; "
                f"supported: {list(ARCHITECTURES)} (refused: {list(REFUSED_ARCHITECTURES)})"
            )
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(
                    f"model config: {name} must be positive, got {getattr(self, name)}"
                )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"model config: num_attention_heads ({self.num_attention_heads}) must be a "
                f"multiple of num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"model config: head_dim must be even for RoPE, got {self.head_dim}")

    @classmethod
    def from_hf_dict(cls, raw: dict[str, Any], source: str = "config.json") -> LlamaConfig:
        """Reads a Hugging Face config of a supported family (`HF_MODEL_TYPES`); rejects
        other architectures by name."""
        raw = _legacy_rope_keys(raw)
        model_type = raw.get("model_type")
        architecture = HF_MODEL_TYPES.get(model_type)  # type: ignore[arg-type]
        architectures = raw.get("architectures") or []
        causal_lm = f"{str(model_type).capitalize()}ForCausalLM"
        if architecture is None or (architectures and causal_lm not in architectures):
            raise ValueError(
                f"{source}: model_type={model_type!r}, architectures={architectures}: "
                f"supported model types: {sorted(HF_MODEL_TYPES)} (their *ForCausalLM); "
                f"not yet: {list(REFUSED_ARCHITECTURES)}"
            )
        # transformers' attention_bias also biases o_proj (llama, qwen3), mlp_bias the MLP:
        # neither is in the graph (qwen2's q/k/v biases are its architecture's, no key).
        refused = _BIAS_KEYS[1:] if architecture == "qwen2" else _BIAS_KEYS
        if biased := [k for k in refused if raw.get(k)]:
            raise ValueError(
                f"{source}: {', '.join(f'{k}: true' for k in biased)}: biases on the "
                "output projection or the MLP are not supported"
            )
        try:
            heads = int(raw["num_attention_heads"])
            hidden = int(raw["hidden_size"])
            cfg = cls(
                vocab_size=int(raw["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(raw["intermediate_size"]),
                num_hidden_layers=int(raw["num_hidden_layers"]),
                num_attention_heads=heads,
                num_key_value_heads=int(raw.get("num_key_value_heads") or heads),
                head_dim=int(raw.get("head_dim") or hidden // heads),
                rms_norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
                rope_theta=float(raw.get("rope_theta", 10000.0)),
                rope_scaling=_rope_scaling(raw, source),
                tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
                max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
                architecture=architecture,
                attention_bias=architecture == "qwen2",
                qk_norm=architecture == "qwen3",
            )
        except KeyError as e:
            raise ValueError(f"{source}: missing required key {e.args[0]!r}") from None
        return cfg

    @classmethod
    def from_json_file(cls, path: str | Path) -> LlamaConfig:
        """The one reader of a checkpoint's config.json; every error names the file."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(
                f"{path}: not found; a checkpoint directory needs a config.json"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(raw).__name__}")
        try:
            return cls.from_hf_dict(raw, source=str(path))
        except (TypeError, AttributeError) as e:  # e.g. "vocab_size": null
            raise ValueError(f"{path}: malformed Llama config ({e})") from None

    def to_dict(self) -> dict[str, Any]:
        """The fields, less the architecture's at their llama defaults: what identities
        hash (weights ids, graph fingerprints), unchanged for llama by the new fields."""
        fields = dataclasses.asdict(self)
        for name in ("architecture", "attention_bias", "qk_norm"):
            if fields[name] == _DEFAULTS[name]:
                del fields[name]
        return fields


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(LlamaConfig)}


def _legacy_rope_keys(raw: dict[str, Any]) -> dict[str, Any]:
    """Maps transformers 5's `rope_parameters` onto the `rope_theta`/`rope_scaling` keys.

    transformers >= 5 writes `rope_parameters: {rope_type, rope_theta, factor, ...}` and
    drops the two older keys that `LlamaConfig.from_hf_dict` reads (Hub checkpoints
    such as Llama-3.2-1B still use the older keys). Without this, a freshly saved
    checkpoint would silently get rope_theta=10000 and no llama3 scaling.
    """
    params = raw.get("rope_parameters")
    if not isinstance(params, dict) or "rope_theta" in raw or "rope_scaling" in raw:
        return raw
    out = dict(raw)
    if "rope_theta" in params:
        out["rope_theta"] = params["rope_theta"]
    out["rope_scaling"] = {k: v for k, v in params.items() if k != "rope_theta"}
    return out


def _rope_scaling(raw: dict[str, Any], source: str) -> RopeScaling | None:
    scaling = raw.get("rope_scaling")
    if not scaling:
        return None
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "default":
        return None
    if kind != "llama3":
        raise ValueError(
            f"{source}: rope_scaling type {kind!r} is not supported; use 'llama3' or none"
        )
    return RopeScaling(
        factor=float(scaling["factor"]),
        low_freq_factor=float(scaling["low_freq_factor"]),
        high_freq_factor=float(scaling["high_freq_factor"]),
        original_max_position_embeddings=int(scaling["original_max_position_embeddings"]),
    )


def expected_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Hugging Face tensor name -> shape, in the canonical (graph argument) order."""
    h, i, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.num_attention_heads * d, cfg.num_key_value_heads * d
    linear_shapes = {
        "self_attn.q_proj": (q, h),
        "self_attn.k_proj": (kv, h),
        "self_attn.v_proj": (kv, h),
        "self_attn.o_proj": (h, q),
        "mlp.gate_proj": (i, h),
        "mlp.up_proj": (i, h),
        "mlp.down_proj": (h, i),
    }
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (cfg.vocab_size, h)}
    for layer in range(cfg.num_hidden_layers):
        prefix = f"model.layers.{layer}"
        for norm in NORMS:
            shapes[f"{prefix}.{norm}.weight"] = (h,)
        for linear in LINEARS:
            shapes[f"{prefix}.{linear}.weight"] = linear_shapes[linear]
        if cfg.attention_bias:
            for linear in BIASES:
                shapes[f"{prefix}.{linear}.bias"] = linear_shapes[linear][:1]
        if cfg.qk_norm:
            for norm in QK_NORMS:
                shapes[f"{prefix}.{norm}.weight"] = (d,)
    shapes["model.norm.weight"] = (h,)
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, h)
    return shapes


def llama3_rope(original_max_position_embeddings: int) -> RopeScaling:
    """The RoPE scaling every Llama 3.1 and 3.2 checkpoint ships, for a context of
    `original_max_position_embeddings` before scaling."""
    return RopeScaling(
        factor=32.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=original_max_position_embeddings,
    )


PRESETS: dict[str, LlamaConfig] = {
    # Shapes of meta-llama/Llama-3.2-1B.
    "llama-3.2-1b": LlamaConfig(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling=llama3_rope(8192),
        tie_word_embeddings=True,
        max_position_embeddings=131072,
    ),
    # A 2-layer, 64-wide toy for the smoke grid and the tests (`model=tiny`): the same
    # architecture, seconds to compile. The tests' transformers checkpoints are these
    # layers with a byte vocabulary of 256 (`TINY_CHECKPOINT` in tests/helpers.py).
    "tiny": LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling=llama3_rope(64),
        tie_word_embeddings=True,
        max_position_embeddings=2048,
    ),
    # A mid-size model for benchmarks: big enough that decode time dominates overhead.
    "mid": LlamaConfig(
        vocab_size=32000,
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=4,
        num_attention_heads=16,
        num_key_value_heads=4,
        head_dim=64,
        rope_theta=500000.0,
        tie_word_embeddings=True,
    ),
}


def preset(name: str) -> LlamaConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown model preset {name!r}; known presets: {sorted(PRESETS)}"
        ) from None


def rope_inv_freq(cfg: LlamaConfig) -> np.ndarray:
    """Per-pair rotation frequencies [head_dim/2], with Llama 3 scaling when configured.

    Same float32 arithmetic as transformers' `_compute_llama3_parameters`.
    """
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / d))
    inv_freq = inv_freq.astype(np.float32)
    s = cfg.rope_scaling
    if s is None:
        return inv_freq
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


EMBEDDING = "model.embed_tokens.weight"


LM_HEAD = "lm_head.weight"
