"""An upstream reproducer: a grouped 4-bit linear with many output rows under data tiling.

    python -m benchmarks.repro.grouped_int4_data_tiling [--out benchmarks/repro]
        [--max-memory-gb 6] [--timeout-s 600]

On SmolLM2-135M the prefill graph (prompt 512) of `int4-idot-g32-qe` under the `packed`
flag set (O3, `--iree-opt-data-tiling`, micro-kernels) ran iree-compile past 16 GB in
five minutes. One layer does it too, and not with a vocabulary of 64: the trigger is
the output matrix, the tied embedding in 4 bits ([49152, 576]), even at one row. This
reduces it to one linear of that format, exported by the project's own format code
(`workers/formats/integer.py`: the activation quantized to int8 per block of 32, a
`dot_general` batched over the blocks with K = 32, i8 x i8 -> i32, the scales after),
its weight an IREE parameter as the sweep holds it (`workers/model/parameters.py`):
x [rows, 576] -> [rows, N] for several N.

Each case is compiled once, bounded in memory and time (`workers/compile/bounded.py`),
so a runaway compile is killed rather than taking the host down; its peak resident
memory, wall time and outcome go to `grouped_int4_data_tiling.md`, beside one `.mlir`
per case. The controls: fewer output rows, SmolLM2's up_proj at prefill's 512 rows,
no data tiling, and 8-bit (`int8-idot-g32-qe`: the same graph with i8 instead of ui4
storage, which compiles with data tiling).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import shlex
import shutil
import tempfile
from pathlib import Path

import yaml

from benchmarks._common import cpu_model
from workers.compile.bounded import Bound, Finished, run_bounded
from workers.compile.iree import compiler_version, iree_compile_path
from workers.core.config import LlamaConfig
from workers.core.kinds import Layout
from workers.formats.variant import Variant
from workers.model.parameters import as_parameters

CONF = Path(__file__).resolve().parents[2] / "conf"
LINEAR = "model.layers.0.mlp.up_proj.weight"  # [intermediate_size, 576]: N = intermediate_size
# SmolLM2-135M's widths; one layer, a small vocabulary: only LINEAR is exported
SMOLLM2 = LlamaConfig(
    vocab_size=64,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=1,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
)
TARGET = (
    "--iree-input-type=stablehlo",
    "--iree-hal-target-device=local",
    "--iree-hal-local-target-device-backends=llvm-cpu",
    "--iree-llvmcpu-target-cpu=host",
)
O3 = ("--iree-opt-level=O3",)
PACKED = (*O3, "--iree-opt-data-tiling", "--iree-llvmcpu-enable-ukernels=all")  # flags/packed
# one dumped executable compiled alone (its target and encodings are in its source)
EXECUTABLE_FLAGS = ("--compile-mode=hal-executable", "--iree-llvmcpu-enable-ukernels=all")


@dataclasses.dataclass(frozen=True)
class Case:
    variant: str  # a conf/variant/*.yaml
    n: int  # output rows of the weight
    rows: int  # of x
    flags: tuple[str, ...]

    @property
    def tiled(self) -> bool:
        return "--iree-opt-data-tiling" in self.flags

    @property
    def name(self) -> str:
        bits = self.variant.split("-")[0]
        return f"{bits}_g32_n{self.n}_rows{self.rows}_{'packed' if self.tiled else 'O3'}"

    def what(self) -> str:
        tiling = "data tiling + ukernels" if self.tiled else "no data tiling"
        rows = f"{self.rows} row{'s' if self.rows > 1 else ''}"
        return f"{self.variant}, [{self.n}, 576], x {rows}, O3, {tiling}"


N_VOCAB = 49152  # SmolLM2's vocabulary: the tied output matrix
CASES = (
    Case("int4-idot-g32-qe", N_VOCAB, 1, PACKED),  # the defect: the 4-bit output matrix
    Case("int4-idot-g32-qe", 4096, 1, PACKED),  # the smallest N seen to run away
    Case("int4-idot-g32-qe", 2048, 1, PACKED),  # control: compiles
    Case("int4-idot-g32-qe", 1536, 512, PACKED),  # control: up_proj at prefill's rows
    Case("int4-idot-g32-qe", N_VOCAB, 1, O3),  # control: no data tiling
    Case("int8-idot-g32-qe", N_VOCAB, 1, PACKED),  # control: 8-bit storage
)


def load_variant(name: str) -> Variant:
    return Variant(**yaml.safe_load((CONF / "variant" / f"{name}.yaml").read_text()))


def linear_stablehlo(variant: Variant, n: int, rows: int) -> str:
    """One linear of `variant` as the sweep's out_major graphs compute it, x [rows, 576] ->
    [rows, n], its weight tensors IREE parameters."""
    import jax
    import jax.numpy as jnp

    cfg = dataclasses.replace(SMOLLM2, intermediate_size=n)
    # the linear's qweight, scale and minimum (not an embedding's qbytes: the lookup's)
    specs = [
        s
        for s in variant.arg_specs(cfg, Layout.OUT_MAJOR)
        if s.name.startswith(LINEAR) and not s.name.endswith(".qbytes")
    ]
    names = [s.name for s in specs]
    fmt = variant.format_of(LINEAR)

    def linear(*args):
        *weights, x = args
        return fmt.linear(x, dict(zip(names, weights, strict=True)), LINEAR, variant, "out_major")

    shapes = [jax.ShapeDtypeStruct(s.shape, jnp.dtype(s.dtype)) for s in specs]
    x = jax.ShapeDtypeStruct((rows, cfg.hidden_size), jnp.float32)
    text = jax.export.export(jax.jit(linear), platforms=["cpu"])(*shapes, x).mlir_module()
    return as_parameters(text, names)


def compile_case(case: Case, out: Path, max_memory_gb: float, timeout_s: float) -> Finished:
    mlir = out / f"{case.name}.mlir"
    mlir.write_text(linear_stablehlo(load_variant(case.variant), case.n, case.rows))
    cmd = [iree_compile_path(), str(mlir), *TARGET, *case.flags, "-o", "/dev/null"]
    finished = run_bounded(cmd, timeout_s=timeout_s, max_rss_bytes=int(max_memory_gb * 1e9))
    print(f"{case.name}: {outcome(finished, max_memory_gb, timeout_s)}", flush=True)
    return finished


def runaway_executables(
    case: Case, out: Path, max_memory_gb: float, timeout_s: float
) -> list[tuple[str, Finished]]:
    """`case`'s executables (dispatches) compiled one by one (`--compile-mode=hal-executable`,
    each bounded): which one runs away. Those that fail are kept as `out/<case>.<name>.mlir`."""
    with tempfile.TemporaryDirectory(prefix="repro-executables-") as tmp:
        dump = [f"--iree-hal-dump-executable-sources-to={tmp}", "--compile-to=executable-sources"]
        cmd = [iree_compile_path(), str(out / f"{case.name}.mlir"), *TARGET, *case.flags, *dump]
        run_bounded([*cmd, "-o", "/dev/null"], timeout_s=timeout_s)
        found = []
        for source in sorted(Path(tmp).glob("*.mlir")):
            cmd = [iree_compile_path(), str(source), *EXECUTABLE_FLAGS, "-o", "/dev/null"]
            limit = int(max_memory_gb * 1e9)
            finished = run_bounded(cmd, timeout_s=timeout_s, max_rss_bytes=limit)
            name = f"{case.name}.{source.stem.removeprefix('jit_linear_')}"
            print(f"  {name}: {outcome(finished, max_memory_gb, timeout_s)}", flush=True)
            if finished.returncode != 0:
                shutil.copy(source, out / f"{name}.mlir")
            found.append((name, finished))
    return found


def outcome(finished: Finished, max_memory_gb: float, timeout_s: float) -> str:
    peak = f"peak {finished.peak_rss_bytes / 1e9:.2f} GB" if finished.peak_rss_bytes else "peak ?"
    if finished.killed_by == Bound.MEMORY:
        return f"**killed past {max_memory_gb:g} GB** after {finished.wall_s:.0f} s"
    if finished.killed_by == Bound.TIME:
        return f"**killed past {timeout_s:g} s**, {peak}"
    if finished.returncode != 0:
        return f"**compile error** (exit {finished.returncode}) after {finished.wall_s:.0f} s"
    return f"compiled in {finished.wall_s:.1f} s, {peak}"


def error_line(finished: Finished) -> str:
    lines = [line for line in finished.output.splitlines() if "error" in line]
    return lines[0].strip() if lines else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--max-memory-gb", type=float, default=6.0)
    parser.add_argument("--timeout-s", type=float, default=600.0)
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    results = [(c, compile_case(c, out, args.max_memory_gb, args.timeout_s)) for c in CASES]
    smallest = min(
        (c for c, f in results if c.tiled and f.returncode != 0), key=lambda c: c.n, default=None
    )
    executables = (
        runaway_executables(smallest, out, args.max_memory_gb / 2, args.timeout_s / 4)
        if smallest
        else []
    )
    (out / "grouped_int4_data_tiling.md").write_text(readme(results, executables, args))
    print(f"wrote {out}/grouped_int4_data_tiling.md")
    return 0


def readme(
    results: list[tuple[Case, Finished]],
    executables: list[tuple[str, Finished]],
    args: argparse.Namespace,
) -> str:
    defect = results[0][1]
    reproduces = defect.killed_by is not None or defect.returncode != 0
    rows = "\n".join(
        f"| `{case.name}.mlir` | {case.what()} | "
        f"{outcome(f, args.max_memory_gb, args.timeout_s)} | {error_line(f)} |"
        for case, f in results
    )
    bound = (args.max_memory_gb / 2, args.timeout_s / 4)
    dispatches = "\n".join(
        f"| `{name}` | {outcome(f, *bound)} |"
        + (f" kept: `{name}.mlir` |" if f.returncode != 0 else " |")
        for name, f in executables
    )
    one = next((name for name, f in executables if f.returncode != 0), "CASE.EXECUTABLE")
    executable_command = shlex.join(
        ["iree-compile", f"{one}.mlir", *EXECUTABLE_FLAGS, "-o", "/dev/null"]
    )
    command = shlex.join(["iree-compile", "CASE.mlir", *TARGET, *PACKED, "-o", "CASE.vmfb"])
    return f"""# Data tiling runs iree-compile out of memory on a grouped 4-bit linear of many rows

