"""Grid expansion: the cross product of the axes as points with deterministic keys.

Pure functions, no I/O. A point's key is a hash of everything that determines its
measurement (model identity, variant, device, prompt, cache capacity, flags, step
counts), so the same command on any host gives the same keys: resume is a set
difference. Which graphs a point needs is also decided here: the decode graph
depends on the cache capacity, never on the prompt length, so a prompt-length axis
adds prefill graphs only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from sweep.config import FlagSet, SweepConfig
from workers.model import prompt_bucket

KEY_VERSION = 1  # bump when the meaning of a point changes, so old rows are not reused


@dataclasses.dataclass(frozen=True)
class Point:
    model: str
    model_id: str  # identity of the weights: preset and seed, or checkpoint path and config
    variant: str
    group_size: int
    device: str
    runtime: str
    prompt_length: int
    prompt_bucket: int
    max_seq: int
    flag_set: str
    flags: tuple[str, ...]
    warmup_steps: int
    decode_steps: int
    prefill_runs: int

    @property
    def key(self) -> str:
        fields = dataclasses.asdict(self)
        fields.pop("model")  # a display name; model_id is the identity
        fields.pop("flag_set")  # a label; the flags themselves are in the key
        blob = json.dumps({"v": KEY_VERSION, **fields}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    @property
    def num_tokens(self) -> int:
        """Tokens generated: one from prefill, then one per decode step (warmup included)."""
        return 1 + self.warmup_steps + self.decode_steps

    def compile_key(self, kind: str) -> tuple:
        """What one compile depends on; points that share it share the vmfb."""
        bucket = self.prompt_bucket if kind == "prefill" else 0
        return (
            self.model_id,
            self.variant,
            self.group_size,
            self.max_seq,
            kind,
            bucket,
            self.device,
            self.flags,
        )

    @property
    def label(self) -> str:
        return (
            f"{self.variant}/{self.device}/L{self.prompt_length}/{self.flag_set}"
            f"{'' if self.runtime == 'iree' else '/' + self.runtime}"
        )


def expand(cfg: SweepConfig, model_id: str) -> list[Point]:
    """All points of the grid, ordered device, variant, flag set, prompt length.

    That order keeps a variant's points together, and within it a runtime's, which is
    the order a benchmark actor wants them in (one weight upload per variant and
    runtime). A flag set limited to some devices makes no point on the others.
    """
    g, b = cfg.grid, cfg.bench
    points = []
    for device in g.devices:
        for variant in g.variants:
            for runtime in g.runtimes:
                # IREE flags mean nothing to XLA: its points use no flag set.
                flag_sets = g.flag_sets.items() if runtime == "iree" else [("-", FlagSet())]
                for flag_set, spec in flag_sets:
                    if not spec.applies_to(device):
                        continue
                    for length in g.prompt_lengths:
                        points.append(
                            Point(
                                model=cfg.model.name,
                                model_id=model_id,
                                variant=variant,
                                group_size=g.group_size,
                                device=device,
                                runtime=runtime,
                                prompt_length=length,
                                prompt_bucket=prompt_bucket(length, g.max_seq),
                                max_seq=g.max_seq,
                                flag_set=flag_set,
                                flags=spec.flags,
                                warmup_steps=b.warmup_steps,
                                decode_steps=b.decode_steps,
                                prefill_runs=b.prefill_runs,
                            )
                        )
    return points
