"""Grid expansion: the cross product of the axes as points with deterministic keys.

Pure functions, no I/O. A point's key is a hash of everything that determines its
measurement (model identity, the variant's and the device's definitions, prompt,
cache capacity, flags, step counts), so the same command on any host gives the
same keys: resume is a set difference. Which graphs a point needs is also decided
here: the decode graph depends on the cache capacity, never on the prompt length,
so a prompt-length axis adds prefill graphs only.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
from collections.abc import Mapping
from typing import Any

from sweep.plan.config import FlagSet, SweepConfig
from workers.core.config import LlamaConfig
from workers.core.devices import DeviceSpec
from workers.core.kinds import Attention, Layout, Runtime, Weights
from workers.formats.variant import Variant
from workers.model.export import Compilable, GraphSpec, prompt_bucket
from workers.tasks import BenchTask, DecodeSteps, EvalSpec, LlamaCppSettings

KEY_VERSION = 2  # bump when the meaning of a point changes, so old rows are not reused
NO_FLAG_SET = "-"  # the flag set of a point that IREE does not compile (XLA, llama.cpp)


@dataclasses.dataclass(frozen=True)
class Point:
    model: str
    model_id: str  # identity of the weights (ModelSource.weights_id): seed or file content
    variant: Variant
    layout: str  # how the weight matrices reach the graphs: in_major or out_major
    device: DeviceSpec
    runtime: str
    prompt_length: int
    prompt_bucket: int
    max_seq: int
    flag_set: str
    flags: tuple[str, ...]
    steps: DecodeSteps
    profile_calls: int = 0  # decode calls to profile after the timed ones (0: none)
    batch: int = 1  # sequences decoded together
    depth: int = 0  # context tokens beyond the prompt, prefilled, when decode starts
    attention: str = Attention.FULL  # full: decode attends over max_seq; filled: a bucket
    prompt_text: str | None = None  # a text prompt; None: seeded token ids
    replica: int = 0  # > 0: the same configuration measured again (the search's ablation)
    quality: EvalSpec | None = None  # the text windows of the quality columns; None: no text
    threads: int = 0  # cores (and IREE workers) the point runs on; 0: all the actor's CPUs
    repeat: int = 0  # which of `num_repeats` measurements of the point this is (from 0)
    num_repeats: int = 1  # bench.repeats: how often the point is measured, interleaved
    llamacpp: LlamaCppSettings = LlamaCppSettings()  # llama.cpp points: its own switches
    weights: str = Weights.ARGUMENTS  # IREE: the graphs' weights as arguments or parameters

    @property
    def attention_span(self) -> int | None:
        """The decode graph's static span: a power-of-two bucket of the slots the point
        fills (prompt, depth, generated tokens), or None for all max_seq."""
        if self.attention == Attention.FULL:
            return None
        return prompt_bucket(self.prompt_length + self.depth + self.steps.num_tokens, self.max_seq)

    @functools.cached_property
    def key(self) -> str:
        fields = dataclasses.asdict(self)
        fields.pop("model")  # a display name; model_id is the identity
        fields.pop("flag_set")  # a label; the flags themselves are in the key
        fields.pop("profile_calls")  # runs after the measurement and does not change it
        for name in ("replica", "quality", "threads"):
            if not fields[name]:
                fields.pop(name)  # so the keys of every other point stay as they were
        if self.weights == Weights.ARGUMENTS:
            fields.pop("weights")
        if self.llamacpp == LlamaCppSettings():
            fields.pop("llamacpp")
        if self.num_repeats == 1:
            fields.pop("repeat"), fields.pop("num_repeats")
        blob = json.dumps({"v": KEY_VERSION, **fields}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    @property
    def repeat_of(self) -> str | None:
        """The key the repeats of a point share: the key it has when measured once (so
        readers match a repeated point with the same point of an unrepeated run); None
        when the point is measured once."""
        if self.num_repeats == 1:
            return None
        return dataclasses.replace(self, repeat=0, num_repeats=1).key

    @property
    def compiled_by_iree(self) -> bool:
        """IREE points need their graphs compiled first; XLA compiles in the worker, and
        llama.cpp needs no graph."""
        return self.runtime == Runtime.IREE

    def graph(self, cfg: LlamaConfig, kind: str) -> GraphSpec:
        """The graph of `kind` this point runs; points that share it share its compile."""
        return self.task().graph(cfg, kind)

    def graphs(self, cfg: LlamaConfig) -> tuple[Compilable, ...]:
        """What the point compiles: prefill and decode, then the score graph when the point
        measures quality; one module of them when its weights are parameters."""
        return self.task().compiles(cfg)

    def task(self) -> BenchTask:
        return BenchTask(
            self.variant,
            self.runtime,
            self.model_id,
            self.prompt_length,
            self.prompt_bucket,
            self.max_seq,
            self.steps,
            self.layout,
            self.profile_calls if self.compiled_by_iree else 0,
            self.batch,
            self.depth,
            self.attention_span,
            self.prompt_text,
            self.quality,
            self.threads,
            self.llamacpp,
            self.weights,
        )

    @property
    def label(self) -> str:
        return point_label(
            {
                "variant": self.variant.name,
                "layout": self.layout,
                "weights": self.weights,
                "device": self.device.name,
                "prompt_length": self.prompt_length,
                "batch_size": self.batch,
                "depth": self.depth,
                "attention_span": self.attention_span,
                "flag_set": self.flag_set,
                "runtime": self.runtime,
                "extra_bufts": self.llamacpp.extra_bufts,
                "replica": self.replica,
                "threads": self.threads or None,
                "repeat": self.repeat if self.num_repeats > 1 else None,
            }
        )


def point_label(row: Mapping[str, Any]) -> str:
    """`variant[/layout][/params]/device/L<prompt>[/b<batch>][/d<depth>][/a<span>][/t<threads>]
    /flag_set[/runtime][/r<repeat>]`: how a point is named in messages; defaults (in-major,
    weights as arguments, batch 1, depth 0, attention over the whole cache, all threads,
    IREE, measured once) are left out."""
    runtime, layout = row.get("runtime"), row.get("layout")
    parts = [str(row.get("variant"))]
    parts += [layout] if layout not in (None, Layout.IN_MAJOR) else []
    parts += ["params"] if row.get("weights") == Weights.PARAMETERS else []
    parts += [str(row.get("device")), f"L{row.get('prompt_length')}"]
    parts += [f"b{b}"] if (b := row.get("batch_size")) not in (None, 1) else []
    parts += [f"d{d}"] if (d := row.get("depth")) not in (None, 0) else []
    parts += [f"a{a}"] if (a := row.get("attention_span")) is not None else []
    parts += [f"t{t}"] if (t := row.get("threads")) else []
    parts += [str(row.get("flag_set"))]
    parts += [runtime] if runtime not in (None, Runtime.IREE) else []
    parts += [f"extra_bufts-{x}"] if (x := row.get("extra_bufts")) not in (None, "auto") else []
    parts += [f"again{r}"] if (r := row.get("replica")) else []
    parts += [f"r{r}"] if (r := row.get("repeat")) is not None else []
    return "/".join(parts)


def expand(cfg: SweepConfig, model_id: str, quality: EvalSpec | None = None) -> list[Point]:
    """All points of the grid, ordered device, variant, layout, runtime, flag set, prompt.

    That order keeps the points of one resident weight set (variant, layout, runtime)
    together, the order a benchmark actor wants them in: one upload each. A flag set
    limited to some devices makes no point on the others. `quality`: the text windows
    every point measures its quality columns on (`sweep.plan.eval_text`), None for none.
    With `bench.repeats=R`, the whole grid R times over, repeat 0 first: the scheduler
    runs a repeat of the grid before any point of the next (`Scheduler._take_point`).
    """
    once = _expand_once(cfg, model_id, quality)
    num_repeats = cfg.bench.repeats
    if num_repeats == 1:
        return once
    # A profile does not change with the repeat: the first repeat's is enough.
    return [
        dataclasses.replace(
            point, repeat=r, num_repeats=num_repeats, profile_calls=point.profile_calls * (r == 0)
        )
        for r in range(num_repeats)
        for point in once
    ]


def _expand_once(cfg: SweepConfig, model_id: str, quality: EvalSpec | None) -> list[Point]:
    g = cfg.grid
    points = []
    shapes = list(itertools.product(g.batch_sizes, g.depths, g.attention, g.threads))
    llamacpp_files: dict[tuple[str, str], str] = {}  # (device, llama.cpp type) -> variant
    for device_name, variant_name, layout, runtime, weights in itertools.product(
        g.devices, g.variants, g.layouts, g.runtimes, g.weights
    ):
        # Only IREE's graphs hold weights as parameters: a baseline runs once per layout.
        if runtime != Runtime.IREE:
            if weights != g.weights[0]:
                continue
            weights = Weights.ARGUMENTS
        # IREE flags mean nothing to the baselines: their points use no flag set. llama.cpp
        # runs a GGUF file, not our graphs: one layout of it is enough (the first listed),
        # and one variant per llama.cpp type (the first listed: int8 formats all run Q8_0).
        flag_sets = g.flag_sets.items() if runtime == Runtime.IREE else [(NO_FLAG_SET, FlagSet())]
        switches = cfg.llamacpp.settings() if runtime == Runtime.LLAMACPP else [LlamaCppSettings()]
        if runtime == Runtime.LLAMACPP:
            kind = cfg.variants[variant_name].llamacpp_type
            first = llamacpp_files.setdefault((device_name, kind), variant_name)
            if layout != g.layouts[0] or first != variant_name:
                continue
        for flag_set, spec in flag_sets:
            if not spec.applies_to(device_name):
                continue
            for length, (batch, depth, attention, threads), llamacpp in itertools.product(
                g.prompt_lengths, shapes, switches
            ):
                points.append(
                    Point(
                        model=cfg.model.name,
                        model_id=model_id,
                        variant=cfg.variants[variant_name],
                        layout=layout,
                        device=cfg.devices[device_name],
                        runtime=runtime,
                        prompt_length=length,
                        prompt_bucket=prompt_bucket(length + depth, g.max_seq),
                        max_seq=g.max_seq,
                        flag_set=flag_set,
                        flags=spec.flags,
                        steps=cfg.bench.steps,
                        profile_calls=cfg.bench.profile_calls if cfg.profile else 0,
                        batch=batch,
                        depth=depth,
                        attention=attention,
                        prompt_text=cfg.bench.prompt,
                        quality=quality,
                        threads=threads,
                        llamacpp=llamacpp,
                        weights=weights,
                    )
                )
    return points
