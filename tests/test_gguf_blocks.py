"""GGUF blocks as stored (`Variant.blocks`): a GGUF file's own Q4_0 / Q4_1 / Q8_0 linears,
not requantized, against the `gguf` package's own reading of the same file.

The files are written with `gguf.GGUFWriter` and `gguf.quants.quantize`, as llama.cpp's
converter writes them (tests/helpers/gguf_files.py's `write_tiny_gguf`: Q and K rows permuted).
The reference is `gguf.quants.dequantize` of each tensor as the file holds it: the
variant's weights, dequantized on the host, must equal it bit for bit, its scales must
be the file's float16 bits, and its graph (XLA) must compute the file's fp32 model.
Slow tier: a sweep point with the variant gives ok rows, tokens equal to its reference.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import gguf
import numpy as np
import pytest

from tests.helpers import host_dequantized, sweep, variant, xla_logits
from tests.helpers.gguf_files import HEADS, KV_HEADS, MIXED, T, permute, write_tiny_gguf
from workers.checkpoints.source import check_blocks, check_checkpoint
from workers.checkpoints.tensors import CheckpointError
from workers.core.config import is_linear, preset
from workers.formats.variant import Variant
from workers.tasks import ModelSource, weights_key

BLOCK_TYPES = ["Q4_0", "Q4_1", "Q8_0"]
LINEAR_KINDS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def _gguf_variant(kind: str) -> Variant:
    return variant(f"gguf-{kind.lower()}")


def _file_of(tmp_path: Path, kind: str) -> Path:
    """A tiny GGUF whose linears are all `kind`; the embedding Q8_0, as llama.cpp's Q4 files."""
    path = tmp_path / f"tiny-{kind}.gguf"
    write_tiny_gguf(path, types={**dict.fromkeys(LINEAR_KINDS, T[kind]), "token_embd": T.Q8_0})
    return path


def _file_tensors(path: Path) -> dict[str, object]:
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def _gguf_name(hf_name: str) -> str:
    from workers.checkpoints.gguf import _gguf_name

    return _gguf_name(hf_name)


@pytest.mark.parametrize("layout", ["out_major", "in_major"])
@pytest.mark.parametrize("kind", BLOCK_TYPES)
def test_stored_blocks_dequantize_to_the_files_numbers_bit_for_bit(
    tmp_path: Path, kind: str, layout: str
) -> None:
    path = _file_of(tmp_path, kind)
    vw = ModelSource(name="t", path=str(path)).variant(_gguf_variant(kind), layout)
    assert vw.quant_error == 0.0, "the file's own blocks: nothing requantized"
    ours = host_dequantized(vw)
    file = _file_tensors(path)
    for name, w in ours.items():
        t = file[_gguf_name(name)]
        expected = gguf.quants.dequantize(t.data, t.tensor_type).reshape(w.shape)
        if name.endswith("q_proj.weight"):  # back to the file's row order, as llama.cpp permutes
            w = permute(w, HEADS)
        elif name.endswith("k_proj.weight"):
            w = permute(w, KV_HEADS)
        np.testing.assert_array_equal(w, expected, err_msg=f"{name} ({t.tensor_type.name})")
        if is_linear(name):
            assert t.tensor_type.name == kind, name


@pytest.mark.parametrize("kind", BLOCK_TYPES)
def test_the_scales_are_the_files_float16_bits(tmp_path: Path, kind: str) -> None:
    """d (and Q4_1's m) reach the graph as the file's bytes, not recomputed values."""
    path = _file_of(tmp_path, kind)
    vw = ModelSource(name="t", path=str(path)).variant(_gguf_variant(kind), "out_major")
    arrays = dict(zip(vw.names, vw.arrays, strict=True))
    name = "model.layers.1.mlp.down_proj.weight"  # not permuted: rows as the file's
    t = _file_tensors(path)[_gguf_name(name)]
    rows = int(t.shape[1])
    blocks = np.asarray(t.data).reshape(rows, -1, {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}[kind])
    d = np.ascontiguousarray(blocks[..., 0:2]).view("<u2")[..., 0]
    np.testing.assert_array_equal(arrays[f"{name}.scale"].view("<u2"), d)
    if kind == "Q4_1":
        m = np.ascontiguousarray(blocks[..., 2:4]).view("<u2")[..., 0]
        np.testing.assert_array_equal(arrays[f"{name}.minimum"].view("<u2"), m)


@pytest.mark.parametrize(
    ("kind", "layout"),
    [("Q4_0", "out_major"), ("Q4_1", "out_major"), ("Q4_1", "in_major"), ("Q8_0", "out_major")],
)
def test_the_graph_computes_the_files_model(tmp_path: Path, kind: str, layout: str) -> None:
    """The factored graph on the stored blocks (the centre added back to the minimum in
    the graph) gives the logits of the fp32 graph on the file's dequantized weights."""
    path = _file_of(tmp_path, kind)
    source = ModelSource(name="t", path=str(path))
    model = check_checkpoint(path)
    tokens = np.random.default_rng(0).integers(0, model.vocab_size, 12, dtype=np.int32)
    blocks = xla_logits(model, source.variant(_gguf_variant(kind), layout), tokens)
    fp32 = xla_logits(model, source.variant(variant("fp32"), layout), tokens)
    error = float(np.abs(blocks - fp32).max())
    assert error < 1e-5 * max(float(np.abs(fp32).max()), 1.0), error


