"""GGUF tokens: our fp32 greedy tokens on a real GGUF checkpoint against transformers'.

Why: the tests check the GGUF loader on tiny files they write themselves; this checks
it on a trained model as llama.cpp's converter wrote it (real metadata, a real
vocabulary with its pre-tokenizer, Q4_1 and Q8_0 blocks). Both sides read the same
file with their own code: ours is `workers.checkpoints.gguf` (tokenizer, dequantization, Q/K
un-permute) feeding the project's JAX graphs run through XLA on the CPU (the graphs
every sweep point compiles; the sweep checks its IREE tokens against exactly this
XLA reference); theirs is transformers' `from_pretrained(dir, gguf_file=...)` and
`AutoTokenizer`, fp32, `generate` greedy. The report holds both token lists, both
texts and how many leading tokens agree; the target is all of them.

Usage:
    python benchmarks/gguf_tokens.py                         # SmolLM2-135M Q4_1, 16 tokens
    python benchmarks/gguf_tokens.py --model FILE.gguf --prompt "Once upon a time" --tokens 32
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import default_report_path, machine_info, write_json  # noqa: E402

DEFAULT_MODEL = Path("/work/models/SmolLM2-135M-Instruct.Q4_1.gguf")


def ours(path: Path, prompt: str, num_tokens: int) -> dict[str, Any]:
    """The project's tokenizer, weights and graphs (XLA, CPU), fp32."""
    from sweep.plan.config import load_config
    from workers.checkpoints.tokenizers import load_tokenizer
    from workers.measure.reference import GreedyRun, reference_tokens
    from workers.model.export import prompt_bucket
    from workers.tasks import ModelSource

    start = time.perf_counter()
    tokenizer = load_tokenizer(path)
    ids = tokenizer.encode(prompt).ids
    source = ModelSource("gguf", path=str(path))
    cfg = source.config()
    vw = source.variant(load_config([])[0].variants["fp32"])
    max_seq = prompt_bucket(len(ids) + num_tokens, 1 << 16)
    bucket = prompt_bucket(len(ids), max_seq)
    prompts = np.asarray([ids], np.int32)
    run = GreedyRun(prompts, bucket, max_seq, num_tokens)
    tokens = reference_tokens(cfg, vw, run, weights_id="-")
    return {
        "prompt_ids": ids,
        "tokens": list(tokens),
        "text": tokenizer.decode(list(tokens)),
        "seconds": time.perf_counter() - start,
    }


def theirs(path: Path, prompt: str, num_tokens: int) -> dict[str, Any]:
    """transformers' own GGUF loading and greedy `generate`, fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    ids = tokenizer(prompt).input_ids
    # no end-of-sequence: ours decodes a fixed count, so neither may stop or mask a logit
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=num_tokens, do_sample=False)
    tokens = out[0, len(ids) :].tolist()
    assert len(tokens) == num_tokens, f"generate stopped early: {tokens}"
    return {
        "prompt_ids": ids,
        "tokens": tokens,
        "text": tokenizer.decode(tokens, skip_special_tokens=True),
        "seconds": time.perf_counter() - start,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--prompt", default="The capital of France is")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    a = ours(args.model, args.prompt, args.tokens)
    b = theirs(args.model, args.prompt, args.tokens)
    agree = next(
        (i for i, (x, y) in enumerate(zip(a["tokens"], b["tokens"], strict=True)) if x != y),
        args.tokens,
    )
    report = {
        "model": str(args.model),
        "prompt": args.prompt,
        "num_tokens": args.tokens,
        "same_prompt_ids": a["prompt_ids"] == b["prompt_ids"],
        "num_tokens_agree": agree,
        "ours": a,
        "transformers": b,
        "machine": machine_info(),
    }
    out = args.out or default_report_path("gguf_tokens", args.model.stem)
    write_json(out, report)
    print(f"prompt {args.prompt!r}: ids equal {report['same_prompt_ids']} ({a['prompt_ids']})")
    print(f"ours:         {a['tokens']}  {a['text']!r}  ({a['seconds']:.0f} s)")
    print(f"transformers: {b['tokens']}  {b['text']!r}  ({b['seconds']:.0f} s)")
    print(f"{agree} of {args.tokens} greedy tokens agree; wrote {out}")
    return 0 if agree == args.tokens and report["same_prompt_ids"] else 1


if __name__ == "__main__":
    sys.exit(main())
