"""Weights as IREE parameters: the exported graph rewritten so its weights are globals.

`jax.export` gives `@main(weights..., inputs...)`. IREE deploys models differently:
a weight is an immutable `util.global` backed by a named parameter
(`#flow.parameter.named<"model"::"name">`), supplied when the module loads by a
parameter provider (an `.irpa`, GGUF or safetensors file, or memory:
`iree.runtime.ParameterIndex.add_buffer`). Such a global is a constant at run time, so
`--iree-opt-data-tiling` hoists the packing of each weight into the layout its
micro-kernels read (`flow.tensor.encode`) into an initializer that runs once at load.
An argument is packed again on every call.

The rewrite is textual and small: `@main` becomes the private `@forward`, one global per
weight, and a public `@main(inputs...)` that loads the globals and calls `@forward`
(IREE's input pipeline inlines the call). The StableHLO of `@forward` is untouched, so
the numbers a parameter graph computes are the argument graph's. An unsigned weight
(`ui32`, `ui8`, `ui4`) is held as the signless integer of its width and bitcast back:
IREE's input conversion makes StableHLO's unsigned types signless but leaves a global's
type as it is, which then fails to legalize.

`one_module` joins several exported graphs of the same weights (prefill, decode, score)
into one module whose entry points are named by graph and share one set of globals, as
a deployed model's module does. Data tiling then packs each weight once per layout: IREE
gives the prefill's and the decode's packing of a weight their own global, and merges
them when their layouts agree (on x86 the weight's tile does not depend on the
activation's rows), so a point holds one packed copy where a module per graph holds one
per graph.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

SCOPE = "model"  # the parameter scope, as in `iree-run-module --parameters=model=FILE`
_MAIN = "func.func public @main("
_FORWARD = "@forward"
_UNSIGNED = re.compile(r"(?<=[x<])ui(\d+)\b")  # tensor<4xui32>, tensor<ui8>


def as_parameters(stablehlo: str, names: Sequence[str], scope: str = SCOPE) -> str:
    """`stablehlo` with its first `len(names)` arguments turned into parameters `names`.

    The new `@main` takes the remaining arguments and returns what the old one did.
    """
    stablehlo, inputs, results = _parsed(stablehlo)
    num_weights = len(names)
    if num_weights > len(inputs):
        raise ValueError(f"{num_weights} weight names for a @main of {len(inputs)} arguments")
    if len(set(names)) != num_weights:
        raise ValueError("parameter names must be distinct: each names one weight")
    if stablehlo.count(_MAIN) != 1 or _FORWARD in stablehlo:
        raise ValueError("expected one public @main and no @forward in the exported module")
    body = stablehlo.replace(_MAIN, f"func.func private {_FORWARD}(")
    end = body.rstrip().rfind("}")  # the module's closing brace
    wrapper = _wrapper(names, inputs, results, scope)
    return f"{body[:end]}{wrapper}}}\n"


def one_module(graphs: Mapping[str, str], names: Sequence[str], scope: str = SCOPE) -> str:
    """Exported modules `graphs` (entry point name -> StableHLO) joined into one: each
    graph's first `len(names)` arguments, the same weights in every graph, become the
    parameters `names`, held once; each graph's `@main` becomes the public entry point its
    key names, taking the graph's remaining arguments.

    Every function of a graph is renamed `<entry>__<name>`, so the graphs' helpers
    (JAX names them alike: `@_where`, `@clip`) never collide.
    """
    from jax._src.interpreters import mlir as jax_mlir
    from jax._src.lib.mlir import ir

    if not graphs:
        raise ValueError("one_module needs at least one graph")
    if len(set(names)) != len(names):
        raise ValueError("parameter names must be distinct: each names one weight")
    header, bodies, wrappers, weight_types = "", [], [], None
    with jax_mlir.make_ir_context():
        for entry, stablehlo in graphs.items():
            module = ir.Module.parse(stablehlo)
            if not header:  # the first graph's module attributes (JAX's, IREE reads none)
                attributes = module.operation.get_asm(enable_debug_info=False).split("\n", 1)[0]
                header = re.sub(r"^module @\S+", "module @jit_model", attributes)
            inputs, results = _signature(module)
            if len(names) > len(inputs):
                raise ValueError(
                    f"{len(names)} weight names for a @main of {len(inputs)} arguments"
                )
            if weight_types is None:
                weight_types = inputs[: len(names)]
            elif inputs[: len(names)] != weight_types:
                raise ValueError(f"graph {entry!r} takes other weights than the first graph")
            for op in module.body.operations:
                name = ir.StringAttr(op.attributes["sym_name"]).value
                renamed = f"{entry}__{name}"
                ir.SymbolTable.replace_all_symbol_uses(name, renamed, module.operation)
                ir.SymbolTable.set_symbol_name(op, renamed)
                if name == "main":
                    ir.SymbolTable.set_visibility(op, "private")
            bodies += [op.get_asm(enable_debug_info=False) for op in module.body.operations]
            wrappers.append(_entry(entry, f"@{entry}__main", len(names), inputs, results))
    assert weight_types is not None
    lines = [header, _globals(names, weight_types, scope), *bodies, *wrappers, "}"]
    return "\n".join(lines) + "\n"


def _globals(names: Sequence[str], weights: Sequence[str], scope: str) -> str:
    """One immutable global per weight, backed by the named parameter; unsigned weights
    held signless (`_held`)."""
    return "".join(
        f'  util.global private @weight{i} = #flow.parameter.named<"{scope}"::"{name}"> : '
        f"{_held(t)}\n"
        for i, (name, t) in enumerate(zip(names, weights, strict=True))
    )


def _held(weight_type: str) -> str:
    """What a weight's global holds: the signless integer of an unsigned weight's width."""
    return _UNSIGNED.sub(r"i\1", weight_type)


def _wrapper(names: Sequence[str], inputs: list[str], results: list[str], scope: str) -> str:
    weights = inputs[: len(names)]
    return _globals(names, weights, scope) + _entry("main", _FORWARD, len(names), inputs, results)


def _entry(
    entry: str, forward: str, num_weights: int, inputs: list[str], results: list[str]
) -> str:
    """The public `@entry(dynamic inputs...)`: loads the weight globals and calls `forward`."""
    weights, dynamic = inputs[:num_weights], inputs[num_weights:]
    held = [_held(t) for t in weights]
    params = ", ".join(f"%arg{i}: {t}" for i, t in enumerate(dynamic))
    lines = [f"  func.func public @{entry}({params}) -> ({', '.join(results)}) {{"]
    for i, (t, h) in enumerate(zip(weights, held, strict=True)):
        if t == h:
            lines.append(f"    %w{i} = util.global.load @weight{i} : {t}")
        else:
            lines.append(f"    %h{i} = util.global.load @weight{i} : {h}")
            lines.append(f"    %w{i} = stablehlo.bitcast_convert %h{i} : ({h}) -> {t}")
    operands = [f"%w{i}" for i in range(len(weights))] + [f"%arg{i}" for i in range(len(dynamic))]
    call_type = f"({', '.join(inputs)}) -> ({', '.join(results)})"
    lines.append(
        f"    %r:{len(results)} = func.call {forward}({', '.join(operands)}) : {call_type}"
    )
    returned = ", ".join(f"%r#{i}" for i in range(len(results)))
    lines += [f"    return {returned} : {', '.join(results)}", "  }"]
    return "\n".join(lines) + "\n"


def _parsed(stablehlo: str) -> tuple[str, list[str], list[str]]:
    """The module reprinted without locations (whose aliases trail the module's closing
    brace), and the argument and result types of its `@main` as MLIR type strings."""
    from jax._src.interpreters import mlir as jax_mlir
    from jax._src.lib.mlir import ir

    with jax_mlir.make_ir_context():
        module = ir.Module.parse(stablehlo)
        inputs, results = _signature(module)
        return module.operation.get_asm(enable_debug_info=False), inputs, results


def _signature(module: Any) -> tuple[list[str], list[str]]:
    """The argument and result types of `module`'s `@main`, as MLIR type strings."""
    from jax._src.lib.mlir import ir

    for op in module.body.operations:
        if "sym_name" in op.attributes and ir.StringAttr(op.attributes["sym_name"]).value == "main":
            signature = ir.FunctionType(ir.TypeAttr(op.attributes["function_type"]).value)
            return [str(t) for t in signature.inputs], [str(t) for t in signature.results]
    raise ValueError("the exported module has no @main")
