"""A GGUF file as stored, tensor by tensor (the `gguf` variant, `Variant.blocks: file`):
every block type it runs against the `gguf` package's own reading of the same bytes,
and files made by llama.cpp's own quantizer (`llama_model_quantize`: Q4_K_M, Q5_K_M,
Q3_K_M, Q2_K), whose mixes of types (Q2_K .. Q6_K, and Q5_0 / Q8_0 where rows are not
multiples of 256) run as the files hold them.

The reference is `gguf.quants.dequantize` of each tensor: the unpacked form, dequantized
on the host, must equal it exactly (every float32 value; a zero's sign aside, which no
arithmetic downstream sees), and the variant's graph (XLA) must compute the fp32 model of
the file's dequantized weights. Slow tier: a sweep with IREE and llama.cpp on the file.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
from pathlib import Path

import gguf
import numpy as np
import pytest

from tests.helpers import host_dequantized, sweep, variant, xla_logits
from tests.helpers.gguf_files import HEADS, KV_HEADS, permute, write_tiny_gguf
from workers.checkpoints.ggml_types import type_layout, unpack, unpackable
from workers.checkpoints.source import check_checkpoint, file_blocks
from workers.formats.packing import dequantize
from workers.formats.variant import Variant
from workers.tasks import ModelSource

T = gguf.GGMLQuantizationType


@pytest.mark.parametrize("kind", unpackable())
def test_each_type_unpacks_to_the_gguf_packages_numbers(kind: str) -> None:
    """Random bytes (every scale, minimum and integer a block can hold): the grouped
    affine form gives `gguf.quants.dequantize`'s float32 values, NaN where it has NaN."""
    block_size, block_bytes = gguf.GGML_QUANT_SIZES[T[kind]]
    rows, k = 5, 512
    raw = np.random.default_rng(0).integers(0, 256, (rows, k // block_size * block_bytes))
    raw = raw.astype(np.uint8)
    with np.errstate(invalid="ignore", over="ignore"):
        expected = gguf.quants.dequantize(raw, T[kind]).reshape(rows, k)
        u = unpack(kind, raw)
        ours = dequantize(u.q, u.scale, u.minimum, u.offset)
    layout = type_layout(kind)
    assert u.scale.shape == (rows, k // layout.group) and u.scale.dtype == np.float32
    assert int(u.q.max()) < 1 << layout.bits, "q fits the type's bits"
    assert np.isfinite(expected).mean() > 0.5, "most random blocks are finite"
    np.testing.assert_array_equal(ours, expected, err_msg=kind)


def _quantized(src: Path, dst: Path, ftype: str) -> Path:
    """llama.cpp's own quantizer, its default mix for `ftype` (Q4_K_M: llama.cpp's)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = gguf.LlamaFileType[f"MOSTLY_{ftype}"].value
    params.allow_requantize = True
    params.nthread = 1
    code = llama_cpp.llama_model_quantize(
        str(src).encode(), str(dst).encode(), ctypes.byref(params)
    )
    assert code == 0, f"llama_model_quantize -> {ftype}: code {code}"
    return dst


# llama.cpp's own mixes on the tests' tiny Llama: 256 wide (rows K-quants take: Q2_K to
# Q6_K), or 64 wide, where every row falls back (Q5_0, Q8_0); untied: an output matrix
FILES = {
    "Q4_K_M": (256, True),
    "Q5_K_M": (256, True),
    "Q3_K_M": (256, True),
    "Q2_K": (256, True),
    "Q4_K_M-untied": (256, False),
    "Q4_K_M-narrow": (64, True),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each of FILES made by llama.cpp's quantizer from an F32 file of the tiny Llama."""
    folder = tmp_path_factory.mktemp("mixes")
    f32 = {shape: folder / f"tiny-{shape[0]}-{shape[1]}-F32.gguf" for shape in set(FILES.values())}
    for (width, tied), path in f32.items():
        write_tiny_gguf(path, tied=tied, types={}, hidden=width, ffn=2 * width)
    out = {}
    for name, shape in FILES.items():
        (folder / name).mkdir()
        ftype = name.split("-")[0]
        out[name] = _quantized(f32[shape], folder / name / f"tiny-{ftype}.gguf", ftype)
    return out


def _gguf_variant(path: Path) -> Variant:
    return variant("gguf").stored_as(file_blocks(path))


def test_the_files_hold_their_mixes(files: dict[str, Path]) -> None:
    types = {name: set(file_blocks(path).values()) for name, path in files.items()}
    assert {"Q4_K", "Q6_K"} <= types["Q4_K_M"], types
    assert {"Q2_K", "Q3_K"} <= types["Q2_K"] and "Q3_K" in types["Q3_K_M"], types
    assert "Q5_K" in types["Q5_K_M"], types
    narrow = types["Q4_K_M-narrow"]
    assert narrow <= {"Q5_0", "Q8_0", "Q5_1", "Q4_0", "Q4_1"} and len(narrow) > 1, narrow
    v = _gguf_variant(files["Q4_K_M"])
    assert v.llamacpp_type == "+".join(sorted(types["Q4_K_M"]))
    assert v.fingerprint != _gguf_variant(files["Q5_K_M"]).fingerprint


@pytest.mark.parametrize("layout", ["out_major", "in_major"])
@pytest.mark.parametrize("name", list(FILES))
def test_every_matrix_as_stored_dequantizes_to_the_files_numbers(
    files: dict[str, Path], name: str, layout: str
) -> None:
    from workers.checkpoints.gguf import _gguf_name

    path = files[name]
    v = _gguf_variant(path)
    vw = ModelSource(name="t", path=str(path)).variant(v, layout)
    assert vw.quant_error == 0.0, "the file's own blocks: nothing requantized"
    file = {t.name: t for t in gguf.GGUFReader(path).tensors}
    kept = 0
    for hf_name, w in host_dequantized(vw).items():
        t = file[_gguf_name(hf_name)]
        expected = gguf.quants.dequantize(t.data, t.tensor_type).reshape(w.shape)
        if hf_name.endswith("q_proj.weight"):  # back to the file's row order
            w = permute(w, HEADS)
        elif hf_name.endswith("k_proj.weight"):
            w = permute(w, KV_HEADS)
        np.testing.assert_array_equal(w, expected, err_msg=f"{hf_name} ({t.tensor_type.name})")
        kept += v.block_of(hf_name) is not None
    untied = not FILES[name][1]
    assert kept == len(v.tensor_blocks) == 15 + untied, "every matrix (embedding, output) as stored"
    assert ("lm_head.weight" in dict(t.split(":") for t in v.tensor_blocks)) == untied


@pytest.mark.parametrize("name", list(FILES))
def test_the_graph_computes_the_files_model(files: dict[str, Path], name: str) -> None:
    """The factored graph on each tensor's own groups gives the logits (and the greedy
    tokens) of the fp32 graph on the file's dequantized weights."""
    path = files[name]
    source = ModelSource(name="t", path=str(path))
    model = check_checkpoint(path)
    tokens = np.random.default_rng(0).integers(0, model.vocab_size, 12, dtype=np.int32)
    stored = xla_logits(model, source.variant(_gguf_variant(path), "out_major"), tokens)
    fp32 = xla_logits(model, source.variant(variant("fp32"), "out_major"), tokens)
    error = float(np.abs(stored - fp32).max())
    assert error < 1e-5 * max(float(np.abs(fp32).max()), 1.0), error
    np.testing.assert_array_equal(stored.argmax(-1), fp32.argmax(-1))


def test_the_variant_needs_its_file() -> None:
    from workers.core.config import preset

    with pytest.raises(ValueError, match="stored_as"):
        variant("gguf").arg_specs(preset("tiny"))


def test_a_type_it_cannot_run_is_exit_2_naming_the_tensors(
    tmp_path: Path, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through `python -m sweep`'s main: exit 2 before any work (here Q8_0 made unknown)."""
    from sweep.__main__ import main
    from workers.checkpoints import ggml_types

    types = {k: v for k, v in ggml_types._TYPES.items() if k != "Q8_0"}
    monkeypatch.setattr(ggml_types, "_TYPES", types)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(
            [
                "+grid=smoke",
                "grid.variants=[gguf]",
                f"model.path={files['Q4_K_M-narrow']}",
                f"results_dir={tmp_path / 'r'}",
            ]
        )
    assert code == 2, err.getvalue()
    assert "token_embd.weight (Q8_0)" in err.getvalue(), err.getvalue()
    assert not (tmp_path / "r").exists()


@pytest.mark.slow  # a real Ray cluster, iree-compile and llama.cpp
def test_a_sweep_on_a_q4_k_m_file_is_ok_beside_llamacpp(
    ray_cluster, tmp_path: Path, shared_cache: Path, files: dict[str, Path]
) -> None:
    q4_k_m = files["Q4_K_M"]
    outcome, printed = sweep(
        tmp_path,
        shared_cache,
        "+grid=smoke",
        "~grid.flag_sets.default",
        "grid.variants=[gguf]",
        "grid.layouts=[out_major]",
        "grid.runtimes=[iree,llamacpp]",
        "grid.prompt_lengths=[8]",
        f"model.path={q4_k_m}",
        "bench.eval_chunks=0",
    )
    assert outcome.exit_code == 0, printed
    by_runtime = {row["runtime"]: row for row in outcome.rows}
    assert set(by_runtime) == {"iree", "llamacpp"}, printed
    for row in outcome.rows:
        assert row["status"] == "ok" and row["variant"] == "gguf", row
    iree = by_runtime["iree"]
    assert iree["tokens"] == iree["reference_tokens"] and iree["quant_error"] == 0.0
    assert by_runtime["llamacpp"]["llamacpp_type"] == _gguf_variant(q4_k_m).llamacpp_type
