"""Weights as IREE parameters (`workers.model.parameters`), through real iree-compile and
the real runtime.

1. The rewrite: `@main`'s weights become named parameter globals, its other arguments
   stay, and unsigned weights are held signless (IREE cannot legalize a `ui32` global).
2. One linear compiled both ways computes the same numbers, its weight served from the
   numpy array by `ParameterIndex.add_buffer`.
3. With data tiling and micro-kernels the weight's packing is hoisted into an initializer
   (run once, at load) for a parameter, and stays in the call for an argument (slow).
4. The tiny model swept with `grid.weights=[arguments,parameters]`: the same tokens as its
   reference, the packing at load on the parameter rows only, load and memory columns
   (slow).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from benchmarks.parameters import O3, PACKED, Linear, LoadedLinear, compile_linear
from sweep.store.results import DISPATCH_SCHEMA, DISPATCHES, read_results
from tests.helpers import sweep
from workers.model.parameters import as_parameters


def _exported(*shapes_dtypes: tuple[tuple[int, ...], str]) -> str:
    import jax
    import jax.numpy as jnp

    def fn(w, scale, x):
        return jnp.dot(w.astype(jnp.float32) * scale, x)

    args = [jax.ShapeDtypeStruct(shape, jnp.dtype(dtype)) for shape, dtype in shapes_dtypes]
    return jax.export.export(jax.jit(fn), platforms=["cpu"])(*args).mlir_module()


def test_the_rewrite_turns_the_weights_into_named_parameters() -> None:
    text = _exported(((8, 4), "uint32"), ((8, 1), "float32"), ((4,), "float32"))
    rewritten = as_parameters(text, ["layer.qweight", "layer.scale"])
    globals_ = re.findall(
        r'util\.global private @(\w+) = #flow\.parameter\.named<"model"::"([^"]+)"> : (\S+)',
        rewritten,
    )
    assert [(name, t) for _, name, t in globals_] == [
        ("layer.qweight", "tensor<8x4xi32>"),  # held signless, bitcast back to ui32
        ("layer.scale", "tensor<8x1xf32>"),
    ]
    assert "stablehlo.bitcast_convert" in rewritten
    main = re.search(r"func\.func public @main\(([^)]*)\)", rewritten)
    assert main is not None and main.group(1) == "%arg0: tensor<4xf32>", "only x stays an argument"
    assert "func.func private @forward(" in rewritten and "loc(" not in rewritten


def test_the_rewrite_refuses_what_it_cannot_name() -> None:
    text = _exported(((8, 4), "float32"), ((8, 1), "float32"), ((4,), "float32"))
    with pytest.raises(ValueError, match="distinct"):
        as_parameters(text, ["w", "w"])
    with pytest.raises(ValueError, match="4 weight names for a @main of 3 arguments"):
        as_parameters(text, ["a", "b", "c", "d"])


@pytest.mark.parametrize("element", ["int8", "bf16"])
def test_a_parameter_weight_computes_what_the_argument_does(tmp_path, element: str) -> None:
    outputs = []
    for parameter in (False, True):
        linear = Linear(64, 32, element, parameter)
        compiled = compile_linear(linear, O3, tmp_path)
        w, x = linear.inputs()
        loaded = LoadedLinear(compiled.vmfb or b"", linear, w)
        outputs.append(loaded.call(loaded.inputs(x)))
    expected = w.astype(np.float64) @ x.astype(np.float64)
    np.testing.assert_array_equal(outputs[1], outputs[0])
    np.testing.assert_allclose(outputs[1], expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.slow  # two real compiles with data tiling
@pytest.mark.parametrize("element", ["int8", "bf16"])
def test_data_tiling_packs_a_parameter_once_at_load(tmp_path, element: str) -> None:
    """The proof the `packed_at_load` column rests on: the flow phase's packings of the
    weight sit in an initializer for a parameter, in `@main` for an argument."""
    argument = compile_linear(Linear(1536, 576, element, False), PACKED, tmp_path)
    parameter = compile_linear(Linear(1536, 576, element, True), PACKED, tmp_path)
    assert argument.num_packed_at_load == 0
    assert parameter.num_packed_at_load == 1, "the weight's packing, hoisted"
    # the activation is packed on every call either way; the weight only as an argument
    assert argument.num_packed_per_call == 2 and parameter.num_packed_per_call == 1


@pytest.mark.slow  # a real sweep: export, iree-compile and a Ray actor per variant
def test_a_sweep_holds_its_weights_as_parameters(ray_cluster, tmp_path, shared_cache) -> None:
    outcome, text = sweep(
        tmp_path,
        shared_cache,
        "+grid=smoke",
        "+flags@grid.flag_sets.packed=packed",
        "~grid.flag_sets.O3",
        "~grid.flag_sets.default",
        "grid.weights=[arguments,parameters]",
        "grid.variants=[int8,bf16,int8-w8a8]",
        "grid.layouts=[out_major]",
        "grid.prompt_lengths=[8]",
        "profile=true",
        "bench.profile_calls=2",
    )
    rows = outcome.rows
    assert sorted((r["variant"], r["weights"]) for r in rows) == sorted(
        (v, w) for v in ("int8", "bf16", "int8-w8a8") for w in ("arguments", "parameters")
    )
    assert outcome.exit_code == 0, text
    for r in rows:
        assert r["status"] == "ok", (r["variant"], r["weights"], r["error_message"])
        # W8A8 rounds its activation in the graph, not bit-exactly between XLA and IREE
        matched = len(r["tokens"]) if r["variant"] != "int8-w8a8" else 1
        assert r["num_tokens_matched"] >= matched, (r["variant"], r["weights"])
        assert r["load_s"] > 0 and r["resident_bytes"] >= r["weight_bytes"] > 0
    by = {(r["variant"], r["weights"]): r for r in rows}
    for v in ("int8", "bf16", "int8-w8a8"):  # formats whose contractions data tiling packs
        arg, param = by[v, "arguments"], by[v, "parameters"]
        assert arg["packed_at_load"] == 0 and param["packed_at_load"] > 0, v
        assert param["packed_per_call"] < arg["packed_per_call"], v
    assert "params" in text, "the points are named by how they hold their weights"
    # the profiles (the weights as an .irpa for a parameter point) say the same per call
    dispatches = read_results(tmp_path / "results" / DISPATCHES, schema=DISPATCH_SCHEMA)
    packs: dict[tuple[str, str], float] = {}
    for d in dispatches.to_pylist():
        assert d["graph"] in ("decode", "prefill")
        key = next(k for k, r in by.items() if r["point_key"] == d["point_key"])
        if d["graph"] == "decode" and d["kind"] == "pack":
            packs[key] = packs.get(key, 0.0) + d["calls_per_token"]
    profiled = {(d["point_key"], d["graph"]) for d in dispatches.to_pylist()}
    assert profiled == {(r["point_key"], g) for r in rows for g in ("decode", "prefill")}
    for v in ("int8", "bf16", "int8-w8a8"):
        assert packs.get((v, "parameters"), 0) < packs[v, "arguments"], v


def test_the_grouped_4bit_reproducer_exports_the_formats_linear(tmp_path) -> None:
    """benchmarks/repro/grouped_int4_data_tiling.py's control (N = 2048, below the N at
    which data tiling ran away) compiles with data tiling inside a 1 GB bound; its graph is
    the format's: three parameters and one dot_general batched over the blocks of 32."""
    from benchmarks.repro import grouped_int4_data_tiling as repro

    case = repro.Case("int4-idot-g32-qe", 2048, 1, repro.PACKED)
    finished = repro.compile_case(case, tmp_path, max_memory_gb=1, timeout_s=120)
    assert finished.returncode == 0 and finished.killed_by is None, finished.output[-2000:]
    text = (tmp_path / f"{case.name}.mlir").read_text()
    assert text.count("#flow.parameter.named") == 3 and "tensor<2048x18x32xi4>" in text
    assert "batching_dims = [1] x [1], contracting_dims = [2] x [2]" in text
