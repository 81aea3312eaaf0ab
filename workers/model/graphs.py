"""Llama 3.x in JAX as two static-shape graphs: prefill for a prompt bucket, decode for one token.

The same graphs run qwen2 (a float bias on q, k and v) and qwen3 (an RMSNorm over each
head of q and k before RoPE), as `LlamaConfig.attention_bias` and `qk_norm` say. Every
architecture's q and k rows are in Hugging Face's rotate-half order here: llama.cpp's
adjacent-pair `llama` files are un-permuted when read (`workers.checkpoints.gguf`).

    prefill(weights, tokens[bucket], real_len) -> (next_token, kcache, vcache)
    decode(weights, token, pos, kcache, vcache) -> (next_token, kcache, vcache)

The weights are arguments (a flat tuple in `VariantWeights.names` order), never
closure constants, so one compiled graph serves any checkpoint of the same shapes
and the device keeps them resident across calls. The argmax runs in the graph, so
one int32 (4 bytes) crosses to the host per step. The KV cache is
[layers, max_seq, kv_heads, head_dim] and is written with
`lax.dynamic_update_slice`: a range-slice write (`cache.at[l, :n].set(k)`) lowers
to a scatter that IREE's CUDA backend rejects.

Both graphs share one layer function: the new keys and values are written into
the cache at their positions, then every query attends over the whole cache with a
causal mask (key index <= query position). Masked scores are exactly zero after
the softmax, so attending over the padded cache gives the same numbers as
attending over the prompt alone; prompt padding beyond `real_len` is never
attended by a real position and is overwritten by decode.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from workers.core.config import EMBEDDING, LM_HEAD, LlamaConfig, rope_inv_freq
from workers.core.kinds import Layout
from workers.formats.base import contraction_axis, dot
from workers.formats.direct import unpack_lanes_jnp, unpack_uint4_jnp
from workers.formats.factored import Factored
from workers.formats.variant import Variant

Array = Any  # a jax array; jax is imported lazily so importing this module stays cheap


def cache_shape(cfg: LlamaConfig, max_seq: int) -> tuple[int, int, int, int]:
    """One KV cache (K or V): [layers, max_seq, kv_heads, head_dim]."""
    return (cfg.num_hidden_layers, max_seq, cfg.num_key_value_heads, cfg.head_dim)


class LlamaGraphs:
    """Builds the prefill and decode functions for one (config, variant, cache capacity)."""

    def __init__(
        self,
        cfg: LlamaConfig,
        variant: Variant,
        max_seq: int,
        layout: str = Layout.IN_MAJOR,
        attention_span: int | None = None,
    ) -> None:
        self.cfg = cfg
        self.variant = variant
        self.layout = layout
        # Decode attends over the cache's first `attention_span` slots (a static bucket
        # that holds the filled part); None: over all `max_seq`, whatever is filled.
        self.attention_span = attention_span
        self.names = tuple(spec.name for spec in variant.arg_specs(cfg, layout))
        self.max_seq = max_seq
        self.inv_freq = rope_inv_freq(cfg)

    @property
    def dtype(self) -> Any:
        import jax.numpy as jnp

        return jnp.dtype(self.variant.dtype)

    @property
    def cache_shape(self) -> tuple[int, int, int, int]:
        return cache_shape(self.cfg, self.max_seq)

    # --- the two graphs ---------------------------------------------------------------

    def prefill(
        self, weights: tuple[Array, ...], tokens: Array, real_len: Array
    ) -> tuple[Array, Array, Array]:
        import jax.numpy as jnp

        logits, kc, vc = self.prefill_logits(weights, tokens, real_len)
        return jnp.argmax(logits, axis=-1).astype(jnp.int32), kc, vc

    def decode(
        self, weights: tuple[Array, ...], token: Array, pos: Array, kcache: Array, vcache: Array
    ) -> tuple[Array, Array, Array]:
        import jax.numpy as jnp

        logits, kc, vc = self.decode_logits(weights, token, pos, kcache, vcache)
        return jnp.argmax(logits, axis=-1).astype(jnp.int32), kc, vc

    def decode_steps(
        self,
        weights: tuple[Array, ...],
        token: Array,
        pos: Array,
        kcache: Array,
        vcache: Array,
        *,
        steps: int,
    ) -> tuple[Array, Array, Array, Array]:
        """`steps` greedy decode steps in one call: a loop in the graph, each step's argmax
        fed to the next and the caches carried.

            (tokens [steps], the last token, kcache, vcache)

        The last token is an output of its own so the next call can take it as it is,
        with no slice on the host's side.
        """
        import jax.numpy as jnp
        from jax import lax

        def step(i: Array, carry: tuple[Array, ...]) -> tuple[Array, ...]:
            tok, kc, vc, out = carry
            nxt, kc, vc = self.decode(weights, tok, pos + i, kc, vc)
            return nxt, kc, vc, lax.dynamic_update_index_in_dim(out, nxt, i, axis=0)

        out = jnp.zeros((steps,), jnp.int32)
        last, kc, vc, out = lax.fori_loop(0, steps, step, (token, kcache, vcache, out))
        return out, last, kc, vc

    def prefill_logits(
        self, weights: tuple[Array, ...], tokens: Array, real_len: Array
    ) -> tuple[Array, Array, Array]:
        """Logits of the last real prompt position [vocab], and the filled caches."""
        import jax.numpy as jnp
        from jax import lax

        hidden, kc, vc = self.forward_all(weights, tokens, jnp.int32(0))
        last = lax.dynamic_slice_in_dim(hidden, real_len - 1, 1, axis=0)[0]
        return self._lm_head(weights, last), kc, vc

    def forward_all(
        self, weights: tuple[Array, ...], tokens: Array, start: Array
    ) -> tuple[Array, Array, Array]:
        """Final hidden states of every position [T, hidden] from empty caches."""
        import jax.numpy as jnp

        zeros = jnp.zeros(self.cache_shape, self.dtype)
        return self._forward(weights, tokens, start, zeros, zeros)

    def decode_logits(
        self, weights: tuple[Array, ...], token: Array, pos: Array, kcache: Array, vcache: Array
    ) -> tuple[Array, Array, Array]:
        hidden, kc, vc = self._forward(weights, token.reshape(1), pos, kcache, vcache)
        return self._lm_head(weights, hidden[0]), kc, vc

    def score_logits(self, weights: tuple[Array, ...], tokens: Array) -> Array:
        """Logits of the scored half of one window [T - 1 - T/2, vocab] (T = max_seq):
        what `workers.measure.perplexity` scores, as llama.cpp's perplexity does."""
        import jax.numpy as jnp

        t = tokens.shape[0]
        hidden, _, _ = self.forward_all(weights, tokens, jnp.int32(0))
        return self._lm_head(weights, hidden[t // 2 : t - 1])

    def logits_all(self, weights: tuple[Array, ...], tokens: Array) -> Array:
        """Logits of every prompt position [T, vocab]: what tests compare with transformers."""
        import jax.numpy as jnp

        hidden, _, _ = self.forward_all(weights, tokens, jnp.int32(0))
        return self._lm_head(weights, hidden)

    # --- the layers ----------------------------------------------------------------------

    def _forward(
        self, weights: tuple[Array, ...], tokens: Array, start: Array, kcache: Array, vcache: Array
    ) -> tuple[Array, Array, Array]:
        import jax.numpy as jnp

        w = dict(zip(self.names, weights, strict=True))
        x = self._embed(w, tokens)
        positions = start + jnp.arange(tokens.shape[0], dtype=jnp.int32)  # [T]
        cos, sin = self._rope(positions)
        for layer in range(self.cfg.num_hidden_layers):
            x, kcache, vcache = self._layer(w, layer, x, positions, start, cos, sin, kcache, vcache)
        return self._rms_norm(x, w["model.norm.weight"]), kcache, vcache

    def _layer(
        self,
        w: dict[str, Array],
        layer: int,
        x: Array,
        positions: Array,
        start: Array,
        cos: Array,
        sin: Array,
        kcache: Array,
        vcache: Array,
    ) -> tuple[Array, Array, Array]:
        import jax
        import jax.numpy as jnp
        from jax import lax

        c, p = self.cfg, f"model.layers.{layer}"
        t, d = x.shape[0], c.head_dim
        h = self._rms_norm(x, w[f"{p}.input_layernorm.weight"])
        q = self._projection(w, f"{p}.self_attn.q_proj", h).reshape(t, c.num_attention_heads, d)
        k = self._projection(w, f"{p}.self_attn.k_proj", h).reshape(t, c.num_key_value_heads, d)
        v = self._projection(w, f"{p}.self_attn.v_proj", h).reshape(t, c.num_key_value_heads, d)
        if c.qk_norm:  # qwen3: an RMSNorm over each head's D values, before RoPE
            q = self._rms_norm(q, w[f"{p}.self_attn.q_norm.weight"])
            k = self._rms_norm(k, w[f"{p}.self_attn.k_norm.weight"])
        q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
        zero = jnp.int32(0)
        kcache = lax.dynamic_update_slice(
            kcache, k[None].astype(kcache.dtype), (layer, start, zero, zero)
        )
        vcache = lax.dynamic_update_slice(
            vcache, v[None].astype(vcache.dtype), (layer, start, zero, zero)
        )
        span = self.attention_span or self.max_seq
        attn = self._attention(q, kcache[layer, :span], vcache[layer, :span], positions)
        x = x + self._linear(w, f"{p}.self_attn.o_proj", attn.reshape(t, -1))
        h = self._rms_norm(x, w[f"{p}.post_attention_layernorm.weight"])
        gate = jax.nn.silu(self._linear(w, f"{p}.mlp.gate_proj", h))
        up = self._linear(w, f"{p}.mlp.up_proj", h)
        return x + self._linear(w, f"{p}.mlp.down_proj", gate * up), kcache, vcache

    def _attention(self, q: Array, keys: Array, values: Array, positions: Array) -> Array:
        """q [T, Hq, D] over the cache keys/values [S, Hkv, D], causal by position."""
        import jax
        import jax.numpy as jnp

        c = self.cfg
        t, s = q.shape[0], keys.shape[0]
        rep = c.num_attention_heads // c.num_key_value_heads
        q = q.reshape(t, c.num_key_value_heads, rep, c.head_dim)
        scores = jnp.einsum("tgrd,sgd->grts", q, keys.astype(q.dtype)).astype(jnp.float32)
        scores = scores * np.float32(c.head_dim**-0.5)
        allowed = jnp.arange(s, dtype=jnp.int32)[None, :] <= positions[:, None]  # [T, S]
        scores = jnp.where(allowed[None, None], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
        out = jnp.einsum("grts,sgd->tgrd", probs, values.astype(q.dtype))
        return out.reshape(t, c.num_attention_heads, c.head_dim)

    # --- the weights: layout and dequant -------------------------------------------------

    def _linear(self, w: dict[str, Array], name: str, x: Array) -> Array:
        """x [T, in] times the linear's weight, as its format multiplies it
        (`workers.formats`: a float matrix, dequantized in the graph, or grouped)."""
        key = f"{name}.weight"
        return self.variant.format_of(key).linear(x, w, key, self.variant, self.layout)

    def _projection(self, w: dict[str, Array], name: str, x: Array) -> Array:
        """q, k or v: the linear, plus its float bias where the architecture has one (qwen2)."""
        out = self._linear(w, name, x)
        if self.cfg.attention_bias:
            out = out + w[f"{name}.bias"].astype(out.dtype)
        return out

    def _embed(self, w: dict[str, Array], tokens: Array) -> Array:
        """The embedding rows of `tokens` [T] -> [T, hidden], in the activation dtype."""
        import jax.numpy as jnp

        if not self.variant.quantizes(EMBEDDING):
            table = w[EMBEDDING]
            if self.layout == Layout.IN_MAJOR:  # [hidden, vocab]: gather columns
                return jnp.take(table, tokens, axis=1).T.astype(self.dtype)
            return jnp.take(table, tokens, axis=0).astype(self.dtype)  # [vocab, hidden]
        # Quantized: [vocab, hidden], a scale per row or per group of a row; gather the
        # rows and their scales, then dequantize.
        v = self.variant
        if v.integer_dtype_of(EMBEDDING) == "uint4":  # gather uint8 pairs: none of ui4 on CUDA
            values = unpack_uint4_jnp(jnp.take(w[f"{EMBEDDING}.qbytes"], tokens, axis=0))
        elif v.storage == "uint32":
            values = unpack_lanes_jnp(
                jnp.take(w[f"{EMBEDDING}.qweight"], tokens, axis=0), v.bits, 1
            )
        else:
            values = jnp.take(w[f"{EMBEDDING}.qweight"], tokens, axis=0)
        if w[f"{EMBEDDING}.scale"].ndim == 1:  # one scale per row
            scale = jnp.take(w[f"{EMBEDDING}.scale"], tokens).astype(jnp.float32)[:, None]
            minimum = jnp.take(w[f"{EMBEDDING}.minimum"], tokens).astype(jnp.float32)[:, None]
            return (values.astype(jnp.float32) * scale + minimum).astype(self.dtype)
        # per block of a row: [T, hidden / G, G], the minimum the value at q = offset
        scale = jnp.take(w[f"{EMBEDDING}.scale"], tokens, axis=0).astype(jnp.float32)
        minimum = jnp.take(w[f"{EMBEDDING}.minimum"], tokens, axis=0).astype(jnp.float32)
        grouped = values.reshape(*scale.shape, -1).astype(jnp.float32)
        if offset := v.offset_of(EMBEDDING):
            grouped = grouped - np.float32(offset)
        rows = grouped * scale[..., None] + minimum[..., None]
        return rows.reshape(tokens.shape[0], -1).astype(self.dtype)

    def _lm_head(self, weights: tuple[Array, ...], h: Array) -> Array:
        """h [.., hidden] -> logits [.., vocab] (float32) through the (tied) lm_head."""
        w = dict(zip(self.names, weights, strict=True))
        key = EMBEDDING if self.cfg.tie_word_embeddings else LM_HEAD
        fmt = self.variant.format_of(key)
        if isinstance(fmt, Factored):  # grouped, multiplied as the linears are: [vocab, hidden]
            rows = h.reshape(-1, h.shape[-1])
            logits = fmt.grouped(rows, w, key, self.variant, out_major=True)
            return logits.reshape(*h.shape[:-1], -1).astype("float32")
        head = fmt.matrix(w, key, self.variant, contraction_axis(key, self.layout)).astype(h.dtype)
        stored_in_major = self.layout == Layout.IN_MAJOR and not self.variant.quantizes(key)
        if stored_in_major:  # [hidden, vocab]
            return dot(h, head, h.ndim - 1, 0).astype("float32")
        logits = dot(head, h, 1, h.ndim - 1)  # [vocab, ..]: the table on the left
        return (logits.T if h.ndim == 2 else logits).astype("float32")

    def _rms_norm(self, x: Array, weight: Array) -> Array:
        import jax.numpy as jnp
        from jax import lax

        x32 = x.astype(jnp.float32)
        var = jnp.mean(x32 * x32, axis=-1, keepdims=True)
        normed = (x32 * lax.rsqrt(var + np.float32(self.cfg.rms_norm_eps))).astype(x.dtype)
        return weight.astype(x.dtype) * normed

    def _rope(self, positions: Array) -> tuple[Array, Array]:
        import jax.numpy as jnp

        freqs = positions.astype(jnp.float32)[:, None] * jnp.asarray(self.inv_freq)[None, :]
        emb = jnp.concatenate([freqs, freqs], axis=-1)  # [T, D], HF's rotate-half layout
        return jnp.cos(emb).astype(self.dtype), jnp.sin(emb).astype(self.dtype)


def _apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    import jax.numpy as jnp

    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


def batched(step: Any, batch: int, batched_args: tuple[bool, ...]) -> Any:
    """A graph of `batch` sequences from a graph of one: `jax.vmap` over the arguments
    marked True (tokens, caches), the others (weights, position, prompt length) shared.

    The sequences of a batch share the position, so the KV-cache writes stay a
    `dynamic_update_slice` (per-sequence positions would make them a scatter, which
    IREE's CUDA backend rejects); one batch is equal-length prompts, as in llama-bench.
    """
    if batch == 1:
        return step
    import jax

    return jax.vmap(step, in_axes=tuple(0 if b else None for b in batched_args))
