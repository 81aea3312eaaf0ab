"""`dequant_fused` from dispatch names (workers/compile/dispatches.py): fast, names in, verdict out.

The names are IREE 3.13's own, from `--compile-to=flow` of the tiny model's decode
graph (llvm-cpu): which of them mark a dequant that kept its own dispatch is what
the row's `dequant_fused` column says. That real compiles give these names is
tests/test_factored_compile.py (slow).
"""

from __future__ import annotations

import pytest

from tests.helpers import variant
from workers.compile.dispatches import dequant_fused, parse_name
from workers.core.config import preset

TINY = preset("tiny")
COMMON = (
    "elementwise_16_f32",
    "elementwise_8_i32xf32xf32",  # positions and rope: integers, but no weight
    "elementwise_broadcast_64_i32xf32",
    "reduction_512_f32xf32xi32",  # the argmax
    "softmax_2x2x1x64xf32_generic",
    "slow_memcpy",
)


def test_a_name_splits_into_kind_shape_and_types() -> None:
    assert parse_name("main_dispatch_3_elementwise_262144x64_i4xf32") == (
        "elementwise",
        (262144, 64),
        ("i4", "f32"),
    )
    assert parse_name("decode_dispatch_12_matvec_like_8192x32x64_f32") == (
        "matvec_like",
        (8192, 32, 64),
        ("f32",),
    )
    assert parse_name("slow_memcpy") == ("slow_memcpy", (), ())


@pytest.mark.parametrize(
    ("name", "layout", "names", "fused"),
    [
        # factored, out_major, O3: the i4 widening inside the matvecs
        ("int4-fac-g32", "out_major", ("matvec_like_128x2x32_f32", "reduction_2x32_f32"), True),
        # factored, in_major, default flags: a separate i4 -> f32 dispatch per linear
        (
            "int4-fac-g32",
            "in_major",
            ("elementwise_2048_i4xf32", "batch_matmul_2x1x32x32_f32"),
            False,
        ),
        # factored, batch 2: the dequant is an elementwise transpose of its own
        (
            "int4-fac-g32",
            "out_major",
            ("elementwise_transpose_128x64_i4xf32", "matmul_2x128x2_f32xf16xf32"),
            False,
        ),
        # grouped ui4 as today: a dequant dispatch before each matvec
        (
            "int4-ui4",
            "out_major",
            ("elementwise_128x64_i4xf32xf32xf32", "matvec_like_128x64_f32"),
            False,
        ),
        ("int4-ui4-pc", "out_major", ("matvec_like_128x64_f32",), True),
        (
            "int8-fac-g64",
            "out_major",
            ("matvec_like_64x2x64_f32", "matvec_like_64x2_f32xf16xf32"),
            True,
        ),
        # uint32 lanes: the shift-and-mask unpack is an elementwise dispatch of lanes
        (
            "int4",
            "out_major",
            ("elementwise_broadcast_128x8x8_i32xi32xf32xf32xf32", "matvec_128x64_f32"),
            False,
        ),
        # the quantized embedding's row gather reads bytes: not a linear's dequant
        ("int4-ui4-qe", "out_major", ("elementwise_64_i8xi32xf32", "matvec_like_512x64_f32"), True),
    ],
)
def test_a_dequant_dispatch_of_its_own_is_not_fused(
    name: str, layout: str, names: tuple[str, ...], fused: bool
) -> None:
    assert dequant_fused((*COMMON, *names), variant(name), TINY, layout) is fused


def test_unquantized_or_unknown_is_null() -> None:
    assert dequant_fused(COMMON, variant("fp32"), TINY, "out_major") is None
    assert dequant_fused(None, variant("int4-fac-g64"), TINY, "out_major") is None


def test_the_compile_step_reads_the_names_from_its_flow_dump(tmp_path) -> None:
    from workers.compile.iree import _dispatch_names

    phases = tmp_path / "k.phases"
    phases.mkdir()
    (phases / "module.1.input.mlir").write_text("flow.executable.export public @not_this")
    (phases / "module.4.flow.mlir").write_text(
        "  flow.executable private @main_dispatch_0 {\n"
        "    flow.executable.export public @main_dispatch_0_matvec_like_8x2x4_f32 workgroups()\n"
        "  flow.executable private @main_dispatch_1 {\n"
        "    flow.executable.export public @main_dispatch_1_elementwise_64_i4xf32 workgroups()\n"
    )
    assert _dispatch_names(phases) == (
        "main_dispatch_0_matvec_like_8x2x4_f32",
        "main_dispatch_1_elementwise_64_i4xf32",
    )
    assert _dispatch_names(tmp_path / "missing") is None
