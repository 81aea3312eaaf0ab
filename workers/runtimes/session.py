"""One greedy decode loop for every back end: IREE (measured), XLA (the baseline and the reference).

The measurement protocol is written here once. A back end is a `Session`: one
prefill and decode graph pair on a device, with the variant's weights resident. The
back ends differ only in how a call is prepared (before the clock: the argument
list holding the resident weights), how it is made, and how its token is read back
(the 4-byte readback that is each step's synchronisation point). The argmax runs
in the graph and the KV cache stays on the device from step to step.

Protocol: `prefill_runs` prefills of the prompt, each timed from the call to the
first token's readback (time to first token: the median is reported); then
`warmup_steps` untimed and `decode_steps` timed decode steps, each timed from the
call to its token's readback. Each step feeds its caches to the next, as a real
decode does, and the caches of a step are freed inside the next step's timed
region, as a real decode loop frees them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from workers.core.host import HostSampler

PROMPT_SEED = 1234

Call = Callable[..., tuple[Any, Any]]  # (inputs...) -> (token on the device, caches)


def prompt_ids(vocab_size: int, length: int, seed: int = PROMPT_SEED) -> np.ndarray:
    """L token ids from a seeded generator: every host builds the same prompt."""
    rng = np.random.Generator(np.random.PCG64([seed, length]))
    return rng.integers(0, vocab_size, size=length, dtype=np.int64).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class DecodeSteps:
    """How many of each call one point makes (see the module docstring)."""

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


@dataclasses.dataclass(frozen=True)
class DecodeRun:
    """What the loop measured: timings and the greedy tokens."""

    prefill_samples_ms: tuple[float, ...]
    decode_samples_ms: tuple[float, ...]  # ms per step of each timed call (call time / steps)
    tokens: tuple[int, ...]  # per sequence: the first from prefill, then one per decode step
    bench_s: float  # wall seconds of the whole loop: prefill runs, warmup and timed steps
    batch: int = 1  # sequences: `tokens` holds each one's tokens in turn


class Session(Protocol):
    """What the loop asks of a back end; everything else is the same for all of them."""

    def prompt_inputs(self, padded: np.ndarray, length: int) -> tuple[Any, ...]:
        """The prefill graph's inputs on the device: the padded prompt and its real length."""
        ...

    def position(self, pos: int) -> Any:
        """A decode step's position on the device."""
        ...

    def prefill_call(self) -> Call:
        """A ready call of the prefill graph, made before the clock starts."""
        ...

    def decode_call(self) -> Call:
        """A ready call of the decode graph: (token, pos, caches) -> (tokens, last token,
        caches); with one step per call, tokens and last token are the same."""
        ...

    def read_tokens(self, tokens: Any) -> tuple[int, ...]:
        """The readback of a call's tokens (4 bytes each): waits for the call."""
        ...


def greedy_decode(
    session: Session,
    prompt: np.ndarray,
    bucket: int,
    steps: DecodeSteps,
    host: HostSampler | None = None,
) -> DecodeRun:
    """Prefill `prompt` ([L], or [B, L] for a batch of B sequences of one length), padded to
    `bucket`, then decode greedily; see the module docstring. Tokens come back sequence by
    sequence: each sequence's first token (from prefill), then its decode steps. `host`,
    the sampler around the call, is paused over the untimed warm-up calls."""
    prompts = np.atleast_2d(prompt).astype(np.int32)
    batch, length = prompts.shape
    per_call = steps.steps_per_call
    padded = np.zeros((batch, bucket), np.int32)
    padded[:, :length] = prompts
    inputs = session.prompt_inputs(padded if batch > 1 else padded[0], length)
    bench_start = time.perf_counter()
    prefill_ms: list[float] = []
    for _ in range(max(1, steps.prefill_runs)):
        call = session.prefill_call()
        start = time.perf_counter_ns()
        token, caches = call(*inputs)
        first = session.read_tokens(token)
        prefill_ms.append((time.perf_counter_ns() - start) / 1e6)
    sequences = [[t] for t in first]
    num_calls, warmup_calls = steps.warmup_calls + steps.decode_calls, steps.warmup_calls
    positions = [session.position(length + i * per_call) for i in range(num_calls)]
    samples = []
    with host.paused() if host and warmup_calls else contextlib.nullcontext():
        for pos in positions[:warmup_calls]:
            token, caches = _decode_step(session, sequences, token, pos, caches, per_call)
    for pos in positions[warmup_calls:]:
        call = session.decode_call()
        start = time.perf_counter_ns()
        tokens, token, caches = call(token, pos, caches)
        values = session.read_tokens(tokens)  # [batch, per_call], row-major
        samples.append((time.perf_counter_ns() - start) / 1e6 / per_call)
        _extend(sequences, values, per_call)
    return DecodeRun(
        prefill_samples_ms=tuple(prefill_ms),
        decode_samples_ms=tuple(samples),
        tokens=tuple(t for sequence in sequences for t in sequence),
        bench_s=time.perf_counter() - bench_start,
        batch=batch,
    )


def _decode_step(
    session: Session, sequences: list[list[int]], token: Any, pos: Any, caches: Any, per_call: int
) -> tuple[Any, Any]:
    """One untimed decode call: its tokens appended to `sequences`."""
    tokens, token, caches = session.decode_call()(token, pos, caches)
    _extend(sequences, session.read_tokens(tokens), per_call)
    return token, caches


def _extend(sequences: list[list[int]], values: list[int], per_call: int) -> None:
    """Each sequence's `per_call` tokens from a call's row-major [batch, per_call] values."""
    for b, sequence in enumerate(sequences):
        sequence += values[b * per_call : (b + 1) * per_call]
