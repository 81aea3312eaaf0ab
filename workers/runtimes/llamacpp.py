"""llama.cpp as a runtime beside IREE and XLA, through the `llama-cpp-python` bindings.

A user asking "how fast can this model decode on this CPU" compares against llama.cpp
first, so a llamacpp point runs the same protocol as every other point: the same
prompt token ids, `workers.runtimes.session.greedy_decode` (prefill timed to its first token,
warm-up steps, then one timing per decode token), in the same benchmark actor under
the same host lock. Only the model file differs: llama.cpp runs GGUF.

Which file (`model_file`): the variant's nearest llama.cpp type (`Variant.llamacpp_type`:
F32, BF16, Q8_0 for 8-bit, Q4_1 for our asymmetric 4-bit; Q4_0 would be a symmetric
one, which no variant here is; the `gguf` variant: the file itself, its mix of types).
A GGUF checkpoint whose per-layer linears already
hold that type is used as it is: the very bits llama.cpp users run. Otherwise the
checkpoint's (or the seed's) float32 weights are written as an F32 GGUF
(`workers.checkpoints.gguf.write_gguf`) and quantized by llama.cpp's own quantizer
(`llama_model_quantize`, its default tensor mix for that type). Written files are
cached by the weights' content id, the type and the bindings' version.

llama.cpp's own switches are data (`LlamaCppSettings`, config `llamacpp.*`, recorded on
each row): its extra buffer types (`use_extra_bufts`: weights repacked at load into
the interleaved layouts its AVX2 / AVX-512 kernels read, and on CPUs with AMX the AMX
buffers), flash attention, and the micro-batch of a prefill (`n_ubatch`). The default
`extra_bufts: auto` turns the extra buffer types off on a CPU with AMX, where
llama-cpp-python 0.3.36's AMX path segfaults in `ggml_backend_amx_mul_mat` on Q4_1 and
Q8_0 models (benchmarks/repro/llamacpp_amx.py), and on everywhere else.

llama.cpp runs in a child process of the benchmark actor
(`workers.runtimes.llamacpp_process`): a native crash there costs its point, which is recorded
as `runtime_error` naming the signal and the function, and never the actor with the
IREE weights it holds.

The bindings are an optional extra (`pip install -e ".[llamacpp]"`, a from-source
build of llama.cpp): without them a llamacpp point raises `NotRunnable`, which
the sweep records as `skipped` with the install command.

Time per token here is llama.cpp's `llama_decode` of one token plus reading its
logits and the argmax on the host (what llama.cpp's own greedy sampler does);
llama.cpp's performance counters (`llama_perf_context`) time only the first part,
and the row keeps both (`runtime_decode_ms`).
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from workers.formats.variant import Variant
from workers.records import NotRunnable
from workers.tasks import LlamaCppSettings

INSTALL = 'pip install -e ".[llamacpp]"'


def ftype(kind: str) -> int:
    """llama.cpp's `llama_ftype` for a type name (`Q4_1`, `Q4_K_M`), from the gguf
    package's copy of the enum: what llama.cpp's quantizer writes (a K-quant `_M` is its
    mix of types)."""
    from gguf import LlamaFileType

    try:
        return LlamaFileType[("ALL_" if kind == "F32" else "MOSTLY_") + kind].value
    except KeyError:
        raise ValueError(f"no llama.cpp file type {kind!r}") from None


def set_fields(params: Any, **values: Any) -> Any:
    """Sets fields of a llama.cpp parameter struct; a name the bindings do not have is an
    error (a ctypes Structure would take it as a plain attribute and ignore it)."""
    known = {name for name, *_ in type(params)._fields_}
    unknown = sorted(set(values) - known)
    if unknown:
        raise RuntimeError(f"llama-cpp-python's {type(params).__name__} has no {unknown}")
    for name, value in values.items():
        setattr(params, name, value)
    return params


def bindings() -> Any:
    """The `llama_cpp` module, or `NotRunnable` naming the install command."""
    try:
        import llama_cpp
    except ImportError as e:
        raise NotRunnable(
            f"llama-cpp-python is not installed on {socket.gethostname()} ({e}); install "
            f"the llamacpp extra: {INSTALL}"
        ) from None
    return llama_cpp


def _initialized() -> Any:
    """The bindings with llama.cpp's backend initialized and its log silenced (it logs
    every tensor as it loads), once per process. The log callback lives as long as the
    process: llama.cpp keeps calling it, from any later model or quantizer."""
    llama_cpp = bindings()
    if not _QUIET:
        _QUIET.append(llama_cpp.llama_log_callback(lambda level, text, data: None))
        llama_cpp.llama_log_set(_QUIET[0], ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
    return llama_cpp


_QUIET: list[Any] = []  # the log callback, referenced for the life of the process


def model_file(
    source: Any,
    variant: Variant,
    weights_id: str,
    cache_dir: Path | None,
    quantizer: Callable[[Path, Path, str], None] | None = None,
) -> tuple[Path, str]:
    """The GGUF file a llamacpp point of `variant` runs, and its llama.cpp type; a file
    to be made is quantized by `quantizer` (default: `quantize`, in this process)."""
    from workers.checkpoints.gguf import find_gguf, tensor_types

    kind = variant.llamacpp_type
    own = find_gguf(source.path) if source.path else None
    if variant.as_stored:  # the gguf variant: the very file, whatever its mix of types
        assert own is not None, "the gguf variant's file was checked in the driver"
        return own, kind
    if own is not None and set(tensor_types(own)) == {kind}:
        return own, kind
    folder = (cache_dir or Path(os.environ.get("TMPDIR", "/tmp"))) / "llamacpp"
    version = bindings().__version__
    path = folder / f"{weights_id}-{kind}-llamacpp{version}.gguf"
    if path.exists():
        return path, kind
    f32 = folder / f"{weights_id}-F32.gguf"
    if not f32.exists():
        _write_f32(source, f32)
    if kind != "F32":
        (quantizer or quantize)(f32, path, kind)
    return (f32 if kind == "F32" else path), kind


def _write_f32(source: Any, path: Path) -> None:
    from workers.checkpoints.gguf import write_gguf

    path.parent.mkdir(parents=True, exist_ok=True)
    write_gguf(path, source.config(), source.tensors())


def quantize(src: Path, dst: Path, kind: str) -> None:
    """llama.cpp's quantizer (its default tensor mix for the type), into a temporary
    name renamed when done, so an interrupted run leaves no half-written model."""
    llama_cpp = _initialized()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype(kind)
    params.nthread = len(os.sched_getaffinity(0))
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        code = llama_cpp.llama_model_quantize(
            str(src).encode(), str(tmp).encode(), ctypes.byref(params)
        )
        if code != 0:
            raise RuntimeError(f"llama_model_quantize {src} -> {kind} failed (code {code})")
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)


def model_params(lib: Any, settings: LlamaCppSettings) -> Any:
    """llama_model_params for `settings`: the whole model read into memory (no mmap), as
    the other runtimes' weights are resident."""
    return set_fields(
        lib.llama_model_default_params(),
        load_mode=lib.LLAMA_LOAD_MODE_NONE,
        use_extra_bufts=settings.use_extra_bufts(),
    )


