"""The model end to end against transformers: checkpoint -> JAX graphs -> IREE CPU tokens.

The reference is a tiny random `LlamaForCausalLM` saved with `save_pretrained` and read
back by our torch-free loader. Its parameters are re-initialized at unit gain
(std 1/sqrt(fan_in), norms 1 + 0.1 * noise): with transformers' std 0.02 a random
model repeats one token, and 16 equal tokens would agree by accident; the per-layer
linears get twice that gain, since with a tied embedding at unit gain the residual
stream is still mostly the current token's embedding and greedy decode repeats it.
Shapes and hyper-parameters are chosen so that a config field read wrongly changes
the numbers: head_dim 32 with hidden 64 and 4 heads (not hidden / heads), a large
rms_norm_eps, a non-default rope_theta, and llama3 RoPE scaling with
original_max_position_embeddings 16, so it rescales the frequencies a short prompt
uses. `test_config_fields_are_not_vacuous` checks that each would be caught.

Compiles go through one module-wide cache, so a graph shared by several tests (the
fp32 graph of a checkpoint and of its host-dequantized int4 copy) compiles once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import workers.measure.reference
from tests.helpers import device, hf_greedy, host_dequantized, load_checkpoint, variant, xla_logits
from workers.checkpoints.safetensors import INDEX_FILE, SINGLE_FILE
from workers.compile.iree import CompileResult, compile_stablehlo
from workers.core.config import LlamaConfig, rope_inv_freq
from workers.formats.weights import VariantWeights, prepare_variant
from workers.measure.reference import GreedyRun, num_matching, reference_tokens
from workers.model.export import GraphSpec, export_graph, prompt_bucket
from workers.runtimes.iree import IreeRunner
from workers.runtimes.session import greedy_decode, prompt_ids
from workers.tasks import DecodeSteps

pytestmark = pytest.mark.slow  # iree-compile and transformers

MAX_SEQ = 32  # cache capacity: the 11-token prompt plus 16 generated tokens fit
PROMPT_LENGTH = 11  # not a power of two, so prefill pads the prompt to its bucket
NUM_TOKENS = 16  # the first from prefill, then 15 decode steps
MIN_DISTINCT_TOKENS = 4  # fewer and a token comparison says little
ATOL = RTOL = 1e-4  # fp32 logits, ours (XLA) against transformers (torch)
LAYER_GAIN = 2.0  # std of the per-layer linears is LAYER_GAIN / sqrt(fan_in)

VOCAB, HIDDEN, HEADS, HEAD_DIM = 256, 64, 4, 32
RMS_NORM_EPS = 1e-2  # mean square of an embedding row is ~1/64: eps=1e-2 moves the output
ROPE_THETA = 20000.0  # neither transformers' default (10000) nor Llama 3's (500000)
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,  # wavelengths above 16 positions get scaled
}


@dataclasses.dataclass(frozen=True)
class CheckpointCase:
    tied: bool
    rope_scaling: dict | None
    max_shard_size: str | None = None  # set: save as several shards plus an index
    seed: int = 0


CASES: dict[str, CheckpointCase] = {
    "tied": CheckpointCase(tied=True, rope_scaling=None, seed=1),
    "untied": CheckpointCase(tied=False, rope_scaling=None, seed=2),
    "tied-llama3": CheckpointCase(tied=True, rope_scaling=LLAMA3_ROPE, seed=3),
    "untied-llama3-sharded": CheckpointCase(
        tied=False, rope_scaling=LLAMA3_ROPE, max_shard_size="40KB", seed=4
    ),
}
QUANT_CASE = "tied-llama3"  # the case the variant tests quantize


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A saved checkpoint, what our loader reads from it, and what transformers computes."""

    name: str
    directory: Path
    cfg: LlamaConfig
    weights: dict[str, np.ndarray]
    hf_logits: np.ndarray  # [PROMPT_LENGTH, vocab] for the prompt
    hf_tokens: tuple[int, ...]  # NUM_TOKENS greedy tokens from `generate`
    hf_inv_freq: np.ndarray  # the RoPE frequencies transformers uses


