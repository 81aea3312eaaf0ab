"""An upstream reproducer: IREE reads a bare ui4 -> f32 convert feeding a contraction as signed.

    python -m benchmarks.repro.signed_ui4 [--out benchmarks/repro]

writes `signed_ui4.mlir` (the defect), `control_convert.mlir` (the same convert with
no contraction, read right), `workaround_shift.mlir` (the fix this project uses:
`convert - 8` in the graph, the 8s folded into the minimum on the host), the packed
ui4 input `w.bin`, and a README.md with the exact iree-compile and iree-run-module
commands, the expected and the actual outputs, and the IR after `--compile-to=input`
that shows where the unsignedness is lost. Everything runs with the installed
iree-base-compiler / iree-base-runtime on llvm-cpu; nothing else is needed.

Why it matters here: the dequant of a quantized weight is exactly such a convert
(`workers/formats/direct.py` puts the scale first for per-channel weights, and the factored
grouped dequant subtracts the midpoint, both to keep clear of it).
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks._common import iree_tool
from workers.compile.iree import compiler_version, iree_compile_path

ROWS, COLS = 4, 8
# Row 0 holds 0..7 (no high bit), row 1 8..15, row 2 all 15s, row 3 all 8s.
VALUES = np.array([*range(16), *[15] * 8, *[8] * 8], np.uint8).reshape(ROWS, COLS)
X = np.ones(COLS, np.float32)
X_ARG = f"--input={COLS}xf32=" + " ".join(["1"] * COLS)
W_ARG = f"--input={ROWS}x{COLS}xui4=@w.bin"

DOT = (
    "  %y = stablehlo.dot_general %wf, %x, contracting_dims = [1] x [0]"
    f" : (tensor<{ROWS}x{COLS}xf32>, tensor<{COLS}xf32>) -> tensor<{ROWS}xf32>\n"
)
CASES: dict[str, tuple[str, str]] = {
    "signed_ui4": (
        "the defect: ui4 -> f32, then the dot",
        f"func.func @main(%w: tensor<{ROWS}x{COLS}xui4>, %x: tensor<{COLS}xf32>)"
        f" -> tensor<{ROWS}xf32> {{\n"
        f"  %wf = stablehlo.convert %w : (tensor<{ROWS}x{COLS}xui4>)"
        f" -> tensor<{ROWS}x{COLS}xf32>\n" + DOT + f"  return %y : tensor<{ROWS}xf32>\n}}\n",
    ),
    "control_convert": (
        "control: the same convert, returned as it is (no contraction)",
        f"func.func @main(%w: tensor<{ROWS}x{COLS}xui4>) -> tensor<{ROWS}x{COLS}xf32> {{\n"
        f"  %wf = stablehlo.convert %w : (tensor<{ROWS}x{COLS}xui4>)"
        f" -> tensor<{ROWS}x{COLS}xf32>\n"
        f"  return %wf : tensor<{ROWS}x{COLS}xf32>\n}}\n",
    ),
    "workaround_shift": (
        "workaround: (convert - 8) feeds the dot; expected output minus 8 * sum(x) per row",
        f"func.func @main(%w: tensor<{ROWS}x{COLS}xui4>, %x: tensor<{COLS}xf32>)"
        f" -> tensor<{ROWS}xf32> {{\n"
        f"  %c = stablehlo.convert %w : (tensor<{ROWS}x{COLS}xui4>)"
        f" -> tensor<{ROWS}x{COLS}xf32>\n"
        "  %eight = stablehlo.constant dense<8.0> : tensor<f32>\n"
        f"  %e = stablehlo.broadcast_in_dim %eight, dims = [] : (tensor<f32>)"
        f" -> tensor<{ROWS}x{COLS}xf32>\n"
        f"  %wf = stablehlo.subtract %c, %e : tensor<{ROWS}x{COLS}xf32>\n"
        + DOT
        + f"  return %y : tensor<{ROWS}xf32>\n}}\n",
    ),
}
EXPECTED = {
    "signed_ui4": VALUES.astype(np.float32) @ X,
    "control_convert": VALUES.astype(np.float32),
    "workaround_shift": (VALUES.astype(np.float32) - 8.0) @ X,
}
COMPILE_FLAGS = (
    "--iree-input-type=stablehlo",
    "--iree-hal-target-backends=llvm-cpu",
    "--iree-llvmcpu-target-cpu=host",
)


def pack_ui4(values: np.ndarray) -> bytes:
    """Two values per byte, low nibble first: IREE's ui4 layout."""
    flat = values.reshape(-1)
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8).tobytes()


