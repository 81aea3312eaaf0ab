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
"""

from __future__ import annotations

import re
from collections.abc import Sequence

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


def _wrapper(names: Sequence[str], inputs: list[str], results: list[str], scope: str) -> str:
    weights, dynamic = inputs[: len(names)], inputs[len(names) :]
    held = [_UNSIGNED.sub(r"i\1", t) for t in weights]  # what each global holds
    lines = [
        f'  util.global private @weight{i} = #flow.parameter.named<"{scope}"::"{name}"> : {t}'
        for i, (name, t) in enumerate(zip(names, held, strict=True))
    ]
    params = ", ".join(f"%arg{i}: {t}" for i, t in enumerate(dynamic))
    lines.append(f"  func.func public @main({params}) -> ({', '.join(results)}) {{")
    for i, (t, h) in enumerate(zip(weights, held, strict=True)):
        if t == h:
            lines.append(f"    %w{i} = util.global.load @weight{i} : {t}")
        else:
            lines.append(f"    %h{i} = util.global.load @weight{i} : {h}")
            lines.append(f"    %w{i} = stablehlo.bitcast_convert %h{i} : ({h}) -> {t}")
    operands = [f"%w{i}" for i in range(len(weights))] + [f"%arg{i}" for i in range(len(dynamic))]
    call_type = f"({', '.join(inputs)}) -> ({', '.join(results)})"
    lines.append(
        f"    %r:{len(results)} = func.call {_FORWARD}({', '.join(operands)}) : {call_type}"
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
        for op in module.body.operations:
            if (
                "sym_name" in op.attributes
                and ir.StringAttr(op.attributes["sym_name"]).value == "main"
            ):
                signature = ir.FunctionType(ir.TypeAttr(op.attributes["function_type"]).value)
                text = module.operation.get_asm(enable_debug_info=False)
                return text, [str(t) for t in signature.inputs], [str(t) for t in signature.results]
    raise ValueError("the exported module has no @main")
