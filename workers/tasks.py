"""What goes out to a benchmark worker: the model's source and one point's task.

`ModelSource` says where a model's weights come from (also the `model` section of the
config), `BenchTask` what a worker measures for one point besides the compiled graphs,
with its parts: the decode protocol's counts (`DecodeSteps`), the text windows of the
quality columns (`EvalSpec`) and llama.cpp's switches (`LlamaCppSettings`). All cross
Ray as themselves, and the driver builds them from the config without importing any
runtime; `weights_key` names what an actor holds resident.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from workers.checkpoints.tensors import LazyTensors
from workers.core.config import LlamaConfig, preset
from workers.core.devices import cpu_has_amx
from workers.core.kinds import GraphKind, Layout, Runtime, Weights, check
from workers.formats.variant import Variant, check_layout
from workers.formats.weights import VariantWeights, prepare_variant
from workers.model.export import TIMED_KINDS, Compilable, GraphSpec, ModuleSpec


@dataclasses.dataclass(frozen=True)
class DecodeSteps:
    """How many of each call one point makes (the protocol: `workers.runtimes.session`)."""

    warmup_steps: int
    decode_steps: int
    # A sweep's value is conf/config.yaml's `bench.prefill_runs`; this default, for direct
    # callers (tests, benchmarks), is the same (tests/test_config.py keeps them in step).
    prefill_runs: int = 3
    # Greedy steps per decode call (a loop in the graph): the per-call host cost is spread
    # over this many tokens. Decode steps are whole calls' worth; warmup is rounded up to
    # whole calls.
    steps_per_call: int = 1

    def __post_init__(self) -> None:
        k = self.steps_per_call
        if k < 1 or self.decode_steps % k:
            raise ValueError(
                f"steps_per_call={k}: must be at least 1 and divide "
                f"decode_steps={self.decode_steps}"
            )

    @property
    def warmup_calls(self) -> int:
        return -(-self.warmup_steps // self.steps_per_call)

    @property
    def decode_calls(self) -> int:
        return self.decode_steps // self.steps_per_call

    @property
    def num_warmup_tokens(self) -> int:
        """The warmup as run: whole calls, so at least `warmup_steps` tokens."""
        return self.warmup_calls * self.steps_per_call

    @property
    def num_tokens(self) -> int:
        """Tokens generated: one from prefill, then one per decode step (warmup included)."""
        return 1 + self.num_warmup_tokens + self.decode_steps


SWITCHES = ("auto", "on", "off")  # an extra_bufts or flash_attn setting


@dataclasses.dataclass(frozen=True)
class LlamaCppSettings:
    """The llama.cpp switches a point runs with (`workers.runtimes.llamacpp`); `auto` is llama.cpp's
    own choice, but for `extra_bufts`, where it is off on a CPU with AMX."""

    extra_bufts: str = "auto"
    flash_attn: str = "auto"
    n_ubatch: int = 512  # a prefill's micro-batch: tokens per graph evaluation

    def __post_init__(self) -> None:
        for name in ("extra_bufts", "flash_attn"):
            if getattr(self, name) not in SWITCHES:
                raise ValueError(
                    f"llamacpp.{name}={getattr(self, name)!r}: one of {', '.join(SWITCHES)}"
                )
        if self.n_ubatch < 1:
            raise ValueError(f"llamacpp.n_ubatch={self.n_ubatch}: must be at least 1")

    def use_extra_bufts(self) -> bool:
        """The extra buffer types on this host: `auto` is off where the CPU has AMX."""
        return self.extra_bufts == "on" or (self.extra_bufts == "auto" and not cpu_has_amx())


MIN_EVAL_TOKENS = 512  # the scored tokens a row's quality needs to be worth reading


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    """The text a point's quality is measured on: `num_chunks` windows of `ctx` tokens,
    each window's first token already the BOS where the tokenizer adds one."""

    tokens: tuple[int, ...]  # num_chunks * ctx token ids, window after window
    ctx: int

    def __post_init__(self) -> None:
        if self.ctx < 4 or not self.tokens or len(self.tokens) % self.ctx:
            raise ValueError(
                f"eval windows: {len(self.tokens)} tokens are not whole windows of ctx={self.ctx}"
            )

    @property
    def num_chunks(self) -> int:
        return len(self.tokens) // self.ctx

    @property
    def first(self) -> int:
        """The first scored position of a window: llama.cpp's `n_ctx / 2`."""
        return self.ctx // 2

    @property
    def num_scored(self) -> int:
        """Scored tokens per window."""
        return self.ctx - 1 - self.first

    @property
    def num_eval_tokens(self) -> int:
        return self.num_chunks * self.num_scored

    def windows(self) -> np.ndarray:
        """[num_chunks, ctx] int32."""
        return np.asarray(self.tokens, np.int32).reshape(self.num_chunks, self.ctx)

    def targets(self) -> np.ndarray:
        """[num_chunks, num_scored]: the token each scored position predicts."""
        return self.windows()[:, self.first + 1 :]

    @property
    def fingerprint(self) -> str:
        blob = np.asarray(self.tokens, np.int32).tobytes() + str(self.ctx).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def eval_windows(ids: Sequence[int], ctx: int, max_chunks: int, bos: int | None) -> EvalSpec:
    """llama.cpp's windows of a tokenized text: `min(max_chunks, len(ids) // ctx)` of
    `ctx` tokens, each starting with `bos` when the tokenizer adds one."""
    num_chunks = min(max_chunks, len(ids) // ctx)
    if num_chunks < 1:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than one window of ctx={ctx}")
    windows = np.asarray(ids[: num_chunks * ctx], np.int64).reshape(num_chunks, ctx)
    if bos is not None:
        windows[:, 0] = bos
    return EvalSpec(tuple(int(t) for t in windows.reshape(-1)), ctx)


def score_graph(
    cfg: Any, variant: Any, layout: str, ctx: int, weights: str = Weights.ARGUMENTS
) -> Any:
    """The graph that scores one window: tokens [ctx] -> logits [ctx - 1 - ctx/2, vocab]."""
    return GraphSpec(cfg, variant, ctx, GraphKind.SCORE, ctx, layout, weights=weights)


FAULT_ENV = "SWEEP_LLAMACPP_FAULT"


RUNTIMES: tuple[Runtime, ...] = tuple(Runtime)


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where a model's weights come from: a Hugging Face checkpoint directory, a GGUF file
    (or a directory holding one), or a seed.

    Also the `model` section of the sweep's config (`conf/model/*.yaml`).
    """

    name: str
    preset: str | None = None
    path: str | None = None
    seed: int = 0
    repo: str | None = None  # a Hugging Face repo id, found in the local cache (HF_HOME)

    def __post_init__(self) -> None:
        if self.path is None and self.preset is None and self.repo is None:
            raise ValueError(
                "set model.preset (a name in workers/core/config.py), model.path=DIR or "
                "model.repo=ORG/NAME"
            )

    def resolved(self) -> ModelSource:
        """With `repo`, the same source with `path` set to the repo's cached snapshot."""
        if self.repo is None or self.path is not None:
            return self
        from workers.checkpoints.source import resolve_repo

        return dataclasses.replace(self, path=str(resolve_repo(self.repo)))

    def config(self) -> LlamaConfig:
        if self.path:
            from workers.checkpoints.source import checkpoint_config

            return checkpoint_config(self.path)
        assert self.preset is not None
        return preset(self.preset)

    def weights_id(self, cache_dir: Path | None = None) -> str:
        """The identity of the weights: same id, same numbers, on every host.

        Seeded weights are named by preset, seed and config; a checkpoint by the content
        of its files (`workers.checkpoints.source.fingerprint`, remembered in `cache_dir` by
        size and mtime), so weights re-saved at the same path are new weights.
        """
        if self.path:
            from workers.checkpoints.source import fingerprint

            ident = {
                "content": fingerprint(self.path, cache_dir),
                "config": self.config().to_dict(),
            }
        else:
            ident = {"preset": self.preset, "seed": self.seed, "config": self.config().to_dict()}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]

    def label(self, cache_dir: Path | None = None) -> str:
        """How rows, reports and plots name the model. Seeded weights: `name`. A checkpoint:
        its file or folder name (the repo id for model.repo; `name` if set to other than
        the preset's) and the first 12 hex digits of its content fingerprint, since the
        preset's name that `conf/model/*.yaml` leaves in `name` is not the model measured."""
        if not self.path:
            return self.name
        from workers.checkpoints.source import fingerprint, gguf_file

        own = self.name if self.name != self.preset else None
        base = own or self.repo or (gguf_file(self.path) or Path(self.path).resolve()).name
        return f"{base}@{fingerprint(self.path, cache_dir)[:12]}"

    def tensors(self, blocks: str | None = None) -> LazyTensors:
        """The float32 checkpoint tensors (or the seed's), each made when asked for; with
        `blocks`, a GGUF file's linears as its own stored blocks."""
        from workers.checkpoints.source import check_blocks, lazy_checkpoint, lazy_synthetic_weights

        if blocks is not None and not self.path:
            check_blocks(None, blocks)  # raises: seeded weights have no blocks
        if self.path:
            return lazy_checkpoint(self.path, blocks)
        return lazy_synthetic_weights(self.config(), self.seed)

    def variant(self, variant: Variant, layout: str = Layout.IN_MAJOR) -> VariantWeights:
        """The variant's graph weights, made from one checkpoint tensor at a time (the
        linears from the file's own blocks for a variant with `blocks`); a smoothed
        variant's after calibrating the float model (`workers.model.calibrate`)."""
        source: Any = self.tensors(variant.blocks)
        if variant.smooth_alpha is not None:
            from workers.model.calibrate import smoothed_tensors

            source = smoothed_tensors(
                self.config(), source, self.tensors, variant.smooth_alpha, self.tokenizer()
            )
        return prepare_variant(source, self.config(), variant, layout, consume=True)

    def tokenizer(self) -> Any | None:
        """The checkpoint's tokenizer, or None: seeded weights, or a checkpoint without one."""
        from workers.checkpoints.tensors import CheckpointError
        from workers.checkpoints.tokenizers import load_tokenizer

        try:
            return load_tokenizer(self.path) if self.path else None
        except CheckpointError:
            return None


