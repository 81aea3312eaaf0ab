"""Our fp32 perplexity against transformers' on the same tokens (issue 25's 2% check).

    python -m benchmarks.perplexity --results outputs/results model.path=DIR [overrides...]

The sweep's `ppl` of a checkpoint's fp32 row comes from fp32's own compiled score
graph (`workers.measure.perplexity`). This script rebuilds the same text windows from the same
config (`sweep.plan.eval_text`), runs them through transformers' model of the checkpoint,
scores them as llama.cpp does (the second half of each window), and prints both with
their relative difference; the sweep's number is the newest ok fp32 row under
`--results` (run the sweep first; one model per results dir). The issue asks for 2%
at most; an exact implementation gives about 1e-6.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
from pathlib import Path

import numpy as np


def transformers_ppl(path: str | Path, windows: np.ndarray) -> float:
    """llama.cpp's perplexity of the windows (the second half of each scored), by transformers."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ctx, first = windows.shape[1], windows.shape[1] // 2
    nll: list[float] = []
    with torch.no_grad():
        for window in windows:
            logits = model(torch.tensor(window[None], dtype=torch.long)).logits[0].double()
            logp = torch.log_softmax(logits[first : ctx - 1], dim=-1)
            targets = torch.tensor(window[first + 1 :], dtype=torch.long)
            nll += (-logp[torch.arange(len(targets)), targets]).tolist()
    return math.exp(float(np.mean(nll)))


def sweep_ppl(results: str, num_eval_tokens: int) -> float | None:
    """The newest ok fp32 row's ppl over as many scored tokens (keep one model per
    results dir: rows do not name the checkpoint's content yet)."""
    from sweep.store.results import read_results

    rows = [
        r
        for r in read_results(results).to_pylist()
        if r["status"] == "ok"
        and r["variant"] == "fp32"
        and r.get("num_eval_tokens") == num_eval_tokens
    ]
    rows.sort(key=lambda r: r["created_at"])
    return rows[-1]["ppl"] if rows else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perplexity")
    parser.add_argument("--results", default="outputs/results")
    parser.add_argument("overrides", nargs="*", help="the sweep's overrides (model.path=...)")
    args = parser.parse_args(argv)
    from sweep.plan.config import load_config
    from sweep.plan.eval_text import eval_spec

    cfg, _ = load_config(args.overrides)
    spec = eval_spec(cfg, io.StringIO())
    if spec is None or cfg.model.path is None:
        print("error: needs model.path=DIR of a checkpoint with a tokenizer.json", file=sys.stderr)
        return 2
    theirs = transformers_ppl(cfg.model.path, spec.windows())
    ours = sweep_ppl(args.results, spec.num_eval_tokens)
    print(f"windows: {spec.num_chunks} x {spec.ctx}, {spec.num_eval_tokens} scored tokens")
    print(f"transformers ppl: {theirs:.6f}")
    if ours is None:
        print(f"no ok fp32 row with ppl under {args.results}: run the sweep first")
        return 1
    print(f"sweep fp32 ppl:   {ours:.6f}  (relative difference {abs(ours / theirs - 1):.2e})")
    return 0 if abs(ours / theirs - 1) <= 0.02 else 1


if __name__ == "__main__":
    sys.exit(main())