def _save_hf_llama(directory: Path, case: CheckpointCase) -> None:
    torch.manual_seed(case.seed)
    hf_cfg = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        num_key_value_heads=2,
        head_dim=HEAD_DIM,
        rms_norm_eps=RMS_NORM_EPS,
        rope_theta=ROPE_THETA,
        rope_scaling=case.rope_scaling,
        tie_word_embeddings=case.tied,
        max_position_embeddings=256,
        # No special tokens: nothing in generate may stop early or mask a logit.
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    model = transformers.LlamaForCausalLM(hf_cfg)
    with torch.no_grad():
        for name, param in model.named_parameters():  # a tied embedding is listed once
            if param.ndim == 1:  # RMSNorm weights
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            else:  # [out, in] linears, the [vocab, hidden] embedding and lm_head
                gain = LAYER_GAIN if ".layers." in name else 1.0
                param.normal_(0.0, gain / math.sqrt(param.shape[1]))
    save_kwargs = {"max_shard_size": case.max_shard_size} if case.max_shard_size else {}
    model.save_pretrained(directory, safe_serialization=True, **save_kwargs)


HfReference = tuple[np.ndarray, tuple[int, ...], np.ndarray]  # logits, tokens, inv_freq


def _hf_reference(directory: Path, prompt: np.ndarray) -> HfReference:
    """Logits, greedy tokens and RoPE frequencies from the checkpoint as transformers reads it."""
    model = transformers.LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    input_ids = torch.from_numpy(prompt.astype(np.int64))[None]
    with torch.no_grad():
        logits = model(input_ids).logits[0].numpy()
    tokens = tuple(hf_greedy(model, prompt, NUM_TOKENS))
    assert len(tokens) == NUM_TOKENS, f"generate stopped early: {tokens}"
    return logits, tokens, model.model.rotary_emb.inv_freq.numpy().copy()


@pytest.fixture(scope="module")
def prompt() -> np.ndarray:
    return prompt_ids(VOCAB, PROMPT_LENGTH)


@pytest.fixture(scope="module")
def checkpoints(
    tmp_path_factory: pytest.TempPathFactory, prompt: np.ndarray
) -> dict[str, Checkpoint]:
    out = {}
    for name, case in CASES.items():
        directory = tmp_path_factory.mktemp(name)
        _save_hf_llama(directory, case)
        cfg, weights = load_checkpoint(directory)
        logits, tokens, inv_freq = _hf_reference(directory, prompt)
        out[name] = Checkpoint(name, directory, cfg, weights, logits, tokens, inv_freq)
    return out


