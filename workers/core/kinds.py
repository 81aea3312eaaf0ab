"""The closed sets a point and its row are made of, one `StrEnum` each.

A member is its plain string (`Status.OK == "ok"`), so Parquet, YAML and the command
line keep the strings users write, while code that names a value spells it through
the type: a typo is an `AttributeError` where it is written, not a comparison that is
silently never true.
"""

from __future__ import annotations

import enum


class Status(enum.StrEnum):
    """A row's verdict. The first two are not failures; the rest are (exit code 1)."""

    OK = "ok"
    SKIPPED = "skipped"  # nothing can run it here (no such device): not a failure
    COMPILE_ERROR = "compile_error"
    COMPILE_TIMEOUT = "compile_timeout"
    RUNTIME_ERROR = "runtime_error"
    OOM = "oom"
    BENCH_TIMEOUT = "bench_timeout"
    WRONG_OUTPUT = "wrong_output"  # measured, but the tokens differ from the reference
    WORKER_LOST = "worker_lost"


class Runtime(enum.StrEnum):
    """What runs a point: IREE (the subject), or a baseline: XLA on the same graphs, or
    llama.cpp on the same weights as a GGUF file (`workers.runtimes.llamacpp`)."""

    IREE = "iree"
    XLA = "xla"
    LLAMACPP = "llamacpp"


class Layout(enum.StrEnum):
    """How weight matrices reach the graphs: [in, out] (`x @ W`) or as the checkpoint
    stores them, [out, in] (`W . x`)."""

    IN_MAJOR = "in_major"
    OUT_MAJOR = "out_major"


class Weights(enum.StrEnum):
    """How an IREE graph holds its weights: as arguments of every call, or as parameters,
    immutable globals read from a parameter provider when the module loads
    (`workers.model.parameters`). Only a parameter can be packed once, at load, into
    the layout data tiling's micro-kernels read; an argument is packed on every call."""

    ARGUMENTS = "arguments"
    PARAMETERS = "parameters"


class Dequant(enum.StrEnum):
    """How a quantized linear's graph dequantizes (see workers/formats/)."""

    DIRECT = "direct"  # dequantize the weight, then the matmul (what the seed did)
    FACTORED = "factored"  # per-group contraction first, scale and minimum after it
    INTEGER = "integer"  # the activation quantized too: an integer dot product per block
    PER_TOKEN = "per_token"  # W8A8: int8 per channel times the activation in int8 per token


class GraphKind(enum.StrEnum):
    """A compiled graph: prefill and decode are timed; score gives the quality columns."""

    PREFILL = "prefill"
    DECODE = "decode"
    SCORE = "score"


class Attention(enum.StrEnum):
    """What decode attends over: every cache slot, or a bucket of the filled ones."""

    FULL = "full"
    FILLED = "filled"


def check(kind: type[enum.StrEnum], value: str, what: str) -> None:
    """ValueError naming `what` and the allowed values unless `value` is one of `kind`."""
    if value not in kind.__members__.values():
        raise ValueError(f"{what} {value!r}; allowed: {[member.value for member in kind]}")
