"""A checkpoint's tokenizer as a `tokenizers.Tokenizer`: its `tokenizer.json`, or one
rebuilt from a GGUF file's `tokenizer.ggml.*` metadata.

A GGUF vocabulary is rebuilt by hand where this module knows its pre-tokenizer
(byte-level BPE: `_GPT2_PRE`, each checked against llama.cpp's `llama_tokenize`); every
other one, SentencePiece (`tokenizer.ggml.model = llama`) included, by transformers' own
GGUF converter (`convert_gguf_tokenizer`: needs numpy, tokenizers and gguf, not torch),
with llama.cpp's BOS rule. tests/test_gguf_tokenizers.py checks both against llama.cpp.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workers.checkpoints.gguf import _parsed
from workers.checkpoints.source import gguf_file
from workers.checkpoints.tensors import CheckpointError

BUILTIN_TEXT_NAME = "the Python Language Reference (pydoc_data.topics)"


def builtin_text() -> str:
    """A text every host has without a download: the Python Language Reference that every
    CPython ships (`pydoc_data/topics.py`, what `help("if")` prints), its topics joined
    in sorted order. The quality columns score its start (`sweep.plan.eval_text`), a
    smoothed variant calibrates on its end (`workers.model.calibrate`)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics))


def load_tokenizer(path: str | Path) -> Any:
    """The checkpoint's `tokenizer.json` (the `tokenizers` library), or a GGUF file's own."""
    from tokenizers import Tokenizer

    if (gguf := gguf_file(path)) is not None:
        return gguf_tokenizer(gguf)
    file = Path(path) / "tokenizer.json"
    if not file.is_file():
        raise CheckpointError(f"{file}: not found; a text prompt needs the checkpoint's tokenizer")
    return Tokenizer.from_file(str(file))


# Pre-tokenizers of `tokenizer.ggml.pre` this module rebuilds (llama.cpp's names).
_GPT2_PRE = ("default", "gpt2", "smollm", "llama-bpe", "llama3")


# llama.cpp's LLAMA3 pre-tokenizer regex, as in Llama 3's own tokenizer.json.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def gguf_tokenizer(path: str | Path) -> Any:
    """The tokenizer of the file's `tokenizer.ggml.*` metadata, as a `tokenizers.Tokenizer`.

    GPT-2 style byte-level BPE (`tokenizer.ggml.model = gpt2`) with the pre-tokenizers
    named in `_GPT2_PRE`; `smollm` splits digits one by one before the byte-level split,
    as llama.cpp and SmolLM's own tokenizer.json do. Control tokens (`<|im_start|>`, ...)
    are special tokens: matched whole in a prompt, dropped from decoded text.
    """
    path = Path(path)
    fields, _ = _parsed(path)
    kind, pre = fields.get("tokenizer.ggml.model"), fields.get("tokenizer.ggml.pre", "default")
    if kind != "gpt2" or pre not in _GPT2_PRE:
        return _converted_tokenizer(path, kind, pre)
    tokens, merges = fields.get("tokenizer.ggml.tokens"), fields.get("tokenizer.ggml.merges")
    if not tokens or merges is None:
        raise CheckpointError(f"{path}: tokenizer.ggml.tokens or tokenizer.ggml.merges is missing")
    return _bpe_tokenizer(
        tokens, merges, fields.get("tokenizer.ggml.token_type"), pre, _bos(fields, tokens)
    )


# architectures whose SentencePiece vocabulary transformers shapes itself (its own rules)
_LIBRARY_SENTENCEPIECE = ("gemma", "gemma2", "gemma3", "phi3")


def _converted_tokenizer(path: Path, kind: Any, pre: Any) -> Any:
    """transformers' GGUF converter (SentencePiece, and the byte-level pre-tokenizers it
    knows); BOS prepended as llama.cpp does (`add_bos_token`, on by default for a
    SentencePiece vocabulary)."""
    from tokenizers import normalizers
    from tokenizers.processors import TemplateProcessing

    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import (
            GGUF_PRE_TOKENIZER_SPLITS,
            convert_gguf_tokenizer,
            get_gguf_tokenizer,
        )
    except ImportError:
        raise CheckpointError(
            f"{path}: tokenizer.ggml.model={kind!r}, pre={pre!r} needs transformers' GGUF "
            "converter (`transformers.integrations.gguf`, transformers 5: checked with 5.25; not "
            "torch); without it only 'gpt2' with pre-tokenizer "
            f"{list(_GPT2_PRE)} is rebuilt"
        ) from None
    if kind == "gpt2" and pre not in GGUF_PRE_TOKENIZER_SPLITS:  # llama.cpp refuses it too
        known = sorted({*_GPT2_PRE, *GGUF_PRE_TOKENIZER_SPLITS})
        raise CheckpointError(
            f"{path}: tokenizer.ggml.pre={pre!r} is not supported; supported: {known}"
        )
    try:
        architecture, tokenizer_dict, tokenizer_config = get_gguf_tokenizer(str(path))
        tok, _ = convert_gguf_tokenizer(architecture, tokenizer_dict)
    except (ValueError, KeyError) as e:
        raise CheckpointError(
            f"{path}: tokenizer.ggml.model={kind!r}, pre={pre!r}: transformers cannot build it "
            f"({e})"
        ) from None
    if kind == "llama" and architecture not in _LIBRARY_SENTENCEPIECE:
        # llama.cpp's SentencePiece: a space before the text (add_space_prefix, on unless
        # the file says otherwise), then every space as U+2581, and no split into words;
        # transformers' Metaspace differs on text that starts with a space
        prefix = tokenizer_dict.get("add_prefix_space", True)
        tok.normalizer = normalizers.Sequence(
            [normalizers.Prepend("\u2581")] * bool(prefix) + [normalizers.Replace(" ", "\u2581")]
        )
        tok.pre_tokenizer = None
    bos = tokenizer_config.get("bos_token")
    if tokenizer_config.get("add_bos_token") and bos is not None:
        bos_id = tokenizer_dict["tokens"].index(bos)
        tok.post_processor = TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 $B:1", special_tokens=[(bos, bos_id)]
        )
    else:
        tok.post_processor = None
    return tok


def _bos(fields: dict[str, Any], tokens: list[str]) -> tuple[str, int] | None:
    """The BOS token to prepend, if the file asks for one (`tokenizer.ggml.add_bos_token`)."""
    bos_id = fields.get("tokenizer.ggml.bos_token_id")
    if not fields.get("tokenizer.ggml.add_bos_token", False) or bos_id is None:
        return None
    return tokens[int(bos_id)], int(bos_id)


def _bpe_tokenizer(
    tokens: list[str],
    merges: list[str],
    token_types: list[int] | None,
    pre: str,
    bos: tuple[str, int] | None,
) -> Any:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.processors import TemplateProcessing

    vocab = {token: i for i, token in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    llama3 = pre in ("llama-bpe", "llama3")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=llama3))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=not llama3)
    if pre == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    elif llama3:
        split = pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated")
        tok.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    kinds = dict(zip(tokens, token_types or [], strict=False))  # a file may omit the types
    tok.add_special_tokens(
        [AddedToken(t, normalized=False) for t in tokens if kinds.get(t) == _CONTROL]
    )
    tok.add_tokens(
        [AddedToken(t, normalized=False) for t in tokens if kinds.get(t) == _USER_DEFINED]
    )
    if bos is not None:
        tok.post_processor = TemplateProcessing(
            single=f"{bos[0]}:0 $A:0", pair=f"{bos[0]}:0 $A:0 $B:1", special_tokens=[bos]
        )
    return tok


_CONTROL, _USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values (llama.cpp's enum)