def weights_key(weights_id: str, variant: Variant, layout: str) -> str:
    """What a benchmark actor holds resident: these weights, in this variant and layout.
    The worker, its profiles and the scheduler's weight affinity all name them by it."""
    return f"{weights_id}/{variant.fingerprint}/{layout}"


@dataclasses.dataclass(frozen=True)
class BenchTask:
    """What a worker needs to measure one point, besides the two vmfbs (IREE only)."""

    variant: Variant
    runtime: str  # "iree"; "xla": the same graphs through XLA; "llamacpp": a GGUF file
    weights_id: str  # ModelSource.weights_id: names the weights in caches and residency
    prompt_length: int
    prompt_bucket: int
    max_seq: int
    steps: DecodeSteps
    layout: str = (
        Layout.IN_MAJOR
    )  # how the weight matrices reach the graphs (workers.formats.variant)
    profile_calls: int = 0  # IREE: profile this many decode calls after the timed ones
    batch: int = 1  # sequences decoded together (equal-length prompts, a shared position)
    depth: int = 0  # context tokens beyond the prompt before decode starts (prefilled)
    attention_span: int | None = None  # decode attends over this many slots; None: max_seq
    prompt_text: str | None = None  # tokenized with the checkpoint's tokenizer.json
    quality: EvalSpec | None = None  # text windows for ppl / KLD (workers.measure.perplexity)
    # Cores the point runs on (workers.core.threads): the actor pinned to them, IREE's
    # local-task workers, and any runtime's own thread count (llama.cpp's -t). 0: all the
    # actor's CPUs, as without the axis.
    threads: int = 0
    llamacpp: LlamaCppSettings = LlamaCppSettings()  # llama.cpp points: its own switches
    weights: str = Weights.ARGUMENTS  # IREE: the graphs' weights as arguments or parameters

    def graph(self, cfg: LlamaConfig, kind: str) -> GraphSpec:
        """The prefill, decode or score graph this task runs."""
        if kind == GraphKind.SCORE:
            assert self.quality is not None, "a score graph needs the text windows"
            return score_graph(cfg, self.variant, self.layout, self.quality.ctx, self.weights)
        if kind == GraphKind.PREFILL:
            return GraphSpec(
                cfg,
                self.variant,
                self.max_seq,
                kind,
                self.prompt_bucket,
                self.layout,
                batch=self.batch,
                weights=self.weights,
            )
        return GraphSpec(
            cfg,
            self.variant,
            self.max_seq,
            kind,
            0,
            self.layout,
            self.steps.steps_per_call,
            self.batch,
            self.attention_span,
            self.weights,
        )

    def graphs(self, cfg: LlamaConfig) -> tuple[GraphSpec, ...]:
        """prefill and decode, then the score graph when the task measures quality."""
        kinds = (*TIMED_KINDS, GraphKind.SCORE) if self.quality is not None else TIMED_KINDS
        return tuple(self.graph(cfg, kind) for kind in kinds)

    @property
    def one_module(self) -> bool:
        """Whether the task's graphs are one module (`ModuleSpec`): with weights as
        parameters, so that its entry points share the weights and their packed copies."""
        return self.weights == Weights.PARAMETERS

    def compiles(self, cfg: LlamaConfig) -> tuple[Compilable, ...]:
        """What the task's vmfbs are compiled from, in the order a worker takes them: a
        module per graph (prefill, decode, score), or one module of them all."""
        graphs = self.graphs(cfg)
        return (ModuleSpec(graphs),) if self.one_module else graphs

    def __post_init__(self) -> None:
        check(Runtime, self.runtime, "runtime")
        check_layout(self.layout)
        check(Weights, self.weights, "weights")
        if self.weights == Weights.PARAMETERS and self.runtime != Runtime.IREE:
            raise ValueError(f"weights=parameters is an IREE graph's; {self.runtime} has none")
