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
import json
from collections.abc import Mapping
from typing import Any

from sweep.config import FlagSet, SweepConfig
from workers.devices import DeviceSpec
from workers.export import GRAPH_KINDS, GraphSpec
from workers.llama_config import LlamaConfig
from workers.model import prompt_bucket
from workers.point import BenchTask
from workers.runtime import DecodeSteps
from workers.variant import Variant

KEY_VERSION = 2  # bump when the meaning of a point changes, so old rows are not reused
NO_FLAG_SET = "-"  # the flag set of a point that IREE does not compile (the XLA baseline)


@dataclasses.dataclass(frozen=True)
class Point:
    model: str
    model_id: str  # identity of the weights (ModelSource.weights_id): seed or file content
    variant: Variant
    device: DeviceSpec
    runtime: str
    prompt_length: int
    prompt_bucket: int
    max_seq: int
    flag_set: str
    flags: tuple[str, ...]
    steps: DecodeSteps

    @functools.cached_property
    def key(self) -> str:
        fields = dataclasses.asdict(self)
        fields.pop("model")  # a display name; model_id is the identity
        fields.pop("flag_set")  # a label; the flags themselves are in the key
        blob = json.dumps({"v": KEY_VERSION, **fields}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    @property
    def compiled_by_iree(self) -> bool:
        """IREE points need their graphs compiled first; XLA compiles in the worker."""
        return self.runtime == "iree"

    def graph(self, cfg: LlamaConfig, kind: str) -> GraphSpec:
        """The graph of `kind` this point runs; points that share it share its compile."""
        bucket = self.prompt_bucket if kind == "prefill" else 0
        return GraphSpec(cfg, self.variant, self.max_seq, kind, bucket)

    def graphs(self, cfg: LlamaConfig) -> tuple[GraphSpec, ...]:
        return tuple(self.graph(cfg, kind) for kind in GRAPH_KINDS)

    def task(self) -> BenchTask:
        return BenchTask(
            self.variant,
            self.runtime,
            self.model_id,
            self.prompt_length,
            self.prompt_bucket,
            self.max_seq,
            self.steps,
        )

    @property
    def label(self) -> str:
        return point_label(
            {
                "variant": self.variant.name,
                "device": self.device.name,
                "prompt_length": self.prompt_length,
                "flag_set": self.flag_set,
                "runtime": self.runtime,
            }
        )


def point_label(row: Mapping[str, Any]) -> str:
    """`variant/device/L<prompt>/flag_set[/runtime]`: how a point is named in messages."""
    runtime = row.get("runtime")
    suffix = "" if runtime in (None, "iree") else f"/{runtime}"
    return (
        f"{row.get('variant')}/{row.get('device')}/L{row.get('prompt_length')}/"
        f"{row.get('flag_set')}{suffix}"
    )


def expand(cfg: SweepConfig, model_id: str) -> list[Point]:
    """All points of the grid, ordered device, variant, runtime, flag set, prompt length.

    That order keeps a variant's points together, and within it a runtime's, which is
    the order a benchmark actor wants them in (one weight upload per variant and
    runtime). A flag set limited to some devices makes no point on the others.
    """
    g = cfg.grid
    points = []
    for device_name in g.devices:
        for variant_name in g.variants:
            for runtime in g.runtimes:
                # IREE flags mean nothing to XLA: its points use no flag set.
                flag_sets = g.flag_sets.items() if runtime == "iree" else [(NO_FLAG_SET, FlagSet())]
                for flag_set, spec in flag_sets:
                    if not spec.applies_to(device_name):
                        continue
                    for length in g.prompt_lengths:
                        points.append(
                            Point(
                                model=cfg.model.name,
                                model_id=model_id,
                                variant=cfg.variants[variant_name],
                                device=cfg.devices[device_name],
                                runtime=runtime,
                                prompt_length=length,
                                prompt_bucket=prompt_bucket(length, g.max_seq),
                                max_seq=g.max_seq,
                                flag_set=flag_set,
                                flags=spec.flags,
                                steps=cfg.bench.steps,
                            )
                        )
    return points
