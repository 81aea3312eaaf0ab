"""One linear, its weight as an argument or as a parameter: what packing it once is worth.

    python -m benchmarks.parameters [--shapes 1536x576 8192x2048 --calls 200]

Data tiling (`--iree-opt-data-tiling`, with `--iree-llvmcpu-enable-ukernels=all`) packs a
matmul's operands into the tiles IREE's micro-kernels read (`mmt4d`). For a weight held
as a parameter (`workers.model.parameters`: an immutable global, supplied at load by
`iree.runtime.ParameterIndex.add_buffer` from the numpy array) the packing is hoisted
into an initializer and runs once, when the module loads; for an argument it runs on
every call. Here one matvec `W [N, K] . x [K]`, as the sweep's out-major graphs compute
it, in three ways per element type:

    argument   O3                          what the sweep measured until now
    argument   O3 + data tiling + ukernels packed on every call
    parameter  O3 + data tiling + ukernels packed once, at load

For each: the median of `calls` calls through `iree.runtime` (inputs uploaded before the
clock starts), the weight's GB/s, the packings the flow phase hoisted into initializers
and left in `@main` (`workers.compile.iree`), the module's load seconds and the
process's growth at load, and the largest error against float64. The speed-up is the
benchmark's figure (`tests/test_parameters.py` asserts the hoisting, not a time).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import default_report_path, machine_info, write_json
from workers.compile.iree import CompileResult, compile_stablehlo
from workers.model.parameters import SCOPE, as_parameters
from workers.runtimes.iree import as_runtime_bytes, device_copy, resident_bytes

O3 = ("--iree-opt-level=O3",)
PACKED = (*O3, "--iree-opt-data-tiling", "--iree-llvmcpu-enable-ukernels=all")
# (weight held as, flags): the three ways each linear is compiled
WAYS: dict[str, tuple[bool, tuple[str, ...]]] = {
    "argument O3": (False, O3),
    "argument packed": (False, PACKED),
    "parameter packed": (True, PACKED),
}
# element type -> (weight and activation dtype, accumulator dtype)
ELEMENT_TYPES: dict[str, tuple[str, str]] = {
    "int8": ("int8", "int32"),
    "bf16": ("bfloat16", "float32"),
    "f32": ("float32", "float32"),
}


@dataclasses.dataclass(frozen=True)
class Linear:
    """One matvec `W [n, k] . x [k]` of `element` type, its weight as an argument or not."""

    n: int
    k: int
    element: str
    parameter: bool

    def stablehlo(self) -> str:
        import jax
        import jax.numpy as jnp

        dtype, acc = ELEMENT_TYPES[self.element]

        def linear(w, x):
            return jnp.dot(w, x, preferred_element_type=jnp.dtype(acc))

        args = (
            jax.ShapeDtypeStruct((self.n, self.k), jnp.dtype(dtype)),
            jax.ShapeDtypeStruct((self.k,), jnp.dtype(dtype)),
        )
        text = jax.export.export(jax.jit(linear), platforms=["cpu"])(*args).mlir_module()
        return as_parameters(text, ["w"]) if self.parameter else text

    def inputs(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(W, x): small integers for int8 (exact in i32), normals otherwise."""
        import ml_dtypes

        rng = np.random.default_rng(seed)
        if self.element == "int8":
            w = rng.integers(-127, 128, (self.n, self.k), dtype=np.int8)
            return w, rng.integers(-127, 128, self.k, dtype=np.int8)
        dtype = ml_dtypes.bfloat16 if self.element == "bf16" else np.float32
        w = rng.standard_normal((self.n, self.k)).astype(dtype)
        return w, rng.standard_normal(self.k).astype(dtype)