def test_the_identity_differs_from_the_requantized_format_of_the_same_shape() -> None:
    stored, requantized = variant("gguf-q4_1"), variant("int4-fac-g32")
    tiny = preset("tiny")
    assert stored.arg_specs(tiny, "out_major") == requantized.arg_specs(tiny, "out_major"), (
        "the same graph arguments"
    )
    assert stored.fingerprint != requantized.fingerprint
    assert weights_key("w", stored, "out_major") != weights_key("w", requantized, "out_major")
    assert variant("gguf-q4_0").fingerprint != stored.fingerprint
    linear = "model.layers.0.mlp.up_proj.weight"
    assert (stored.offset_of(linear), stored.centre_of(linear)) == (0, 8)
    assert (requantized.offset_of(linear), requantized.centre_of(linear)) == (8, 8)


def test_a_block_type_fixes_the_format_fields_from_the_gguf_tables() -> None:
    """A blocks variant names its type; bits, group and storage come from gguf's own table,
    and spelling them out (as before) is the same variant, fingerprint included."""
    named = Variant("gguf-q4_1", blocks="Q4_1", dequant="factored")
    spelled = Variant(
        "gguf-q4_1",
        blocks="Q4_1",
        dequant="factored",
        bits=4,
        group_size=32,
        storage="native",
        scale_dtype="float16",
    )
    assert named == spelled and named.fingerprint == spelled.fingerprint
    assert (Variant("q8", blocks="Q8_0").bits, Variant("q8", blocks="Q8_0").group_size) == (8, 32)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"blocks": "Q5_0"}, r"blocks='Q5_0'; allowed: \['Q4_0', 'Q4_1', 'Q8_0', 'file'\]"),
        (
            {"blocks": "Q8_0", "bits": 4, "group_size": 32, "storage": "native"},
            r"blocks=Q8_0 stores .*got \{'bits': 4\}",
        ),
        (
            {
                **{"blocks": "Q4_1", "bits": 4, "group_size": 32, "storage": "native"},
                **{"scale_dtype": "float16", "quantize_embedding": True},
            },
            r"the embedding stays the file's values in float32",
        ),
    ],
)
def test_a_bad_blocks_variant_says_what_is_wrong(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Variant("bad", **fields)


def test_a_file_with_other_block_types_is_refused_naming_the_tensors(tmp_path: Path) -> None:
    path = tmp_path / "mixed.gguf"
    write_tiny_gguf(path, types=MIXED)  # attn_v and ffn_up Q8_0, attn_output F16
    with pytest.raises(CheckpointError, match=r"blk\.0\.attn_v\.weight \(Q8_0\)") as e:
        check_blocks(path, "Q4_1")
    assert "blk.0.attn_output.weight (F16)" in str(e.value) and str(path) in str(e.value)
    with pytest.raises(ValueError, match="is stored as Q4_1, not Q8_0|are not Q8_0"):
        ModelSource(name="t", path=str(path)).variant(variant("gguf-q8_0"))


@pytest.mark.parametrize("source", ["hf", "seeded", "mixed"])
def test_a_blocks_variant_without_its_blocks_is_exit_2(
    tmp_path: Path, tiny_checkpoint: Path, source: str
) -> None:
    """Through `python -m sweep`'s main: exit 2 before any work, naming what is wrong."""
    from sweep.__main__ import main

    path = tmp_path / "mixed.gguf"
    write_tiny_gguf(path, types=MIXED)
    model = {
        "hf": [f"model.path={tiny_checkpoint}"],
        "seeded": [],
        "mixed": [f"model.path={path}"],
    }[source]
    named = {
        "hf": "is not a GGUF file",
        "seeded": "the weights are seeded",
        "mixed": "blk.0.attn_v.weight (Q8_0)",
    }[source]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(
            ["+grid=smoke", "grid.variants=[gguf-q4_1]", *model, f"results_dir={tmp_path / 'r'}"]
        )
    assert code == 2, err.getvalue()
    assert named in err.getvalue() and "blocks=Q4_1" in err.getvalue(), err.getvalue()
    assert not (tmp_path / "r").exists()


def test_a_gguf_files_tokenizer_gives_the_quality_columns(tmp_path: Path) -> None:
    """The quality windows are tokenized with the GGUF file's own tokenizer (no
    tokenizer.json beside it), so a GGUF sweep gets ppl and KLD."""
    from sweep.plan.config import load_config
    from sweep.plan.eval_text import eval_spec

    path = _file_of(tmp_path, "Q4_1")
    cfg, _ = load_config(
        ["+grid=smoke", f"model.path={path}", "bench.eval_ctx=64", "bench.eval_chunks=20"]
    )
    out = io.StringIO()
    spec = eval_spec(cfg, out)
    assert spec is not None and spec.num_eval_tokens >= 512, out.getvalue()
    assert "scored tokens" in out.getvalue()


@pytest.mark.slow  # a real Ray cluster and iree-compile
def test_a_sweep_point_on_stored_blocks_is_ok_and_matches_its_reference(
    ray_cluster, tmp_path: Path, shared_cache: Path
) -> None:
    path = _file_of(tmp_path / "model", "Q4_1")
    outcome, printed = sweep(
        tmp_path,
        shared_cache,
        "+grid=smoke",
        "~grid.flag_sets.default",
        "grid.variants=[gguf-q4_1]",
        "grid.layouts=[out_major]",
        f"model.path={path}",
        "bench.eval_chunks=0",
    )
    assert outcome.exit_code == 0, printed
    assert len(outcome.rows) == 2, "the smoke grid's two prompt lengths"
    for row in outcome.rows:
        assert row["status"] == "ok" and row["variant"] == "gguf-q4_1", row
        assert row["tokens"] == row["reference_tokens"]
        assert row["num_tokens_matched"] == len(row["tokens"]) > 0
        assert row["quant_error"] == 0.0
        assert row["dequant_fused"] is True, "O3 fuses the factored dequant into the matvecs"
