"""The factored dequant (`dequant: factored`): its arithmetic against the host's.

Fast tier, numpy and JAX only: the graph's per-group contraction with the scales
applied after must compute x times the matrix the host's `dequantize` gives, for
every group size, both bit widths, both layouts, a matvec (decode), a matmul
(prefill) and a batch (`jax.vmap`, as `workers.model.graphs.batched` builds it). Whether
IREE fuses it is tests/test_factored_compile.py (slow).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from tests.helpers import variant, xla_logits
from workers.formats.factored import factored_linear_jnp
from workers.formats.packing import dequantize, pack_uint4, quantize, unpack_uint4
from workers.formats.variant import Variant

RNG = np.random.default_rng(26)
N, K = 48, 256


def _stored(q: np.ndarray, group: int, out_major: bool) -> np.ndarray:
    """[N, K] integers as the factored graph takes them: [N, K/G, G] or [K/G, G, N]."""
    if out_major:
        return q.reshape(N, K // group, group)
    return np.ascontiguousarray(q.T).reshape(K // group, group, N)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("out_major", [True, False])
@pytest.mark.parametrize("rows", [1, 5])
def test_factored_linear_is_x_times_the_host_dequant(
    bits: int, group: int, out_major: bool, rows: int
) -> None:
    import jax.numpy as jnp

    w = RNG.standard_normal((N, K)).astype(np.float32)
    offset = 1 << (bits - 1)
    q, scale, minimum = quantize(w, bits, group, "float16", offset)
    x = RNG.standard_normal((rows, K)).astype(np.float32)
    expected = x.astype(np.float64) @ dequantize(q, scale, minimum, offset).T.astype(np.float64)

    s, m = (scale, minimum) if out_major else (scale.T, minimum.T)
    got = factored_linear_jnp(
        jnp.asarray(x), jnp.asarray(_stored(q, group, out_major)), s, m, offset, out_major
    )
    assert got.shape == (rows, N)
    np.testing.assert_allclose(
        np.asarray(got), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max()
    )


@pytest.mark.parametrize("out_major", [True, False])
def test_factored_linear_batches_under_vmap(out_major: bool) -> None:
    """batch > 1 is `jax.vmap` over the activations with the weights shared."""
    import jax
    import jax.numpy as jnp

    group, offset = 64, 8
    w = RNG.standard_normal((N, K)).astype(np.float32)
    q, scale, minimum = quantize(w, 4, group, "float32", offset)
    s, m = (scale, minimum) if out_major else (scale.T, minimum.T)
    stored = jnp.asarray(_stored(q, group, out_major).astype(np.uint8)).astype(jnp.uint4)
    x = RNG.standard_normal((2, 3, K)).astype(np.float32)  # [batch, T, K]

    def one(xb):
        return factored_linear_jnp(xb, stored, s, m, offset, out_major)

    got = np.asarray(jax.vmap(one)(jnp.asarray(x)))
    expected = x @ dequantize(q, scale, minimum, offset).T
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bits", [4, 8])
def test_the_stored_minimum_is_the_value_at_the_offset(bits: int) -> None:
    """Folding the offset into the minimum on the host loses nothing: the factored
    format reconstructs the weights as closely as the plain one, within half a step."""
    w = RNG.standard_normal((N, K)).astype(np.float32)
    offset = 1 << (bits - 1)
    q0, s0, m0 = quantize(w, bits, 64)
    q, s, m = quantize(w, bits, 64, "float32", offset)
    np.testing.assert_allclose(m, m0 + offset * s0, rtol=1e-6, atol=1e-6)
    assert q.max() <= (1 << bits) - 1
    step = float(s.max())
    assert np.abs(dequantize(q, s, m, offset) - w).max() <= 0.5 * step * 1.01 + 1e-5
    assert np.abs(q.astype(int) - q0.astype(int)).max() <= 1  # the same rounding, up to ties


def test_the_factored_formats_are_what_they_say() -> None:
    for name, bits, group in (
        ("int4-fac-g32", 4, 32),
        ("int4-fac-g64", 4, 64),
        ("int4-fac-g128", 4, 128),
        ("int8-fac-g64", 8, 64),
    ):
        v = variant(name)
        assert (v.bits, v.group_size, v.factored, v.scale_dtype) == (bits, group, True, "float16")
        linear = "model.layers.0.mlp.up_proj.weight"
        assert v.factors(linear) and v.offset_of(linear) == 1 << (bits - 1)
        assert not v.factors("model.embed_tokens.weight")
    assert (
        variant("int4-ui4").fingerprint
        != Variant(**{**variant("int4-ui4").__dict__, "dequant": "factored"}).fingerprint
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"dequant": "fused"}, "dequant='fused'"),
        ({"dequant": "factored"}, "needs a quantized variant"),
        ({"bits": 4, "storage": "native", "dequant": "factored"}, "needs group_size"),
        ({"bits": 4, "group_size": 64, "dequant": "factored"}, "storage=native"),
    ],
)
def test_a_bad_factored_variant_says_what_is_wrong(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Variant("bad", **fields)


def test_packed_bytes_are_the_same_in_3d() -> None:
    """The 3-D weight is a reshape: IREE's ui4 packing of [N, K] and [N, K/G, G] agree."""
    q = RNG.integers(0, 16, size=(N, K)).astype(np.uint8)
    flat, split = pack_uint4(q), pack_uint4(q.reshape(N, K // 64, 64))
    np.testing.assert_array_equal(flat.reshape(-1), split.reshape(-1))
    np.testing.assert_array_equal(unpack_uint4(split).reshape(N, K), q)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("out_major", [True, False])
@pytest.mark.parametrize("rows", [1, 5])
def test_integer_linear_is_x_times_the_host_dequant_up_to_int8_rounding(
    bits: int, out_major: bool, rows: int
) -> None:
    """The integer formulation: the weight exact, the activation rounded to int8 per
    group, so the error is about half an int8 step of x, nowhere near a wrong sign."""
    import jax.numpy as jnp

    from workers.formats.integer import integer_linear_jnp

    group, offset = 32, 1 << (bits - 1)
    w = RNG.standard_normal((N, K)).astype(np.float32)
    q, scale, minimum = quantize(w, bits, group, "float16", offset)
    x = RNG.standard_normal((rows, K)).astype(np.float32)
    expected = x @ dequantize(q, scale, minimum, offset).T
    s, m = (scale, minimum) if out_major else (scale.T, minimum.T)
    stored = _stored(q, group, out_major)
    if bits == 4:
        stored = stored.astype(np.uint8).view(ml_dtypes.uint4)
    got = np.asarray(
        integer_linear_jnp(jnp.asarray(x), jnp.asarray(stored), s, m, offset, out_major)
    )
    rel = np.abs(got - expected).max() / np.abs(expected).max()
    assert 1e-5 < rel < 2e-2, rel  # rounded (not exact), and close


# --- the output matrix in blocks (embedding_group_size) ---------------------------------


def _grouped_embedding(bits: int, dequant: str, embedding_bits: int | None = None) -> Variant:
    return Variant(
        f"int{bits}-{dequant}-g32-qe{embedding_bits or ''}",
        bits=bits,
        group_size=32,
        storage="native",
        scale_dtype="float16",
        dequant=dequant,
        quantize_embedding=True,
        embedding_group_size=32,
        embedding_bits=embedding_bits,
    )


@pytest.mark.parametrize(
    ("bits", "embedding_bits", "dequant", "layout"),
    [
        (4, None, "factored", "out_major"),
        (8, None, "integer", "out_major"),
        (4, 8, "integer", "out_major"),
        (4, 8, "factored", "in_major"),
        (8, None, "direct", "in_major"),
        (4, None, "integer", "in_major"),
    ],
)
def test_an_embedding_in_blocks_is_the_host_dequant(
    bits: int, embedding_bits: int | None, dequant: str, layout: str
) -> None:
    """`embedding_group_size`: the tied embedding and lm_head in blocks of 32 along hidden
    (llama.cpp's Q8_0 output matrix), in the linears' bits or in `embedding_bits` (8
    beside 4-bit linears, as llama.cpp's Q4 files). The lookup and the lm_head
    (factored or integer, as the variant's linears are multiplied) compute the model
    the host dequantizes; integer dot products up to the activation's int8 rounding."""
    from tests.helpers import host_dequantized
    from workers.checkpoints.source import lazy_synthetic_weights
    from workers.core.config import EMBEDDING, preset
    from workers.formats.weights import prepare_variant

    cfg = preset("tiny")
    weights = lazy_synthetic_weights(cfg)
    v = _grouped_embedding(bits, dequant, embedding_bits)
    quantized = prepare_variant(weights, cfg, v, layout)
    specs = {s.name: s for s in quantized.specs}
    assert EMBEDDING not in specs, "the float table is gone"
    expected_shape = (
        (cfg.vocab_size, cfg.hidden_size // 32, 32)
        if v.factored
        else (cfg.vocab_size, cfg.hidden_size)
    )
    assert specs[f"{EMBEDDING}.qweight"].shape == expected_shape
    assert specs[f"{EMBEDDING}.scale"].shape == (cfg.vocab_size, cfg.hidden_size // 32)
    assert specs[f"{EMBEDDING}.qweight"].dtype == f"uint{embedding_bits or bits}"
    linear = "model.layers.0.mlp.up_proj.weight"
    assert specs[f"{linear}.qweight"].dtype == f"uint{bits}"
    host = prepare_variant(host_dequantized(quantized), cfg, variant("fp32"), layout)

    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, 12, dtype=np.int32)
    in_graph, on_host = xla_logits(cfg, quantized, tokens), xla_logits(cfg, host, tokens)
    scale = float(np.abs(on_host).max())
    error = float(np.abs(in_graph - on_host).max()) / scale
    if dequant == "integer":
        assert 1e-6 < error < 0.05, error  # the activations' rounding, and only that
        assert (in_graph.argmax(-1) == on_host.argmax(-1)).mean() >= 0.75
    else:
        assert error < 1e-5, error


def test_the_output_matrix_formats_are_what_they_say() -> None:
    for name, bits, embedding_bits in (
        ("int8-idot-g32-qe", 8, 8),
        ("int4-idot-g32-qe", 4, 4),
        ("int4-idot-g32-q8e", 4, 8),
    ):
        v = variant(name)
        assert (v.bits, v.group_size, v.embedding_group_size, v.dequant) == (
            bits,
            32,
            32,
            "integer",
        )
        assert v.bits_of("model.embed_tokens.weight") == embedding_bits
        assert v.centre_of("lm_head.weight") == 1 << (embedding_bits - 1)
        assert v.factors("model.embed_tokens.weight") and v.factors("lm_head.weight")
    # variants without the field keep their fingerprints (and their cached compiles):
    # these are the values from before the field existed
    assert variant("int4-ui4-qe").fingerprint == "d0da40a3d04c4ad0"
    assert variant("int4-fac-g64").fingerprint == "fb90450890450f7c"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"bits": 8, "embedding_group_size": 32}, "needs quantize_embedding"),
        ({"embedding_group_size": 32}, "need quantize_embedding"),
        ({"bits": 4, "storage": "native", "embedding_bits": 8}, "embedding_bits=8 must be"),
        (
            {"bits": 4, "quantize_embedding": True, "embedding_bits": 8},
            "storage: native",
        ),
        (
            {"bits": 4, "storage": "native", "quantize_embedding": True, "embedding_group_size": 3},
            "multiple of 2",
        ),
    ],
)
def test_a_bad_embedding_group_says_what_is_wrong(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Variant("bad", **fields)


@pytest.mark.parametrize("out_major", [True, False])
@pytest.mark.parametrize("rows", [1, 5])
def test_per_token_linear_is_x_times_the_host_dequant_up_to_int8_rounding(
    out_major: bool, rows: int
) -> None:
    """W8A8 (`dequant: per_token`): the weight exact per channel, the activation rounded to
    int8 once per token (one scale for all K), so the error is about half an int8 step of
    the row's largest value: larger than per block, nowhere near a wrong sign."""
    import jax.numpy as jnp

    from workers.formats.per_token import per_token_linear_jnp

    w = RNG.standard_normal((N, K)).astype(np.float32)
    q, scale, minimum = quantize(w, 8, None, "float32", 128)
    x = RNG.standard_normal((rows, K)).astype(np.float32)
    expected = x @ dequantize(q, scale, minimum, 128).T
    stored = q if out_major else np.ascontiguousarray(q.T)
    got = np.asarray(
        per_token_linear_jnp(jnp.asarray(x), jnp.asarray(stored), scale, minimum, out_major)
    )
    rel = np.abs(got - expected).max() / np.abs(expected).max()
    assert 1e-5 < rel < 3e-2, rel  # rounded (not exact), and close


def test_a_per_token_variant_is_int8_per_channel() -> None:
    v = variant("int8-w8a8")
    assert v.format.name == "per_token" and v.llamacpp_type == "Q8_0" and v.group_size is None
    with pytest.raises(ValueError, match="group_size=null"):
        Variant("w8a8-g32", bits=8, group_size=32, storage="native", dequant="per_token")
