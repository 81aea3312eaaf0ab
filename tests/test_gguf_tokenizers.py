"""A GGUF file's tokenizer against llama.cpp's own (`llama_tokenize` through
llama-cpp-python, the vocabulary loaded alone), on a few texts: byte-level BPE rebuilt
by hand (`smollm`, `default`, `llama-bpe`) or by transformers' GGUF converter (`qwen2`),
and a SentencePiece vocabulary (`tokenizer.ggml.model = llama`), built by transformers'
converter with llama.cpp's space rule. Control tokens in the text are matched whole, as
llama.cpp does with `parse_special`.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from tests.helpers.gguf_files import write_tiny_gguf
from workers.checkpoints.tokenizers import gguf_tokenizer

TEXTS = [
    "the cat sat on the mat",
    " the  cat",
    "  hi",
    "the cat is in the hat\nöé 42!",
    "12345 then 678",
    "<s>the</s> cat",
    "",
]


def _llama_cpp_tokens(path: Path, texts: list[str]) -> list[list[int]]:
    """llama.cpp's tokens of each text (BOS as the file says; special tokens parsed)."""
    import llama_cpp

    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    assert model, f"llama.cpp cannot load {path}"
    try:
        vocab = llama_cpp.llama_model_get_vocab(model)
        out = []
        for text in texts:
            data, buf = text.encode(), (llama_cpp.llama_token * 512)()
            n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, 512, True, True)
            assert n >= 0, text
            out.append(list(buf[:n]))
        return out
    finally:
        llama_cpp.llama_model_free(model)


def _write_sentencepiece(path: Path) -> None:
    """A tiny Llama vocabulary as SentencePiece GGUF files hold it: unknown, BOS and EOS,
    the 256 byte pieces, then pieces whose score falls with their id (merge priority)."""
    pieces = ["▁", "e", "t", "a", "h", "c", "s", "o", "n", "i", "r", "d", "l", "▁t", "he"]
    pieces += ["▁the", "▁c", "at", "▁cat", "▁s", "on", "▁on", "▁a", "in", "▁in", "is", "▁is"]
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *pieces]
    types = [2, 3, 3, *[6] * 256, *[1] * len(pieces)]  # unknown, control, byte, normal
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_a_sentencepiece_vocabulary_tokenizes_as_llama_cpp(tmp_path: Path) -> None:
    path = tmp_path / "spm.gguf"
    _write_sentencepiece(path)
    tok = gguf_tokenizer(path)
    expected = _llama_cpp_tokens(path, TEXTS)
    assert [tok.encode(t).ids for t in TEXTS] == expected
    assert all(ids[0] == 1 for ids in expected), "llama.cpp prepends BOS to SentencePiece"
    assert tok.decode(tok.encode("the cat is in").ids) == "the cat is in"


@pytest.mark.parametrize("pre", ["smollm", "default", "llama-bpe", "qwen2"])
def test_a_byte_level_vocabulary_tokenizes_as_llama_cpp(tmp_path: Path, pre: str) -> None:
    path = tmp_path / f"{pre}.gguf"
    write_tiny_gguf(path, pre=pre)
    texts = [t.replace("<s>", "<|endoftext|>").replace("</s>", "<|endoftext|>") for t in TEXTS]
    assert [gguf_tokenizer(path).encode(t).ids for t in texts] == _llama_cpp_tokens(path, texts)


def test_the_sweep_takes_a_sentencepiece_prompt(tmp_path: Path) -> None:
    from workers.checkpoints.tokenizers import load_tokenizer

    path = tmp_path / "spm.gguf"
    _write_sentencepiece(path)
    assert load_tokenizer(path).encode("the cat").ids == _llama_cpp_tokens(path, ["the cat"])[0]
