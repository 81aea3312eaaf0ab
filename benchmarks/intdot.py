"""Integer dot products on one grouped linear: which IREE flags lower them to the CPU's
integer dot instructions, and what they cost against the float formulations.

    python -m benchmarks.intdot [--n 2048 --k 2048 --block 32 --calls 30]

llama.cpp's 4- and 8-bit matvecs quantize the activation to int8 per block of 32 and
multiply integers (i32 accumulation, one scale per block after). Here the same on one
linear W [N, K] (out-major, groups of `block` along K, ui4 storage as the factored
format keeps it, [N, K/B, B]):

    xs[g] = max|x[g, :]| / 127,  xq[g, k] = round(x[g, k] / xs[g])        (int8)
    inner[n, g] = sum_k (q[n, g, k] - 8) xq[g, k]                            (i8 x i8 -> i32)
    y[n] = sum_g s[n, g] xs[g] inner[n, g] + m[n, g] xsum[g]

against the factored float formulation (`workers.formats.factored.factored_linear_jnp`) and the
fp32 matvec. For each formulation and flag set it records the flow dispatch names,
whether the executable's assembly holds an integer dot instruction (AVX-512 VNNI
`vpdpbusd`/`vpdpwssd`, AVX2 `vpmaddubsw`/`vpmaddwd`), the median time of `calls`
calls through `iree.runtime`, and the error against float64. Times on a shared
machine are noisy: compare within one report.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import default_report_path, machine_info, write_json
from workers.compile.iree import iree_compile_path
from workers.formats.factored import factored_linear_jnp
from workers.formats.packing import quantize

FLAG_SETS: dict[str, list[str]] = {
    "default": [],
    "O3": ["--iree-opt-level=O3"],
    "O3+ukernels": ["--iree-opt-level=O3", "--iree-llvmcpu-enable-ukernels=all"],
    "O3+data-tiling": ["--iree-opt-level=O3", "--iree-opt-data-tiling"],
    "O3+data-tiling+ukernels": [
        "--iree-opt-level=O3",
        "--iree-opt-data-tiling",
        "--iree-llvmcpu-enable-ukernels=all",
    ],
}
DOT_INSTRUCTIONS = re.compile(r"\b(vpdpbusds?|vpdpwssds?|vpmaddubsw|vpmaddwd)\b")


def formulations(block: int) -> dict[str, Any]:
    """name -> JAX function of (q [N, K/B, B] ui4, s, m [N, K/B], x [1, K]) -> [1, N]."""
    import jax
    import jax.numpy as jnp

    def fp32(w, s, m, x):  # the baseline: the dequantized weight as fp32 [N, K]
        return jax.lax.dot_general(w, x, (((1,), (1,)), ((), ()))).T

    def factored(q, s, m, x):
        return factored_linear_jnp(x, q, s, m, 8, out_major=True)

    def int8_dot(q, s, m, x):
        t, k = x.shape
        x3 = x.reshape(t, k // block, block)
        xs = jnp.max(jnp.abs(x3), axis=-1) / 127.0  # [T, K/B]
        safe = jnp.where(xs > 0, xs, 1.0)
        xq = jnp.round(x3 / safe[..., None]).astype(jnp.int8)
        qi = (q.astype(jnp.int8) - jnp.int8(8)) if q.dtype != jnp.int8 else q
        inner = jax.lax.dot_general(  # [K/B, N, T] in i32
            qi, xq, (((2,), (2,)), ((1,), (1,))), preferred_element_type=jnp.int32
        )
        inner = inner.transpose(2, 1, 0).astype(jnp.float32)  # [T, N, K/B]
        xsum = x3.sum(-1)
        scaled = s.astype(jnp.float32)[None] * xs[:, None, :]
        return (scaled * inner).sum(-1) + jnp.einsum("ng,tg->tn", m.astype(jnp.float32), xsum)

    return {"fp32": fp32, "factored-f32": factored, "int8-dot": int8_dot}


def compile_one(
    text: str, flags: list[str], tmp: Path, name: str
) -> tuple[bytes, list[str], list[str]]:
    """(vmfb, flow dispatch names, integer dot instructions in the executables' assembly)."""
    base = [
        iree_compile_path(),
        "-",
        "--iree-input-type=stablehlo",
        "--iree-hal-target-backends=llvm-cpu",
        "--iree-llvmcpu-target-cpu=host",
        *flags,
    ]
    flow = subprocess.run(
        [*base, "--compile-to=flow"], input=text.encode(), capture_output=True, check=True
    ).stdout.decode()
    names = re.findall(r"flow\.executable\.export\s+public\s+@(\S+)", flow)
    dump = tmp / name
    vmfb = tmp / f"{name}.vmfb"
    subprocess.run(
        [*base, f"--iree-hal-dump-executable-files-to={dump}", "-o", str(vmfb)],
        input=text.encode(),
        capture_output=True,
        check=True,
    )
    asm = "".join(p.read_text(errors="replace") for p in dump.glob("*.s"))
    return vmfb.read_bytes(), names, sorted(set(DOT_INSTRUCTIONS.findall(asm)))


def time_calls(vmfb: bytes, args: list[np.ndarray], calls: int) -> tuple[float, np.ndarray]:
    import iree.runtime as rt

    config = rt.Config("local-task")
    ctx = rt.SystemContext(config=config)
    module = rt.VmModule.copy_buffer(ctx.instance, vmfb)
    ctx.add_vm_module(module)
    fn = ctx.modules[module.name]["main"]
    device_args = [_upload(rt, config.device, a) for a in args]
    out = np.asarray(fn(*device_args).to_host())
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        fn(*device_args).to_host()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples), out


