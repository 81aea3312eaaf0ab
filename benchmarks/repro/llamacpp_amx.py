"""Which llama.cpp tensor types crash with its extra buffer types on, and in which shape.

Upstream question: llama-cpp-python 0.3.36's llama.cpp segfaults in
`ggml_backend_amx_mul_mat` (`ggml::cpu::amx::tensor_traits::compute_forward`) on a
Sapphire Rapids class Xeon (AMX) for Q4_1 and Q8_0 models, with `use_extra_bufts` on
(its default); with it off the same files decode correctly. This script enumerates the
types (Q4_0, Q4_1, Q8_0 and the K-quant mixes Q4_K_M, Q5_K_M, Q6_K, beside F32) times
two shapes (one decode step after an 8-token prompt, and a 512-token prefill) with the
extra buffer types on and off, each case in its own child process
(`workers.runtimes.llamacpp_process`), so a crash costs that case only and is reported by the
signal and the native function it died in.

The model is the `mid` preset's seeded weights (hidden 1024, intermediate 4096: rows a
multiple of 256, as the K-quants need), written as F32 GGUF and quantized by llama.cpp's
own quantizer. Prints the CPU (lscpu's model name, whether it has AMX), the
llama-cpp-python version and a table; writes JSON.

Usage:
    python benchmarks/repro/llamacpp_amx.py [--types Q4_1 Q8_0 ...] [--work DIR] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from workers.core.devices import cpu_has_amx  # noqa: E402
from workers.runtimes.llamacpp import bindings  # noqa: E402
from workers.runtimes.llamacpp_process import LlamaCppProcess, NativeCrash  # noqa: E402
from workers.runtimes.session import prompt_ids  # noqa: E402
from workers.tasks import DecodeSteps, LlamaCppSettings  # noqa: E402

TYPES = ("F32", "Q4_0", "Q4_1", "Q8_0", "Q4_K_M", "Q5_K_M", "Q6_K")
SHAPES = ("decode", "prefill512")


def cpu_name() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def one_case(path: Path, kind: str, shape: str, extra_bufts: str, vocab: int) -> str:
    """'ok' or the crash's one-line description, from a fresh child."""
    proc = LlamaCppProcess()
    settings = LlamaCppSettings(extra_bufts=extra_bufts)
    try:
        proc.call("load", f"{kind}-{extra_bufts}", path, settings)
        steps = DecodeSteps(warmup_steps=1, decode_steps=4)
        prompt = prompt_ids(vocab, 8)
        proc.call("decode", 600, prompt, 8, steps)  # makes the context; a decode step
        if shape == "prefill512":
            proc.call("logits", prompt_ids(vocab, 512), slice(511, None))
        return "ok"
    except NativeCrash as crash:
        return str(crash)
    finally:
        proc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--types", nargs="+", default=list(TYPES), choices=TYPES)
    parser.add_argument("--work", type=Path, default=None, help="where the GGUF files go")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs/benchmarks/llamacpp_amx.json")
    args = parser.parse_args()

    from workers.core.config import preset
    from workers.tasks import ModelSource

    work = args.work or Path(tempfile.mkdtemp(prefix="llamacpp-amx-"))
    source = ModelSource(name="mid", preset="mid")
    vocab = preset("mid").vocab_size
    f32 = work / "mid-F32.gguf"
    if not f32.exists():
        from workers.checkpoints.gguf import write_gguf

        work.mkdir(parents=True, exist_ok=True)
        write_gguf(f32, source.config(), source.tensors())
    machine = {
        "cpu": cpu_name(),
        "amx": cpu_has_amx(),
        "llama_cpp_python": bindings().__version__,
    }
    print(f"CPU: {machine['cpu']} (AMX: {machine['amx']}); "
          f"llama-cpp-python {machine['llama_cpp_python']}", flush=True)  # fmt: skip
    cases = []
    for kind in args.types:
        path = f32 if kind == "F32" else work / f"mid-{kind}.gguf"
        if not path.exists():
            LlamaCppProcess().call("quantize", f32, path, kind)
        for shape in SHAPES:
            for extra in ("on", "off"):
                result = one_case(path, kind, shape, extra, vocab)
                cases.append({"type": kind, "shape": shape, "extra_bufts": extra, "result": result})
                print(f"{kind:7} {shape:10} extra_bufts={extra:3} {result}", flush=True)
    print("\n| type | shape | extra bufts on | extra bufts off |\n|---|---|---|---|")
    for kind in args.types:
        for shape in SHAPES:
            on, off = (
                next(c["result"] for c in cases if (c["type"], c["shape"], c["extra_bufts"])
                     == (kind, shape, e))
                for e in ("on", "off")
            )  # fmt: skip
            print(f"| {kind} | {shape} | {on} | {off} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "cases": cases}, indent=1))
    print(f"\nreport: {args.out}")


if __name__ == "__main__":
    main()