Made by `python -m benchmarks.repro.grouped_int4_data_tiling` on {datetime.date.today()}
with {compiler_version()}, llvm-cpu, `--iree-llvmcpu-target-cpu=host` on
{cpu_model()}: the runaway compile **{"reproduces" if reproduces else "does NOT reproduce"}**
(each compile bounded at {args.max_memory_gb:g} GB of resident memory and
{args.timeout_s:g} s, then killed).

The graph is one linear of `int4-idot-g32-qe` as the project exports it
(`workers/formats/integer.py`), x [rows, 576] float32 -> [rows, N]: the weight ui4
[N, 18, 32] (blocks of 32 along K = 576) with float16 scale and minimum [N, 18], all
three IREE parameters (`util.global` backed by `#flow.parameter.named`,
`workers/model/parameters.py`). The graph quantizes x to int8 per block of 32,
subtracts 8 from the weight in int8, contracts with one `stablehlo.dot_general`
batched over the 18 blocks with K = 32 (i8 x i8 -> i32), then applies the scales. N =
49152 is SmolLM2-135M's tied output matrix, which `-qe` holds in 4 bits; its layers'
widest linear is N = 1536. The 8-bit control is the same graph with int8 storage.

| file | case | outcome | first error line |
| --- | --- | --- | --- |
{rows}

