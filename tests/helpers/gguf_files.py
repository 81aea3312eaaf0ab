"""Tiny GGUF files written as llama.cpp's converter writes them, for the GGUF tests.

`gguf.GGUFWriter` writes a random tiny Llama from transformers (`tests.helpers.tiny_llama`),
Q and K rows permuted for llama.cpp's RoPE, tensors quantized with `gguf.quants.quantize`,
and a GPT-2 style byte-level BPE vocabulary in the metadata.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import transformers

from tests.helpers import tiny_llama

T = gguf.GGMLQuantizationType

# Every type the tests write, on the tensors llama.cpp would put them on (norms stay F32).
MIXED = {
    "token_embd": T.Q8_0,
    "attn_q": T.Q4_1,
    "attn_k": T.Q4_1,
    "attn_v": T.Q8_0,
    "attn_output": T.F16,
    "ffn_gate": T.Q4_1,
    "ffn_up": T.Q8_0,
    "ffn_down": T.Q4_1,
    "output": T.Q8_0,
}
HEADS, KV_HEADS, HEAD_DIM, HIDDEN, FFN, LAYERS = 4, 2, 16, 64, 128, 2


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character table (byte-level BPE's alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


MERGES = ["Ġ t", "h e", "Ġt he", "Ġ c", "a t", "Ġc at", "1 2", "Ġ s"]
TOKENS = ["<|endoftext|>", *_bytes_to_unicode(), *(m.replace(" ", "") for m in MERGES)]


def tiny_model(tied: bool, seed: int = 0, rope: dict | None = None, **shape: Any) -> Any:
    """The tests' tiny Llama with this file's vocabulary (the GGUF tokenizer's); `shape`:
    transformers config overrides (`hidden_size`, `intermediate_size`)."""
    return tiny_llama(
        seed=seed, tied=tied, vocab_size=len(TOKENS), rms_norm_eps=1e-6, rope_scaling=rope, **shape
    )


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter (convert_hf_to_gguf.py `LlamaModel.permute`), HF -> GGUF."""
    return (
        w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def _gguf_tensors(model: transformers.LlamaForCausalLM) -> dict[str, np.ndarray]:
    """The model's tensors under GGUF names, Q and K permuted as llama.cpp does."""
    sd = {k: v.float().numpy() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": sd["model.embed_tokens.weight"]}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        out |= {
            f"blk.{i}.attn_norm.weight": sd[p + "input_layernorm.weight"],
            f"blk.{i}.ffn_norm.weight": sd[p + "post_attention_layernorm.weight"],
            f"blk.{i}.attn_q.weight": permute(sd[p + "self_attn.q_proj.weight"], HEADS),
            f"blk.{i}.attn_k.weight": permute(sd[p + "self_attn.k_proj.weight"], KV_HEADS),
            f"blk.{i}.attn_v.weight": sd[p + "self_attn.v_proj.weight"],
            f"blk.{i}.attn_output.weight": sd[p + "self_attn.o_proj.weight"],
            f"blk.{i}.ffn_gate.weight": sd[p + "mlp.gate_proj.weight"],
            f"blk.{i}.ffn_up.weight": sd[p + "mlp.up_proj.weight"],
            f"blk.{i}.ffn_down.weight": sd[p + "mlp.down_proj.weight"],
        }
    out["output_norm.weight"] = sd["model.norm.weight"]
    if not model.config.tie_word_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    return out


def write_tiny_gguf(
    path: Path,
    *,
    tied: bool = True,
    types: dict[str, object] | None = None,
    arch: str = "llama",
    pre: str = "smollm",
    seed: int = 0,
    rope: dict | None = None,
    hidden: int = HIDDEN,
    ffn: int = FFN,
) -> transformers.LlamaForCausalLM:
    """A tiny Llama as a GGUF file (types: GGUF tensor kind -> type; default MIXED);
    with `rope` (Llama 3 scaling), llama.cpp's `rope_freqs` tensor in its place; `hidden`
    and `ffn` widen it (rows of 256 for K-quants)."""
    types = MIXED if types is None else types
    shape = {}
    if (hidden, ffn) != (HIDDEN, FFN):
        shape = {"hidden_size": hidden, "intermediate_size": ffn, "head_dim": hidden // HEADS}
    model = tiny_model(tied, seed, rope, **shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("tiny")
    writer.add_block_count(LAYERS)
    writer.add_context_length(2048)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(hidden // HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_vocab_size(len(TOKENS))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_1)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(TOKENS)
    writer.add_token_types([3] + [1] * (len(TOKENS) - 1))
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    writer.add_add_bos_token(False)
    for name, w in _gguf_tensors(model).items():
        kind = name.split(".")[-2]
        qtype = types.get(kind, T.F32) if w.ndim == 2 else T.F32
        writer.add_tensor(name, gguf.quants.quantize(w, qtype), raw_dtype=qtype)
    if rope is not None:
        writer.add_tensor("rope_freqs.weight", _llama_cpp_rope_factors(rope))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


def _llama_cpp_rope_factors(rope: dict) -> np.ndarray:
    """What llama.cpp's converter writes for Llama 3 RoPE scaling (convert_hf_to_gguf.py,
    `LlamaModel.generate_extra_tensors`): each frequency's divisor."""
    freqs = 1.0 / (10000.0 ** (np.arange(0, HEAD_DIM, 2, dtype=np.float32) / HEAD_DIM))
    old = rope["original_max_position_embeddings"]
    low, high, factor = rope["low_freq_factor"], rope["high_freq_factor"], rope["factor"]
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            factors.append(1.0)
        elif wavelen > old / low:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)