def _upload(rt: Any, device: Any, array: np.ndarray) -> Any:
    """A device buffer view of `array`; uint4 packed two per byte, low nibble first."""
    if array.dtype.name == "uint4":
        q = array.view(np.uint8).reshape(-1)
        raw, element_type = (q[0::2] | (q[1::2] << 4)).astype(np.uint8), rt.HalElementType.UINT_4
    else:
        raw = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        element_type = {
            "float32": rt.HalElementType.FLOAT_32,
            "float16": rt.HalElementType.FLOAT_16,
        }[array.dtype.name]
    buffer = device.allocator.allocate_buffer_copy(
        memory_type=rt.MemoryType.DEVICE_LOCAL,
        allowed_usage=rt.BufferUsage.DEFAULT,
        device=device,
        buffer=raw,
    )
    return rt.HalBufferView(buffer, list(array.shape), element_type)


def main(argv: list[str] | None = None) -> int:
    import jax
    import jax.numpy as jnp
    import ml_dtypes

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--k", type=int, default=2048)
    p.add_argument("--block", type=int, default=32)
    p.add_argument("--calls", type=int, default=30)
    p.add_argument("--flag-sets", nargs="*", default=list(FLAG_SETS))
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((a.n, a.k)).astype(np.float32)
    q, s, m = quantize(w, 4, a.block, "float16", offset=8)
    x = rng.standard_normal((1, a.k)).astype(np.float32)
    wdq = (q.astype(np.float32) - 8) * np.repeat(s.astype(np.float32), a.block, 1) + np.repeat(
        m.astype(np.float32), a.block, 1
    )
    expected = (x.astype(np.float64) @ wdq.T.astype(np.float64)).astype(np.float32)
    q3 = q.reshape(a.n, a.k // a.block, a.block).view(ml_dtypes.uint4)
    inputs = {
        "fp32": [wdq, s, m, x],
        "factored-f32": [q3, s, m, x],
        "int8-dot": [q3, s, m, x],
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="intdot-") as tmp:
        for form, fn in formulations(a.block).items():
            args = inputs[form]
            structs = [jax.ShapeDtypeStruct(v.shape, jnp.dtype(v.dtype)) for v in args]
            text = jax.jit(fn, keep_unused=True).lower(*structs).as_text()
            for flag_name in a.flag_sets:
                try:
                    vmfb, names, dot = compile_one(
                        text, FLAG_SETS[flag_name], Path(tmp), f"{form}-{flag_name}"
                    )
                    ms, out = time_calls(vmfb, args, a.calls)
                    err = float(np.abs(out - expected).max() / np.abs(expected).max())
                    row = {
                        "formulation": form,
                        "flags": flag_name,
                        "ms": ms,
                        "rel_err": err,
                        "num_dispatches": len(names),
                        "dispatches": names,
                        "int_dot_instructions": dot,
                    }
                except subprocess.CalledProcessError as e:  # a compiler crash is a finding too
                    message = e.stderr.decode()
                    row = {"formulation": form, "flags": flag_name, "error": message[:1500]}
                rows.append(row)
                print({k: v for k, v in row.items() if k != "dispatches"}, flush=True)
    path = a.out or default_report_path("intdot", f"{a.n}x{a.k}-b{a.block}")
    write_json(
        path, {"machine": machine_info(), "args": vars(a) | {"out": str(a.out)}, "rows": rows}
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