```sh
{command}
```

(The case without data tiling drops the last two flags.) Peak memory is the resident
memory of iree-compile and its children, summed, sampled every 0.25 s
(`workers/compile/bounded.py`); a killed compile's peak is the bound. Wall times depend
on how busy the host was.

## Which dispatch

The smallest case that runs away, its executables dumped
(`--iree-hal-dump-executable-sources-to`) and compiled one at a time, each bounded at
{bound[0]:g} GB and {bound[1]:g} s:

| executable | outcome | |
| --- | --- | --- |
{dispatches}

```sh
{executable_command}
```

A kept executable is the whole reproducer: one `iree_encoding.set_encoding` of the ui4
weight into the layout data tiling chose for the batched matvec (its
`#iree_cpu.cpu_encoding_resolver` tiles are in the source), the packing hoisted into the
initializer that runs at load.

What follows for the sweep: a grouped 4-bit format whose output matrix stays 8-bit
(`int4-idot-g32-q8e`, the layout of llama.cpp's Q4_1 files: the embedding in Q8_0)
compiles with data tiling; `-qe` (the output matrix in 4 bits) does not, and with
`bench.compile_max_memory_gb` its points are compile_error rows rather than a host out
of memory.
"""


if __name__ == "__main__":
    raise SystemExit(main())