def run(cmd: list[str], cwd: Path) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        sys.exit(f"{shlex.join(cmd)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def case_commands(name: str) -> tuple[list[str], list[str]]:
    compile_cmd = ["iree-compile", f"{name}.mlir", *COMPILE_FLAGS, "-o", f"{name}.vmfb"]
    inputs = [W_ARG] if name == "control_convert" else [W_ARG, X_ARG]
    run_cmd = [
        "iree-run-module",
        f"--module={name}.vmfb",
        "--device=local-task",
        "--function=main",
        *inputs,
    ]
    return compile_cmd, run_cmd


def result_line(stdout: str) -> str:
    lines = [line for line in stdout.splitlines() if "=" in line and "xf32" in line]
    return lines[-1].strip() if lines else stdout.strip()


def expected_line(name: str) -> str:
    values = EXPECTED[name]
    if values.ndim == 1:
        return f"{ROWS}xf32=" + " ".join(f"{v:g}" for v in values)
    rows = "".join("[" + " ".join(f"{v:g}" for v in row) + "]" for row in values)
    return f"{ROWS}x{COLS}xf32={rows}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "w.bin").write_bytes(pack_ui4(VALUES))
    tools = {"iree-compile": iree_compile_path(), "iree-run-module": iree_tool("iree-run-module")}
    sections = []
    verdicts = {}
    for name, (title, mlir) in CASES.items():
        (out / f"{name}.mlir").write_text(mlir)
        compile_cmd, run_cmd = case_commands(name)
        run([tools[compile_cmd[0]], *compile_cmd[1:]], out)
        actual = result_line(run([tools[run_cmd[0]], *run_cmd[1:]], out))
        expected = expected_line(name)
        verdicts[name] = actual == expected
        sections.append(
            f"### `{name}.mlir`: {title}\n\n```mlir\n{mlir}```\n\n```sh\n"
            f"{shlex.join(compile_cmd)}\n{shlex.join(run_cmd)}\n```\n\n"
            f"expected: `{expected}`  \nactual:   `{actual}`  \n"
            f"{'correct' if verdicts[name] else '**wrong**'}\n"
        )
    input_ir = run(
        [tools["iree-compile"], "signed_ui4.mlir", *COMPILE_FLAGS, "--compile-to=input"], out
    )
    matvec = [line.strip() for line in input_ir.splitlines() if "linalg." in line]
    (out / "README.md").write_text(readme(sections, matvec, verdicts))
    print(
        f"wrote {out}/README.md: "
        + ", ".join(f"{k} {'ok' if v else 'WRONG'}" for k, v in verdicts.items())
    )
    return 0


def readme(sections: list[str], matvec: list[str], verdicts: dict[str, bool]) -> str:
    status = "reproduces" if not verdicts["signed_ui4"] else "does NOT reproduce (fixed?)"
    values = "; ".join("row " + str(i) + ": " + " ".join(map(str, r)) for i, r in enumerate(VALUES))
    return f"""# IREE reads a bare `ui4 -> f32` convert that feeds a contraction as signed

Made by `python -m benchmarks.repro.signed_ui4` on {datetime.date.today()} with
{compiler_version()}, llvm-cpu, `--iree-llvmcpu-target-cpu=host`: the defect
**{status}** here.

A StableHLO `convert` from `tensor<4x8xui4>` to `f32` followed by a `dot_general`
gives the product of the *signed* reading of the nibbles: 8..15 become -8..-1. The
same convert returned on its own is read correctly, and so is `convert - 8` feeding
the dot. The weight is `w.bin` (16 bytes, two ui4 per byte, low nibble first),
values {values}; x is eight ones, so each output is its row's sum.

{chr(10).join(sections)}
## Where the unsignedness goes

After `--compile-to=input` the convert is gone: it was folded into the contraction,
whose operand is now the signless `i4` tensor; a named linalg op extends its
operands as *signed* unless told otherwise, so `ui4` 8..15 read as -8..-1:

```mlir
{chr(10).join(matvec)}
```

Expected: the fold keeps the unsigned extension (an explicit `arith.uitofp` producer,
or the op's unsigned cast), or does not fold a convert from an unsigned type.
Workarounds seen to give exact results: signed `i4` storage with the 8s folded into
the minimum, or `convert - 8` before the dot (what this project does).
"""


if __name__ == "__main__":
    raise SystemExit(main())