def context_params(lib: Any, settings: LlamaCppSettings, n_ctx: int, threads: int) -> Any:
    """llama_context_params: `n_ctx` tokens, a batch as large (a prompt or a quality window
    in one call), evaluated `n_ubatch` tokens at a time."""
    flash = {
        "auto": lib.LLAMA_FLASH_ATTN_TYPE_AUTO,
        "on": lib.LLAMA_FLASH_ATTN_TYPE_ENABLED,
        "off": lib.LLAMA_FLASH_ATTN_TYPE_DISABLED,
    }[settings.flash_attn]
    return set_fields(
        lib.llama_context_default_params(),
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_ubatch=min(settings.n_ubatch, n_ctx),
        n_threads=threads,
        n_threads_batch=threads,
        flash_attn_type=flash,
        no_perf=False,
    )


@dataclasses.dataclass(frozen=True)
class Counters:
    """llama.cpp's own decode time (`llama_perf_context`): eval ms over eval tokens."""

    eval_ms: float
    num_eval: int

    def since(self, start: Counters) -> float | None:
        """ms per token between two readings; None when no token was decoded."""
        n = self.num_eval - start.num_eval
        return (self.eval_ms - start.eval_ms) / n if n > 0 else None


class LlamaCppRunner:
    """One llama.cpp model resident in its process, and a context (KV cache) per shape."""

    def __init__(self) -> None:
        self.lib = _initialized()
        self.settings = LlamaCppSettings()
        self._model: Any = None
        self._ctx: Any = None
        self._ctx_shape: tuple[int, int] | None = None
        self._key: str | None = None
        self.num_uploads = 0
        self.threads = 0
        self.vocab_size = 0

    def ensure_model(self, key: str, path: Path, settings: LlamaCppSettings) -> float:
        """Loads the model unless `key` is resident with `settings`; returns the seconds it
        took."""
        if key == self._key and settings == self.settings:
            return 0.0
        self.release()
        start = time.perf_counter()
        params = model_params(self.lib, settings)
        model = self.lib.llama_model_load_from_file(str(path).encode(), params)
        if not model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self._model, self._key, self.settings = model, key, settings
        self.vocab_size = self.lib.llama_vocab_n_tokens(self.lib.llama_model_get_vocab(model))
        self.num_uploads += 1
        return time.perf_counter() - start

    def context(self, n_ctx: int, threads: int) -> Any:
        """A context holding `n_ctx` tokens with a batch as large (a prompt or a quality
        window in one call), made again only when the shape changes."""
        if self._ctx_shape != (n_ctx, threads):
            self._free_context()
            params = context_params(self.lib, self.settings, n_ctx, threads)
            ctx = self.lib.llama_init_from_model(self._model, params)
            if not ctx:
                raise RuntimeError(f"llama.cpp could not make a context of {n_ctx} tokens")
            self._ctx, self._ctx_shape, self.threads = ctx, (n_ctx, threads), threads
        return self._ctx

    def release(self) -> None:
        self._free_context()
        if self._model is not None:
            self.lib.llama_model_free(self._model)
        self._model, self._key = None, None

    def _free_context(self) -> None:
        if self._ctx is not None:
            self.lib.llama_free(self._ctx)
        self._ctx, self._ctx_shape = None, None

    def counters(self) -> Counters:
        data = self.lib.llama_perf_context(self._ctx)
        return Counters(float(data.t_eval_ms), int(data.n_eval))

    def clear(self) -> None:
        """Empties the KV cache: the next decode starts at position 0."""
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self._ctx), True)

    def eval(self, tokens: np.ndarray, outputs: slice | None = None) -> np.ndarray:
        """Feeds `tokens` after what the cache holds; returns the logits of the positions in
        `outputs` (default: the last) as [n, vocab] float32."""
        n = len(tokens)
        wanted = np.zeros(n, bool)
        wanted[outputs if outputs is not None else slice(n - 1, n)] = True
        batch = self.lib.llama_batch_init(n, 0, 1)
        try:
            start = self._cache_length()
            for i, token in enumerate(tokens):
                batch.token[i] = int(token)
                batch.pos[i] = start + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = bool(wanted[i])
            batch.n_tokens = n
            self._decode(batch)
        finally:
            self.lib.llama_batch_free(batch)
        count = int(wanted.sum())
        logits = self.lib.llama_get_logits(self._ctx)
        return np.ctypeslib.as_array(logits, shape=(count, self.vocab_size)).copy()

    def _cache_length(self) -> int:
        mem = self.lib.llama_get_memory(self._ctx)
        return int(self.lib.llama_memory_seq_pos_max(mem, 0)) + 1

    def _decode(self, batch: Any) -> None:
        code = self.lib.llama_decode(self._ctx, batch)
        if code != 0:
            raise RuntimeError(f"llama_decode failed (code {code})")

    def session(self, warmup_calls: int) -> LlamaCppSession:
        return LlamaCppSession(self, warmup_calls)

    def scorer(self) -> Callable[[np.ndarray], np.ndarray]:
        """A quality window's tokens in, the logits of its scored positions out (the
        second half but the last, as `workers.measure.perplexity` scores them)."""

        def chunk_logits(window: np.ndarray) -> np.ndarray:
            self.clear()
            ctx = len(window)
            return self.eval(window, slice(ctx // 2, ctx - 1))

        return chunk_logits


class LlamaCppSession:
    """`workers.runtimes.session.Session` on llama.cpp: one sequence, its KV cache in the context.

    A call feeds tokens with `llama_decode` and returns the argmax of the last logits
    (a Python int: already on the host, so `read_tokens` only wraps it). Before the
    first timed decode call (after `warmup_calls`), llama.cpp's counters are read, so
    `decode_counters_ms` covers exactly the timed steps.
    """

    def __init__(self, runner: LlamaCppRunner, warmup_calls: int) -> None:
        self.runner, self.lib = runner, runner.lib
        self._warmup_calls, self._calls = warmup_calls, 0
        self._start: Counters | None = None
        self._one = (ctypes.c_int32 * 1)()

    def prompt_inputs(self, padded: np.ndarray, length: int) -> tuple[Any, ...]:
        if padded.ndim != 1:
            raise ValueError("llama.cpp points decode one sequence (batch 1)")
        return (np.ascontiguousarray(padded[:length], np.int32),)

    def position(self, pos: int) -> int:
        return pos

    def prefill_call(self) -> Callable[..., tuple[int, None]]:
        self.runner.clear()  # before the clock: each prefill starts from an empty cache

        def call(prompt: np.ndarray) -> tuple[int, None]:
            tokens = prompt.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
            self._decode(self.lib.llama_batch_get_one(tokens, len(prompt)))
            return self._argmax(), None

        return call

    def decode_call(self) -> Callable[..., tuple[int, int, None]]:
        if self._calls == self._warmup_calls:
            self._start = self.runner.counters()
        self._calls += 1

        def call(token: int, pos: int, caches: None) -> tuple[int, int, None]:
            self._one[0] = token
            self._decode(self.lib.llama_batch_get_one(self._one, 1))
            nxt = self._argmax()
            return nxt, nxt, None

        return call

    def read_tokens(self, token: int) -> tuple[int, ...]:
        return (token,)

    def decode_counters_ms(self) -> float | None:
        """llama.cpp's own ms per timed decode token, from its performance counters."""
        return self.runner.counters().since(self._start) if self._start is not None else None

    def _decode(self, batch: Any) -> None:
        self.runner._decode(batch)

    def _argmax(self) -> int:
        logits = self.lib.llama_get_logits_ith(self.runner._ctx, -1)
        return int(np.ctypeslib.as_array(logits, shape=(self.runner.vocab_size,)).argmax())
