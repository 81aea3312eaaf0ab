"""What goes out to a benchmark worker: the model's source and one point's task.

`ModelSource` says where a model's weights come from (also the `model` section of the
config), `BenchTask` what a worker measures for one point besides the compiled graphs.
Both cross Ray as themselves; `weights_key` names what an actor holds resident.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from workers.checkpoints.tensors import LazyTensors
from workers.core.config import LlamaConfig, preset
from workers.core.kinds import GraphKind, Runtime
from workers.formats.quant import VariantWeights, prepare_variant
from workers.formats.variant import Variant, check_layout
from workers.measure.perplexity import EvalSpec, score_graph
from workers.model.export import GraphSpec
from workers.runtimes.llamacpp import LlamaCppSettings
from workers.runtimes.session import DecodeSteps

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

    def variant(self, variant: Variant, layout: str = "in_major") -> VariantWeights:
        """The variant's graph weights, made from one checkpoint tensor at a time (the
        linears from the file's own blocks for a variant with `blocks`)."""
        source = self.tensors(variant.blocks)
        return prepare_variant(source, self.config(), variant, layout, consume=True)


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
    layout: str = "in_major"  # how the weight matrices reach the graphs (workers.formats.variant)
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

    def graph(self, cfg: LlamaConfig, kind: str) -> GraphSpec:
        """The prefill, decode or score graph this task runs."""
        if kind == GraphKind.SCORE:
            assert self.quality is not None, "a score graph needs the text windows"
            return score_graph(cfg, self.variant, self.layout, self.quality.ctx)
        if kind == GraphKind.PREFILL:
            return GraphSpec(
                cfg,
                self.variant,
                self.max_seq,
                kind,
                self.prompt_bucket,
                self.layout,
                batch=self.batch,
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
        )

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime {self.runtime!r}; allowed: {list(RUNTIMES)}")
        check_layout(self.layout)
