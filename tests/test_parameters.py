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
from workers.model.parameters import as_parameters, one_module


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


def _matmul(n: int, k: int, m: int) -> str:
    """`x [m, k] . W [n, k]^T` in int8, W the first argument, exported."""
    import jax
    import jax.numpy as jnp

    def fn(w, x):
        dims = (((1,), (1,)), ((), ()))
        return jax.lax.dot_general(x, w, dims, preferred_element_type=jnp.int32)

    args = (jax.ShapeDtypeStruct((n, k), jnp.int8), jax.ShapeDtypeStruct((m, k), jnp.int8))
    return jax.export.export(jax.jit(fn), platforms=["cpu"])(*args).mlir_module()


def test_one_module_names_its_entry_points_and_holds_each_weight_once() -> None:
    text = one_module({"decode": _matmul(8, 4, 1), "prefill": _matmul(8, 4, 16)}, ["w"])
    assert text.count("util.global private") == 1, "one global for the weight both read"
    for entry, rows in (("decode", 1), ("prefill", 16)):
        assert f"func.func public @{entry}(%arg0: tensor<{rows}x4xi8>)" in text
        assert f"func.func private @{entry}__main(" in text
    assert "@main(" not in text.replace("__main(", ""), "every graph's @main renamed"
    with pytest.raises(ValueError, match="other weights"):
        one_module({"decode": _matmul(8, 4, 1), "prefill": _matmul(16, 4, 1)}, ["w"])


@pytest.mark.slow  # two compiles with data tiling, and a 16 MB weight packed at load
def test_one_module_packs_a_weight_once_for_all_its_entry_points(tmp_path) -> None:
    """What `ModuleSpec` rests on: a weight that the decode (1 row) and the prefill (64 rows)
    entry points both read is packed into one copy, as much memory as one entry point's;
    the flow phase still counts one packing per entry point (IREE merges them later, where
    their layouts agree)."""
    import iree.runtime as rt

    from sweep.plan.config import load_config
    from workers.compile.iree import compile_stablehlo
    from workers.model.parameters import SCOPE
    from workers.runtimes.iree import as_runtime_bytes, resident_bytes

    n, k = 8192, 2048
    cpu = load_config([])[0].devices["cpu"]
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (n, k), dtype=np.int8)
    grown = {}
    for entries in (("decode",), ("decode", "prefill")):
        rows = {"decode": 1, "prefill": 64}
        text = one_module({e: _matmul(n, k, rows[e]) for e in entries}, ["w"])
        compiled = compile_stablehlo(text, cpu, PACKED, work_dir=tmp_path)
        assert compiled.ok and compiled.vmfb, compiled.error_message
        assert compiled.num_packed_at_load == len(entries) and compiled.num_packed_per_call == 1
        device, instance = rt.get_device("local-task"), rt.VmInstance()
        index = rt.ParameterIndex()
        index.add_buffer("w", as_runtime_bytes(w))
        provider = rt.create_io_parameters_module(instance, index.create_provider(scope=SCOPE))
        module = rt.VmModule.copy_buffer(instance, compiled.vmfb)
        before = resident_bytes()
        context = rt.VmContext(instance, [rt.create_hal_module(instance, device), provider, module])
        grown[entries] = resident_bytes() - before
        for entry in entries:
            x = rng.integers(-127, 128, (rows[entry], k), dtype=np.int8)
            call = rt.FunctionInvoker(context, device, module.lookup_function(entry))
            expected = x.astype(np.int64) @ w.T.astype(np.int64)
            np.testing.assert_array_equal(np.asarray(call(x).to_host()), expected)
    alone, both = grown[("decode",)], grown[("decode", "prefill")]
    assert alone >= 0.9 * w.nbytes, "the packed copy is made at load"
    assert both < alone + 0.5 * w.nbytes, f"two entry points, one packed copy: {both} vs {alone}"


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
        # one module of prefill and decode for parameters, a module per graph for arguments
        assert param["prefill_compile_s"] is None and param["decode_compile_s"] > 0, v
        assert arg["prefill_compile_s"] > 0, v
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