class LoadedLinear:
    """A compiled linear on the local-task device, its weight resident: `call(x)`."""

    def __init__(self, vmfb: bytes, linear: Linear, w: np.ndarray) -> None:
        import iree.runtime as rt

        self._rt, self.device = rt, rt.get_device("local-task")
        instance = rt.VmInstance()
        modules = [rt.create_hal_module(instance, self.device)]
        self._w = as_runtime_bytes(w)  # held: the parameter provider wraps this memory, no copy
        if linear.parameter:
            index = rt.ParameterIndex()
            index.add_buffer("w", self._w)
            modules.append(
                rt.create_io_parameters_module(instance, index.create_provider(scope=SCOPE))
            )
        module = rt.VmModule.copy_buffer(instance, vmfb)
        rss, start = resident_bytes(), time.perf_counter()
        context = rt.VmContext(instance, modules=[*modules, module])
        self.load_s, self.load_bytes = time.perf_counter() - start, resident_bytes() - rss
        self._main = rt.FunctionInvoker(context, self.device, module.lookup_function("main"))
        self._weight = [] if linear.parameter else [self._upload(w)]

    def _upload(self, array: np.ndarray) -> Any:
        return device_copy(self._rt, self.device, array)

    def inputs(self, x: np.ndarray) -> list[Any]:
        """The call's arguments, uploaded: the weight (an argument module's) and `x`."""
        return [*self._weight, self._upload(x)]

    def call(self, inputs: list[Any]) -> np.ndarray:
        return np.asarray(self._main(*inputs).to_host(), np.float64)


def compile_linear(linear: Linear, flags: tuple[str, ...], work: Path) -> CompileResult:
    """The linear compiled for the sweep's `cpu` device (conf/device/cpu.yaml: the host CPU)."""
    from sweep.plan.config import load_config

    cpu = load_config([])[0].devices["cpu"]
    result = compile_stablehlo(linear.stablehlo(), cpu, flags, work_dir=work)
    if not result.ok:
        raise RuntimeError(f"{linear} with {flags} failed to compile:\n{result.error_message}")
    return result


def measure(n: int, k: int, element: str, way: str, calls: int, work: Path) -> dict[str, Any]:
    parameter, flags = WAYS[way]
    linear = Linear(n, k, element, parameter)
    compiled = compile_linear(linear, flags, work)
    w, x = linear.inputs()
    loaded = LoadedLinear(compiled.vmfb or b"", linear, w)
    inputs = loaded.inputs(x)
    out = loaded.call(inputs)
    expected = w.astype(np.float64) @ x.astype(np.float64)
    for _ in range(10):  # warm-up: caches, page faults, the thread pool
        loaded.call(inputs)
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        loaded.call(inputs)
        samples.append(time.perf_counter() - start)
    ms = statistics.median(samples) * 1e3
    return {
        "n": n,
        "k": k,
        "element": element,
        "way": way,
        "flags": list(flags),
        "ms": ms,
        "weight_gbps": w.nbytes / (ms / 1e3) / 1e9,
        "packed_at_load": compiled.num_packed_at_load,
        "packed_per_call": compiled.num_packed_per_call,
        "load_s": loaded.load_s,
        "load_mb": loaded.load_bytes / 2**20,
        "weight_mb": w.nbytes / 2**20,
        "max_rel_error": float(np.abs(out - expected).max() / np.abs(expected).max()),
    }


def _shape(text: str) -> tuple[int, int]:
    n, _, k = text.partition("x")
    return int(n), int(k)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="+", type=_shape, default=[(1536, 576), (8192, 2048)])
    p.add_argument(
        "--elements", nargs="+", choices=list(ELEMENT_TYPES), default=list(ELEMENT_TYPES)
    )
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-parameters-") as tmp:
        for (n, k), element in ((s, e) for s in args.shapes for e in args.elements):
            base = None
            for way in WAYS:
                row = measure(n, k, element, way, args.calls, Path(tmp))
                base = base or row["ms"]
                row["speedup_vs_argument_O3"] = base / row["ms"]
                rows.append(row)
                print(
                    f"{n}x{k} {element:5} {way:17} {row['ms']:8.3f} ms "
                    f"{row['weight_gbps']:6.1f} GB/s  x{row['speedup_vs_argument_O3']:4.1f}  "
                    f"packed at load {row['packed_at_load']}, per call {row['packed_per_call']}  "
                    f"load {row['load_s'] * 1e3:6.1f} ms +{row['load_mb']:6.1f} MB  "
                    f"err {row['max_rel_error']:.1e}",
                    flush=True,
                )
    path = args.out or default_report_path("parameters", "one-linear")
    write_json(path, {"machine": machine_info(), "calls": args.calls, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