class IreeCpu:
    """Compiles graphs for the CPU (memoized, plus the on-disk cache) and runs greedy decode."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        self.device = device("cpu")
        self.runner = IreeRunner(self.device.driver)
        self._compiled: dict[GraphSpec, CompileResult] = {}

    def compile(self, spec: GraphSpec) -> CompileResult:
        """One graph, exported and compiled once per test module.

        (iree-compile already uses both cores: compiling two graphs at once saves nothing.)
        """
        if spec not in self._compiled:
            graph = export_graph(spec)
            result = compile_stablehlo(graph.stablehlo, self.device, cache_dir=self.cache_dir)
            assert result.ok, f"{spec.label}: {result.error_message}"
            self._compiled[spec] = result
        return self._compiled[spec]

    def graphs(
        self, cfg: LlamaConfig, name: str, bucket: int, layout: str = "in_major"
    ) -> tuple[bytes, bytes]:
        """(prefill vmfb for `bucket`, decode vmfb) of variant `name`."""
        prefill = self.compile(GraphSpec(cfg, variant(name), MAX_SEQ, "prefill", bucket, layout))
        decode = self.compile(GraphSpec(cfg, variant(name), MAX_SEQ, "decode", 0, layout))
        return prefill.vmfb, decode.vmfb

    def greedy(
        self,
        cfg: LlamaConfig,
        vw: VariantWeights,
        prompt: np.ndarray,
        weights_key: str,
    ) -> tuple[int, ...]:
        """NUM_TOKENS greedy tokens; `weights_key` names the weights for residency."""
        bucket = prompt_bucket(len(prompt), MAX_SEQ)
        prefill, decode = self.graphs(cfg, vw.variant.name, bucket, vw.layout)
        self.runner.ensure_weights(weights_key, lambda: vw)
        steps = DecodeSteps(warmup_steps=0, decode_steps=NUM_TOKENS - 1)
        result = greedy_decode(self.runner.session(prefill, decode), prompt, bucket, steps)
        assert len(result.tokens) == NUM_TOKENS
        return result.tokens


@pytest.fixture(scope="module")
def iree_cpu(tmp_path_factory: pytest.TempPathFactory) -> IreeCpu:
    return IreeCpu(tmp_path_factory.mktemp("compile_cache"))


def _fp32(ckpt: Checkpoint, layout: str = "in_major") -> VariantWeights:
    return prepare_variant(ckpt.weights, ckpt.cfg, variant("fp32"), layout)


# --- 1. prefill logits against transformers ---------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_prefill_logits_match_transformers(
    checkpoints: dict[str, Checkpoint], prompt: np.ndarray, case: str
) -> None:
    ckpt = checkpoints[case]
    cfg = ckpt.cfg
    assert cfg.head_dim == HEAD_DIM != HIDDEN // HEADS
    assert (cfg.rms_norm_eps, cfg.rope_theta) == (RMS_NORM_EPS, ROPE_THETA)
    assert cfg.tie_word_embeddings == CASES[case].tied
    assert ("lm_head.weight" in ckpt.weights) == (not cfg.tie_word_embeddings)
    if CASES[case].max_shard_size:
        assert (ckpt.directory / INDEX_FILE).is_file()
        assert not (ckpt.directory / SINGLE_FILE).exists()
        assert len(list(ckpt.directory.glob("*.safetensors"))) > 1, "expected several shards"

    np.testing.assert_allclose(rope_inv_freq(cfg), ckpt.hf_inv_freq, rtol=1e-6, atol=0)
    if CASES[case].rope_scaling:
        unscaled = rope_inv_freq(dataclasses.replace(cfg, rope_scaling=None))
        assert not np.allclose(unscaled, ckpt.hf_inv_freq), "llama3 scaling changed no frequency"

    ours = xla_logits(cfg, _fp32(ckpt), prompt, MAX_SEQ)
    np.testing.assert_allclose(ours, ckpt.hf_logits, atol=ATOL, rtol=RTOL)
    assert len(set(ckpt.hf_tokens)) >= MIN_DISTINCT_TOKENS, (
        f"transformers' greedy tokens {ckpt.hf_tokens} barely vary: the comparison is vacuous"
    )


@pytest.mark.parametrize(
    "field, wrong",
    [
        ("rope_scaling", None),
        ("rms_norm_eps", 1e-5),
        ("rope_theta", 10000.0),
    ],
)
def test_config_fields_are_not_vacuous(
    checkpoints: dict[str, Checkpoint], prompt: np.ndarray, field: str, wrong: object
) -> None:
    """Reading this field wrongly would fail the logits comparison above."""
    ckpt = checkpoints["untied-llama3-sharded"]
    cfg = dataclasses.replace(ckpt.cfg, **{field: wrong})
    ours = xla_logits(cfg, _fp32(ckpt), prompt, MAX_SEQ)
    max_diff = float(np.abs(ours - ckpt.hf_logits).max())
    assert max_diff > 100 * ATOL, f"{field}={wrong!r} moved the logits by only {max_diff:g}"


# --- 2. greedy tokens through IREE on the CPU against transformers ----------------------


@pytest.mark.parametrize("layout", ["in_major", "out_major"])
@pytest.mark.parametrize("case", list(CASES))
def test_iree_cpu_greedy_tokens_match_transformers(
    checkpoints: dict[str, Checkpoint],
    iree_cpu: IreeCpu,
    prompt: np.ndarray,
    case: str,
    layout: str,
) -> None:
    ckpt = checkpoints[case]
    tokens = iree_cpu.greedy(ckpt.cfg, _fp32(ckpt, layout), prompt, f"{case}/fp32/{layout}")
    assert tokens == ckpt.hf_tokens, f"IREE {tokens} != transformers {ckpt.hf_tokens}"


# --- 3. in-graph dequant against host dequant -------------------------------------------


FORMATS = ["int8", "int4", "int4-ui4", "int4-ui4-f16", "int4-ui4-pc", "int4-ui4-qe", "int8-u8-pc"]


@pytest.mark.parametrize("layout", ["in_major", "out_major"])
@pytest.mark.parametrize("name", FORMATS)
def test_in_graph_dequant_matches_host_dequant(
    checkpoints: dict[str, Checkpoint], prompt: np.ndarray, name: str, layout: str
) -> None:
    """Every format in both layouts: the graph's dequant (XLA) is the host's, on the untied
    llama3 checkpoint so a quantized lm_head is covered too."""
    ckpt = checkpoints["untied-llama3-sharded"]
    quantized, host = _quantized_and_host(ckpt, name, layout)
    in_graph_logits = xla_logits(ckpt.cfg, quantized, prompt, MAX_SEQ)
    host_logits = xla_logits(ckpt.cfg, host, prompt, MAX_SEQ)
    max_diff = float(np.abs(in_graph_logits - host_logits).max())
    assert max_diff < 1e-4, f"{name}: in-graph dequant differs from host dequant by {max_diff:g}"


@pytest.mark.parametrize("name", FORMATS)
def test_iree_in_graph_dequant_gives_the_host_dequant_tokens(
    checkpoints: dict[str, Checkpoint], iree_cpu: IreeCpu, prompt: np.ndarray, name: str
) -> None:
    """IREE's tokens from the graph's dequant are the host-dequantized model's. In-major
    here; every format in the out-major layout runs against its XLA reference in
    `test_sweep.py::test_every_format_in_both_layouts` (and XLA against the host above)."""
    ckpt = checkpoints["untied-llama3-sharded"]
    quantized, host = _quantized_and_host(ckpt, name, "in_major")
    in_graph = iree_cpu.greedy(ckpt.cfg, quantized, prompt, f"{ckpt.name}/{name}")
    on_host = iree_cpu.greedy(ckpt.cfg, host, prompt, f"{ckpt.name}/{name}-host")
    assert in_graph == on_host
    assert len(set(in_graph)) >= MIN_DISTINCT_TOKENS


def _quantized_and_host(
    ckpt: Checkpoint, name: str, layout: str
) -> tuple[VariantWeights, VariantWeights]:
    """The checkpoint in format `name`, and those weights dequantized on the host (fp32)."""
    quantized = prepare_variant(ckpt.weights, ckpt.cfg, variant(name), layout)
    return quantized, prepare_variant(
        host_dequantized(quantized), ckpt.cfg, variant("fp32"), layout
    )


def test_quant_error_is_ordered(checkpoints: dict[str, Checkpoint]) -> None:
    ckpt = checkpoints[QUANT_CASE]
    variants = ("fp32", "int8", "int4")
    error = {v: prepare_variant(ckpt.weights, ckpt.cfg, variant(v)).quant_error for v in variants}
    assert error["fp32"] == 0.0 < error["int8"] < error["int4"] < 0.2, error


# --- 4. bf16 --------------------------------------------------------------------------------


def test_bf16_first_tokens_match_xla(
    checkpoints: dict[str, Checkpoint], iree_cpu: IreeCpu, prompt: np.ndarray
) -> None:
    ckpt = checkpoints[QUANT_CASE]
    vw = prepare_variant(ckpt.weights, ckpt.cfg, variant("bf16"))
    assert 0.0 < vw.quant_error < 0.01
    tokens = iree_cpu.greedy(ckpt.cfg, vw, prompt, f"{QUANT_CASE}/bf16")
    bucket = prompt_bucket(len(prompt), MAX_SEQ)
    run = GreedyRun(prompt, bucket, MAX_SEQ, NUM_TOKENS)
    expected = reference_tokens(ckpt.cfg, vw, run, weights_id=QUANT_CASE)
    # bf16 roundings differ between XLA and IREE, so later tokens may drift apart.
    assert num_matching(tokens, expected) >= 1, f"IREE {tokens} vs XLA {expected}"


# --- 5. export ------------------------------------------------------------------------------


def test_export_is_deterministic_and_decode_ignores_the_prompt(
    checkpoints: dict[str, Checkpoint],
) -> None:
    cfg = checkpoints[QUANT_CASE].cfg
    spec = GraphSpec(cfg, variant("int4"), MAX_SEQ, "prefill", 16)
    first, second = export_graph(spec), export_graph(spec)
    assert first.stablehlo == second.stablehlo and first.sha256 == second.sha256
    assert "custom_call" not in first.stablehlo

    prefill_shas = {
        export_graph(GraphSpec(cfg, variant("fp32"), MAX_SEQ, "prefill", b)).sha256
        for b in (16, 32)
    }
    assert len(prefill_shas) == 2, "prefill graphs of different buckets must differ"
    decode_shas = {
        export_graph(GraphSpec(cfg, variant("fp32"), MAX_SEQ, "decode", bucket)).sha256
        for bucket in (0, prompt_bucket(5, MAX_SEQ), prompt_bucket(20, MAX_SEQ))
    }
    assert len(decode_shas) == 1, "the decode graph must not depend on the prompt bucket"
    other_capacity = export_graph(GraphSpec(cfg, variant("fp32"), 2 * MAX_SEQ, "decode"))
    assert other_capacity.sha256 not in decode_shas, "decode must depend on the cache capacity"


# --- 6. resident weights ----------------------------------------------------------------------


def test_weights_upload_once_for_many_points(
    checkpoints: dict[str, Checkpoint], iree_cpu: IreeCpu
) -> None:
    ckpt = checkpoints[QUANT_CASE]
    runner = IreeRunner(iree_cpu.device.driver)
    num_builds = 0

    def make_weights(name: str) -> Callable[[], VariantWeights]:
        def make() -> VariantWeights:
            nonlocal num_builds
            num_builds += 1
            return prepare_variant(ckpt.weights, ckpt.cfg, variant(name))

        return make

    upload_s = []
    for length in (3, 7, PROMPT_LENGTH):  # one bucket: no compile beyond the other tests'
        bucket = prompt_bucket(length, MAX_SEQ)
        prefill, decode = iree_cpu.graphs(ckpt.cfg, "fp32", bucket)
        upload_s.append(runner.ensure_weights("fp32", make_weights("fp32")))
        steps = DecodeSteps(warmup_steps=1, decode_steps=2)
        result = greedy_decode(
            runner.session(prefill, decode), prompt_ids(VOCAB, length), bucket, steps
        )
        assert len(result.tokens) == 4
        if length == PROMPT_LENGTH:
            assert result.tokens == ckpt.hf_tokens[:4], "resident weights gave other tokens"
    assert runner.num_uploads == 1 and num_builds == 1
    assert upload_s[0] > 0 and upload_s[1:] == [0.0, 0.0]

    runner.ensure_weights("int8", make_weights("int8"))
    assert runner.num_uploads == 2 and num_builds == 2
    assert runner.resident_key == "int8"


def test_token_readback_through_the_staging_buffer(iree_cpu: IreeCpu) -> None:
    """The copy path that device-local (CUDA) tokens take, run on the CPU device: one
    host buffer and one semaphore serve every read, and each read sees the new value."""
    import iree.runtime as rt

    from workers.runtimes.iree import _TokenReadback

    runner = iree_cpu.runner
    staged = _TokenReadback(rt, runner.device, stage=True)
    mapped = _TokenReadback(rt, runner.device)
    values = [7, -3, 2**31 - 1, 0, 123456]
    views = [runner.upload(np.array(v, np.int32)) for v in values]
    assert [staged.read(v) for v in views] == [(v,) for v in values]
    assert [mapped.read(v) for v in views] == [(v,) for v in values]
    assert staged._value == len(values), "one semaphore step per read"
    several = runner.upload(np.array(values, np.int32))  # a multi-step call's tokens
    assert staged.read(several) == mapped.read(several) == tuple(values)


# --- 7. reference tokens ------------------------------------------------------------------


def test_reference_tokens_match_iree_and_are_cached(
    checkpoints: dict[str, Checkpoint],
    iree_cpu: IreeCpu,
    prompt: np.ndarray,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ckpt = checkpoints["untied-llama3-sharded"]
    vw = _fp32(ckpt)
    bucket = prompt_bucket(len(prompt), MAX_SEQ)
    args = (ckpt.cfg, vw, GreedyRun(prompt, bucket, MAX_SEQ, NUM_TOKENS))
    expected = reference_tokens(*args, weights_id=ckpt.name, cache_dir=tmp_path)
    assert expected == iree_cpu.greedy(ckpt.cfg, vw, prompt, f"{ckpt.name}/fp32")
    assert len(list((tmp_path / "reference").glob("*.json"))) == 1

    def recompute(*_: object) -> None:
        raise AssertionError("reference_tokens recomputed a cached reference")

    monkeypatch.setattr(workers.measure.reference, "_run_xla", recompute)
    assert reference_tokens(*args, weights_id=ckpt.name, cache_dir=tmp_path) == expected


# --- 8. quality against fp32 ----------------------------------------------------------------


def test_quality_orders_the_formats_and_is_cached(
    checkpoints: dict[str, Checkpoint], prompt: np.ndarray, tmp_path: Path, monkeypatch
) -> None:
    import workers.measure.quality
    from workers.measure.quality import quality

    ckpt = checkpoints[QUANT_CASE]
    bucket = prompt_bucket(len(prompt), MAX_SEQ)
    fp32_builds = []

    def fp32_weights() -> VariantWeights:
        fp32_builds.append(1)
        return _fp32(ckpt)

    def quality_of(name: str, layout: str = "in_major"):
        vw = prepare_variant(ckpt.weights, ckpt.cfg, variant(name), layout)
        return quality(
            ckpt.cfg,
            vw,
            GreedyRun(prompt, bucket, MAX_SEQ, NUM_TOKENS),
            fp32_weights=fp32_weights,
            weights_id=ckpt.name,
            cache_dir=tmp_path,
        )

    assert quality_of("fp32") == workers.measure.quality.Quality(1.0, 0.0)
    int8, int4 = quality_of("int8"), quality_of("int4")
    assert int8.fp32_logit_error < int4.fp32_logit_error < 0.5, (int8, int4)
    assert int8.fp32_agreement >= int4.fp32_agreement and int8.fp32_agreement > 0.8
    assert fp32_builds == [1], "fp32's side is computed once, then read from the cache"
    assert abs(quality_of("int4", "out_major").fp32_logit_error - int4.fp32_logit_error) < 1e-4

    def recompute(*_: object) -> None:
        raise AssertionError("a cached quality was computed again")

    monkeypatch.setattr(workers.measure.quality, "_logits", recompute)
    assert quality_of("int4") == int4
