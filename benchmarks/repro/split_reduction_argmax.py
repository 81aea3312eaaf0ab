"""An upstream reproducer: split reduction cannot compile a greedy argmax over a vocabulary.

    python -m benchmarks.repro.split_reduction_argmax [--out benchmarks/repro]

writes `split_reduction_argmax.mlir` (JAX's `jnp.argmax` over a `1 x 49152` logits row,
SmolLM2's vocabulary, lowered to StableHLO: a two-operand `stablehlo.reduce` over the
values and an iota), compiles it with the installed iree-compile with and without
`--iree-dispatch-creation-enable-split-reduction` on llvm-cpu and cuda (cross-compiled:
no GPU needed), finds the smallest of a few vocabulary sizes that fails, and writes
`split_reduction_argmax.md` with the exact commands, the errors, and whether the defect
still reproduces. Nothing else is needed.

Why it matters here: every decode graph ends in this argmax (the device returns 4 bytes
a step, not the logits), so the switch breaks every graph of a real vocabulary. The
search space says so as data (`breaks:` under `split_reduction` in
conf/search/flags.yaml), and a study that meets the error proposes the switch no more.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import subprocess
import tempfile
from pathlib import Path

from workers.compile.iree import compiler_version, iree_compile_path

NAME = "split_reduction_argmax"
VOCAB = 49152  # SmolLM2-135M's vocabulary, where the search met the error
FLAG = "--iree-dispatch-creation-enable-split-reduction"
SIGNATURE = "Failed to anaysis the reduction operation"  # IREE's own spelling
TARGETS = {
    "llvm-cpu": ("--iree-hal-target-backends=llvm-cpu", "--iree-llvmcpu-target-cpu=host"),
    "cuda": ("--iree-hal-target-backends=cuda",),  # default target: compiles without a GPU
}
PROBE_VOCABS = (256, 512, 768, 1024, 4096)  # where between the tiny model and a real one


def argmax_stablehlo(vocab: int) -> str:
    """`jnp.argmax` of one float32 logits row, as JAX lowers it (no locations)."""
    import jax
    import jax.numpy as jnp

    def greedy(logits: jax.Array) -> jax.Array:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    spec = jax.ShapeDtypeStruct((1, vocab), jnp.float32)
    return jax.jit(greedy).lower(spec).as_text()


def compile_cmd(mlir: str, target: str, split: bool) -> list[str]:
    extra = [FLAG] if split else []
    out = f"{Path(mlir).stem}-{target}.vmfb"
    return [
        "iree-compile",
        mlir,
        "--iree-input-type=stablehlo",
        *TARGETS[target],
        *extra,
        "-o",
        out,
    ]


def compile_errors(cmd: list[str], cwd: Path) -> list[str] | None:
    """None when it compiles; else the compiler's `error:` lines."""
    done = subprocess.run(
        [iree_compile_path(), *cmd[1:]], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    if done.returncode == 0:
        return None
    errors = [line.strip() for line in done.stderr.splitlines() if "error:" in line]
    return errors or [done.stderr.strip().splitlines()[-1]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    out: Path = parser.parse_args(argv).out
    out.mkdir(parents=True, exist_ok=True)
    mlir = f"{NAME}.mlir"
    (out / mlir).write_text(argmax_stablehlo(VOCAB))
    cases = {
        (target, split): compile_errors(compile_cmd(mlir, target, split), out)
        for target in TARGETS
        for split in (False, True)
    }
    probes = {}
    with tempfile.TemporaryDirectory() as scratch:
        for vocab in PROBE_VOCABS:
            probe = Path(scratch) / f"{NAME}_{vocab}.mlir"
            probe.write_text(argmax_stablehlo(vocab))
            probes[vocab] = compile_errors(compile_cmd(probe.name, "llvm-cpu", True), probe.parent)
    (out / f"{NAME}.md").write_text(report(mlir, (out / mlir).read_text(), cases, probes))
    reproduces = all(
        cases[(t, True)] and any(SIGNATURE in e for e in cases[(t, True)] or []) for t in TARGETS
    )
    print(
        f"wrote {out}/{NAME}.md: split reduction on the argmax "
        + ("still fails" if reproduces else "no longer fails as described")
        + " with "
        + compiler_version()
    )
    return 0


def _outcome(errors: list[str] | None) -> str:
    if errors is None:
        return "compiles"
    return (
        "fails (the same error)" if any(SIGNATURE in e for e in errors) else f"fails: {errors[0]}"
    )


def report(
    mlir: str,
    text: str,
    cases: dict[tuple[str, bool], list[str] | None],
    probes: dict[int, list[str] | None],
) -> str:
    failing = [t for t in TARGETS if any(SIGNATURE in e for e in cases[(t, True)] or [])]
    controls_ok = all(cases[(t, False)] is None for t in TARGETS)
    status = (
        f"**reproduces** on {' and '.join(failing)}" if failing else "does NOT reproduce (fixed?)"
    )
    sections = []
    for (target, split), errors in cases.items():
        cmd = shlex.join(compile_cmd(mlir, target, split))
        verdict = (
            "compiles" if errors is None else "**fails**:\n\n```\n" + "\n".join(errors) + "\n```"
        )
        sections.append(f"```sh\n{cmd}\n```\n\n{verdict}\n")
    rows = "\n".join(f"| {vocab} | {_outcome(errors)} |" for vocab, errors in probes.items())
    return f"""# Split reduction cannot compile a greedy argmax (`{SIGNATURE}`)

Made by `python -m benchmarks.repro.{NAME}` on {datetime.date.today()} with
{compiler_version()}: the defect {status} here
(without the flag: {"every target compiles" if controls_ok else "a target fails too"}).

`jnp.argmax` over one float32 row of {VOCAB} logits (SmolLM2-135M's vocabulary), as
JAX lowers it: a two-operand `stablehlo.reduce` over the values and an iota that keeps
the larger value and, on ties, the smaller index. With
`{FLAG}` iree-compile rejects it: `'linalg.generic' op {SIGNATURE}`
(IREE's spelling), then `failed to tile using scf.forall`. The same module compiles
without the flag.

### `{mlir}`

```mlir
{text.strip()}
```

### Compiles

{chr(10).join(sections)}
### Which vocabulary sizes fail (llvm-cpu, with the flag)

| vocabulary | with `{FLAG}` |
|---|---|
{rows}

Expected: split reduction splits the two-operand (argmax) reduction, or leaves it
unsplit, instead of failing the compile (the smaller sizes above compile with the flag). This
project's search learns the switch as broken for such graphs (conf/search/flags.yaml,
`breaks:`) and proposes it no more.
"""


if __name__ == "__main__":
    raise SystemExit(main())
