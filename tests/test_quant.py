"""Weight formats on the host: packing, quantization, argument specs and layouts.

Fast and exact: what the graphs receive must be what the arg specs promise, and the
two layouts must hold the same numbers. The graphs themselves (in-graph dequant
against host dequant, IREE against XLA and transformers) are in tests/test_model.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import host_dequantized, variant
from workers.checkpoints.source import lazy_synthetic_weights
from workers.core.config import preset
from workers.formats.packing import (
    dequantize,
    pack_lanes,
    pack_uint4,
    quantize,
    unpack_lanes,
    unpack_uint4,
)
from workers.formats.variant import LAYOUTS, Variant, numpy_dtype
from workers.formats.weights import jax_arrays, prepare_variant

TINY = preset("tiny")
FORMATS = [
    "int4",
    "int8",
    "int4-ui4",
    "int4-ui4-f16",
    "int4-ui4-pc",
    "int4-ui4-qe",
    "int8-u8",
    "int8-u8-pc",
    "int4-fac-g32",
    "int8-fac-g64",
]
RNG = np.random.default_rng(0)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("axis", [0, 1])
def test_lanes_pack_consecutive_values_little_end_first(bits: int, axis: int):
    q = RNG.integers(0, 1 << bits, size=(64, 48)).astype(np.uint8)
    packed = pack_lanes(q, bits, axis)
    assert packed.dtype == np.uint32 and packed.shape[axis] == q.shape[axis] * bits // 32
    np.testing.assert_array_equal(unpack_lanes(packed, bits, axis), q)
    first = packed[0, 0]
    along = q[: 32 // bits, 0] if axis == 0 else q[0, : 32 // bits]
    assert first == sum(int(v) << (bits * i) for i, v in enumerate(along))


def test_uint4_packs_two_per_byte_low_nibble_first():
    q = np.array([[1, 2, 15, 0], [7, 8, 9, 10]], np.uint8)
    packed = pack_uint4(q)
    np.testing.assert_array_equal(packed, [[0x21, 0x0F], [0x87, 0xA9]])
    np.testing.assert_array_equal(unpack_uint4(packed), q)


@pytest.mark.parametrize("group", [16, None])
@pytest.mark.parametrize("scale_dtype", ["float32", "float16"])
def test_quantize_round_trips_within_half_a_step(group: int | None, scale_dtype: str):
    w = RNG.standard_normal((32, 64)).astype(np.float32)
    q, scale, minimum = quantize(w, 4, group, scale_dtype)
    assert q.max() <= 15 and scale.dtype == np.dtype(scale_dtype)
    assert scale.shape == ((32, 64 // group) if group else (32,))
    step = scale.astype(np.float32).max()
    assert np.abs(dequantize(q, scale, minimum) - w).max() <= 0.5 * step * 1.01 + 1e-3


@pytest.mark.parametrize("name", FORMATS + ["fp32", "bf16"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_arrays_are_what_the_arg_specs_promise(name: str, layout: str):
    vw = prepare_variant(lazy_synthetic_weights(TINY, 0), TINY, variant(name), layout)
    assert vw.specs == variant(name).arg_specs(TINY, layout)
    for spec, array in zip(vw.specs, vw.arrays, strict=True):
        if spec.dtype == "uint4":  # held packed, two per byte
            assert array.dtype == np.uint8 and array.shape == (
                *spec.shape[:-1],
                spec.shape[-1] // 2,
            )
        else:
            assert array.dtype == numpy_dtype(spec.dtype) and array.shape == spec.shape, spec
        assert array.flags.c_contiguous and array.ctypes.data % 64 == 0, spec.name
    for spec, array in zip(vw.specs, jax_arrays(vw), strict=True):
        assert array.shape == spec.shape and array.dtype == numpy_dtype(spec.dtype)


@pytest.mark.parametrize("name", FORMATS)
def test_both_layouts_hold_the_same_numbers(name: str):
    inner, outer = (
        host_dequantized(
            prepare_variant(lazy_synthetic_weights(TINY, 0), TINY, variant(name), layout)
        )
        for layout in LAYOUTS
    )
    assert inner.keys() == outer.keys()
    for key in inner:
        np.testing.assert_array_equal(inner[key], outer[key], err_msg=key)


def test_formats_store_what_they_say():
    made = {n: prepare_variant(lazy_synthetic_weights(TINY, 0), TINY, variant(n)) for n in FORMATS}
    assert made["int4"].nbytes == made["int4-ui4"].nbytes, "lanes and ui4 hold the same bits"
    assert made["int4-ui4-f16"].nbytes < made["int4-ui4"].nbytes, "half the scale bytes"
    assert made["int4-ui4-qe"].nbytes < made["int4-ui4"].nbytes / 2, "the embedding is most of it"
    assert made["int4-ui4-pc"].quant_error > made["int4-ui4"].quant_error * 0.9
    specs = dict(zip(made["int4-ui4-qe"].names, made["int4-ui4-qe"].arrays, strict=True))
    embed = "model.embed_tokens.weight"
    assert specs[f"{embed}.qweight"] is specs[f"{embed}.qbytes"], "two views of one buffer"
    assert made["int8-u8-pc"].quant_error < made["int4-ui4-pc"].quant_error / 4


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"bits": 3}, "bits=3"),
        ({"bits": 4, "group_size": 12}, "multiple of 8"),
        ({"bits": 4, "storage": "native", "group_size": 3}, "multiple of 2"),
        ({"storage": "packed"}, "storage"),
        ({"bits": 4, "scale_dtype": "bfloat16"}, "scale_dtype"),
        ({"group_size": 64}, "need a quantized variant"),
        ({"quantize_embedding": True}, "need a quantized variant"),
        ({"bits": 8, "dtype": "bfloat16"}, "computes in float32"),
    ],
)
def test_a_bad_variant_says_what_is_wrong(fields: dict, message: str):
    with pytest.raises(ValueError, match=message):
        Variant("bad", **fields)


def test_a_group_that_does_not_divide_the_model_is_refused():
    with pytest.raises(ValueError, match="does not divide"):
        Variant("g48", bits=4, group_size=48).check_model(TINY)
