"""One benchmark worker: a device, its resident weights, and the measurement of a point.

`PointWorker` is the plain class the orchestrator wraps as a Ray actor. It builds a
variant's weights itself (from the checkpoint or the seed), so gigabytes of weights
never travel through Ray; it keeps them resident on its device across the points of
that variant, computes the XLA reference outside the timed path, and returns one
`Measurement` per point.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from workers.core.devices import DeviceSpec
from workers.core.host import HostSampler, HostWindow, niceness, set_niceness, settle
from workers.core.kinds import GraphKind, Layout, Runtime, Weights
from workers.core.threads import CoreShare
from workers.formats.variant import numpy_dtype
from workers.formats.weights import VariantWeights, prepare_variant
from workers.model.graphs import cache_shape
from workers.records import Measurement, Profile, QualityStats, timed_window
from workers.runtimes.session import PROMPT_SEED, DecodeRun, greedy_decode, prompt_ids
from workers.tasks import BenchTask, ModelSource, weights_key

if TYPE_CHECKING:
    from workers.runtimes.iree import ModuleLoad


class PointWorker:
    """One device, its runtimes (IREE; XLA and llama.cpp as baselines), one resident
    weight set."""

    def __init__(
        self,
        device: DeviceSpec,
        source: ModelSource,
        cache_dir: str | None,
        priority: int | None = None,
    ) -> None:
        """`priority`: the niceness to measure at (`bench.priority`, see `workers.core.host`), set
        before IREE makes its threads so they inherit it; None leaves the process as it is."""
        from workers.runtimes.iree import IreeRunner

        self.priority = priority
        self._prioritize()
        if device.needs_gpu:
            # JAX (the reference, the XLA baseline) shares this process and the GPU with
            # IREE: without this it would reserve 75% of the GPU's memory at its first use.
            os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        self.device = device
        self.source = source
        self.cfg = source.config()
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.iree = IreeRunner(device.driver)
        self._xla: Any = None  # an XlaRunner, made on the first XLA point
        self._llamacpp: Any = None  # a LlamaCppProcess, made on the first llama.cpp point
        self._cores: list[int] | None = None  # the running point's core share, if it has one

    @property
    def num_uploads(self) -> int:
        baselines = (self._xla, self._llamacpp)
        return self.iree.num_uploads + sum(b.num_uploads for b in baselines if b is not None)

    def info(self) -> dict[str, str]:
        return {"hostname": socket.gethostname(), "device_name": device_name(self.device)}

    def run(
        self,
        task: BenchTask,
        prefill_vmfb: bytes | None = None,
        decode_vmfb: bytes | None = None,
        score_vmfb: bytes | None = None,
        share: CoreShare | None = None,
    ) -> Measurement:
        """The vmfbs are the task's compiles in order (`BenchTask.compiles`): prefill,
        decode and score, or one module that is all three. `share`: the cores of a GPU
        point timed beside others (`workers.core.threads`)."""
        from workers.core.threads import cores_for, pinned

        if task.one_module and task.runtime == Runtime.IREE:
            decode_vmfb = prefill_vmfb
            score_vmfb = prefill_vmfb if task.quality is not None else None

        # the cores whose load the row reports (workers.core.host): its share's, or the host's
        self._cores = cores_for(task.threads, share) if share is not None else None
        with pinned(task.threads, share) as num_threads:
            if task.runtime == Runtime.IREE:
                self.iree.use_threads(task.threads)
            measurement = self._run(task, prefill_vmfb, decode_vmfb, score_vmfb)
        return dataclasses.replace(measurement, threads=num_threads)

    def _run(
        self,
        task: BenchTask,
        prefill_vmfb: bytes | None,
        decode_vmfb: bytes | None,
        score_vmfb: bytes | None,
    ) -> Measurement:
        from workers.measure.quality import FP32, quality
        from workers.measure.reference import GreedyRun, num_matching, reference_tokens

        if task.runtime == Runtime.LLAMACPP:
            return self._run_llamacpp(task)
        started_at = time.time()
        self._prioritize()  # again: a thread made since then by one not yet set
        upload_s, vw = self._ensure_weights(task)
        prompts = self._prompts(task)  # [batch, prompt + depth]
        num_tokens = task.steps.num_tokens
        runs = [GreedyRun(p, task.prompt_bucket, task.max_seq, num_tokens) for p in prompts]
        references = [
            reference_tokens(
                self.cfg, vw, run, weights_id=task.weights_id, cache_dir=self.cache_dir
            )
            for run in runs
        ]
        agreement = quality(
            self.cfg,
            vw,
            runs[0],
            fp32_weights=lambda: self.source.variant(FP32),
            weights_id=task.weights_id,
            cache_dir=self.cache_dir,
        )
        run, xla_compile_s, window, load = self._decode(task, prompts, prefill_vmfb, decode_vmfb)
        sequences = [run.tokens[b * num_tokens : (b + 1) * num_tokens] for b in range(task.batch)]
        profile = prefill_profile = None
        if task.profile_calls and task.runtime == Runtime.IREE:
            assert decode_vmfb is not None and prefill_vmfb is not None
            values = {"token": run.tokens[0], "pos": task.prompt_length}
            profile = self._profile(task, vw, decode_vmfb, GraphKind.DECODE, values)
            prefill_profile = self._profile(
                task, vw, prefill_vmfb, GraphKind.PREFILL, {"real_len": task.prompt_length}
            )
        # After the timed phase, never inside it: the quality columns (ppl, KLD).
        stats = self._quality(task, vw, score_vmfb) if task.quality is not None else None
        # A step reads the weights once for the whole batch, and each sequence's cache.
        bytes_per_step = vw.nbytes + task.batch * self._cache_bytes(task)
        return Measurement(
            prefill_samples_ms=run.prefill_samples_ms,
            decode_samples_ms=run.decode_samples_ms,
            prompt_ids=tuple(int(t) for t in prompts.reshape(-1)),
            tokens=run.tokens,
            reference_tokens=tuple(t for ref in references for t in ref),
            num_tokens_matched=sum(map(num_matching, sequences, references)),
            bench_s=run.bench_s,
            upload_s=upload_s,
            weight_bytes=vw.nbytes,
            quant_error=vw.quant_error,
            fp32_agreement=agreement.fp32_agreement,
            fp32_logit_error=agreement.fp32_logit_error,
            quality=stats,
            bytes_per_token=bytes_per_step // task.batch,
            peak_gbps=self.device.peak_gbps or self.iree.copy_gbps(bytes_per_step),
            xla_compile_s=xla_compile_s,
            load_s=load.load_s if load else None,
            load_bytes=load.load_bytes if load and self.iree.shares_host_memory else None,
            num_uploads=self.num_uploads,
            started_at=started_at,
            finished_at=time.time(),
            **timed_window(window),
            niceness=niceness(),
            profile=profile,
            prefill_profile=prefill_profile,
            batch=task.batch,
            output_text=self._detokenize(sequences[0]) if task.prompt_text else None,
            **self.info(),
        )

    def _run_llamacpp(self, task: BenchTask) -> Measurement:
        """A llama.cpp point: the variant's GGUF file (`workers.runtimes.llamacpp.model_file`), the
        same prompt and decode loop.

        Its tokens are checked against the same bits through our XLA graph: the GGUF file
        llama.cpp ran, dequantized to float32 by our reader (`_same_bits_reference`), so
        a wrong token means llama.cpp computed something else, not that its quantizer
        differs from ours. How far those bits are from the model is the quality side:
        `fp32_agreement` and `fp32_logit_error` from llama.cpp's own logits, teacher-forced
        on fp32's tokens, and the ppl / KLD columns with a text."""
        from workers.measure.quality import FP32, fp32_side
        from workers.measure.reference import GreedyRun, num_matching
        from workers.records import NotRunnable
        from workers.runtimes.llamacpp import model_file

        if task.batch != 1 or task.steps.steps_per_call != 1 or task.depth:
            raise NotRunnable(
                "llama.cpp points decode one sequence from its prompt, one token per call: "
                f"batch {task.batch}, depth {task.depth}, steps_per_call "
                f"{task.steps.steps_per_call} (use batch_sizes=[1], depths=[0], steps_per_call=1)"
            )
        started_at = time.time()
        self._prioritize()
        proc = self._ensure_llamacpp()
        path, kind = model_file(
            self.source,
            task.variant,
            task.weights_id,
            self.cache_dir,
            quantizer=lambda *args: proc.call("quantize", *args),
        )
        key = f"{weights_key(task.weights_id, task.variant, task.layout)}/{path.name}"
        upload_s = proc.call("load", key, path, task.llamacpp)
        prompt = self._prompts(task)[0]
        run = GreedyRun(prompt, task.prompt_bucket, task.max_seq, task.steps.num_tokens)
        fp32 = lambda: self.source.variant(FP32)  # noqa: E731
        fp32_tokens, fp32_first = fp32_side(self.cfg, run, fp32, task.weights_id, self.cache_dir)
        reference = self._same_bits_reference(path, run)
        n_ctx = max(task.max_seq, task.quality.ctx if task.quality else 0)
        decoded, window, counters_ms = proc.call(
            "decode", n_ctx, prompt, task.prompt_bucket, task.steps
        )
        # After the timed phase: fp32 agreement, teacher-forced on fp32's tokens.
        fed = np.concatenate([prompt, np.asarray(fp32_tokens[:-1], np.int32)])
        logits = proc.call("logits", fed, slice(len(prompt) - 1, None))
        first_error = np.linalg.norm(logits[0] - fp32_first) / np.linalg.norm(fp32_first)
        stats = None
        if task.quality is not None:
            from workers.measure.perplexity import base_logprobs, quality_stats

            base = base_logprobs(
                self.cfg, task.quality, fp32, weights_id=task.weights_id, cache_dir=self.cache_dir
            )
            stats = quality_stats(task.quality, lambda window: proc.call("score", window), base)
        weight_bytes = path.stat().st_size
        # llama.cpp's KV cache is float16 by default.
        cache_bytes = 2 * math.prod(cache_shape(self.cfg, task.max_seq)) * 2
        return Measurement(
            prefill_samples_ms=decoded.prefill_samples_ms,
            decode_samples_ms=decoded.decode_samples_ms,
            prompt_ids=tuple(int(t) for t in prompt),
            tokens=decoded.tokens,
            reference_tokens=reference,
            num_tokens_matched=num_matching(decoded.tokens, reference),
            bench_s=decoded.bench_s,
            upload_s=upload_s,
            weight_bytes=weight_bytes,
            quant_error=None,
            fp32_agreement=float(np.mean(logits.argmax(axis=-1) == np.asarray(fp32_tokens))),
            fp32_logit_error=float(first_error),
            quality=stats,
            bytes_per_token=weight_bytes + cache_bytes,
            peak_gbps=self.device.peak_gbps or self.iree.copy_gbps(weight_bytes + cache_bytes),
            num_uploads=self.num_uploads,
            started_at=started_at,
            finished_at=time.time(),
            **timed_window(window),
            niceness=niceness(),
            output_text=self._detokenize(decoded.tokens) if task.prompt_text else None,
            llamacpp_type=kind,
            **proc.call("settings"),
            runtime_decode_ms=counters_ms,
            **self.info(),
        )

    def _same_bits_reference(self, path: Path, run: Any) -> tuple[int, ...]:
        """Greedy tokens of the GGUF file's own weights (dequantized to float32 by
        `workers.checkpoints.gguf`) through the XLA graph; cached by the file's content."""
        from workers.checkpoints.gguf import lazy_gguf
        from workers.checkpoints.source import fingerprint
        from workers.measure.quality import FP32
        from workers.measure.reference import reference_tokens

        tensors = lambda: lazy_gguf(path, cfg=self.cfg)  # noqa: E731
        return reference_tokens(
            self.cfg,
            lambda: prepare_variant(tensors(), self.cfg, FP32, Layout.IN_MAJOR, consume=True),
            run,
            weights_id=fingerprint(path, self.cache_dir),
            cache_dir=self.cache_dir,
            variant=FP32,
            layout=Layout.IN_MAJOR,
        )

    def _ensure_llamacpp(self) -> Any:
        """llama.cpp's process (`workers.runtimes.llamacpp_process`). The other runtimes' weights
        stay: a crash there costs its point, not what this actor holds."""
        from workers.runtimes.llamacpp_process import LlamaCppProcess

        self._llamacpp = self._llamacpp or LlamaCppProcess()
        return self._llamacpp

    def _prompts(self, task: BenchTask) -> np.ndarray:
        """The batch's prompts [batch, prompt + depth]: the text's tokens, or seeded ids
        (one seed per sequence, the first one's as without a batch)."""
        length = task.prompt_length + task.depth
        if task.prompt_text is not None:
            ids = self._tokenizer().encode(task.prompt_text).ids
            if len(ids) != length:
                raise ValueError(f"the prompt has {len(ids)} tokens, the point expects {length}")
            return np.tile(np.asarray(ids, np.int32), (task.batch, 1))
        seqs = [prompt_ids(self.cfg.vocab_size, length, PROMPT_SEED + b) for b in range(task.batch)]
        return np.stack(seqs)

    def _tokenizer(self) -> Any:
        from workers.checkpoints.tokenizers import load_tokenizer

        assert self.source.path, "a text prompt needs a checkpoint"
        return load_tokenizer(self.source.path)

    def _detokenize(self, tokens: tuple[int, ...]) -> str:
        return self._tokenizer().decode(list(tokens))

    def _decode(
        self, task: BenchTask, prompts: Any, prefill_vmfb: bytes | None, decode_vmfb: bytes | None
    ) -> tuple[DecodeRun, float | None, HostWindow, ModuleLoad | None]:
        """The timed loop on the task's runtime, with how busy the rest of the host was
        meanwhile (`workers.core.host`); XLA also reports its compile seconds, IREE what
        loading its modules cost."""
        compile_s, load = None, None
        if task.runtime == Runtime.XLA:
            prefill, decode = (
                task.graph(self.cfg, GraphKind.PREFILL),
                task.graph(self.cfg, GraphKind.DECODE),
            )
            session = self._xla.session(prefill, decode)
            compile_s = session.compile_s
        else:
            assert prefill_vmfb is not None and decode_vmfb is not None, "IREE needs both vmfbs"
            session = self.iree.session(
                prefill_vmfb,
                decode_vmfb,
                task.steps.steps_per_call,
                parameters=task.weights == Weights.PARAMETERS,
            )
            load = session.load
        if self._cores is None:  # alone on its host: first the host quiet (host.settle);
            settle()  # a GPU point on a core share runs beside others by design
        with HostSampler(self._cores) as host:
            run = greedy_decode(session, prompts, task.prompt_bucket, task.steps, host)
        return run, compile_s, host.window, load

    def _prioritize(self) -> None:
        """Every thread at `self.priority`; where the host refuses, the point runs at the
        niceness it has and its row records that (`niceness`; the summary says why)."""
        if self.priority is not None:
            set_niceness(self.priority)

    def _quality(
        self, task: BenchTask, vw: VariantWeights, score_vmfb: bytes | None
    ) -> QualityStats:
        """ppl, KLD and top-1 agreement of the point's configuration on the text windows:
        its own compiled score graph (IREE) or the same graph through XLA, against fp32's
        log-probabilities (computed once per weights and text, cached)."""
        from workers.measure.perplexity import FP32_VARIANT, base_logprobs, quality_stats

        spec = task.quality
        assert spec is not None
        base = base_logprobs(
            self.cfg,
            spec,
            lambda: self.source.variant(FP32_VARIANT),
            weights_id=task.weights_id,
            cache_dir=self.cache_dir,
        )
        if task.runtime == Runtime.XLA:
            from workers.measure.perplexity import xla_scorer

            return quality_stats(spec, xla_scorer(self.cfg, vw, spec.ctx, self._xla.device), base)
        assert score_vmfb is not None, "an IREE point with a text needs its score graph"
        parameters = task.weights == Weights.PARAMETERS
        return quality_stats(spec, self.iree.score_call(score_vmfb, parameters), base)

    def _profile(
        self,
        task: BenchTask,
        vw: VariantWeights,
        vmfb: bytes,
        kind: GraphKind,
        values: dict[str, int],
    ) -> Profile:
        """IREE's per-dispatch profile of one of the point's graphs, after its timed steps:
        `task.profile_calls` decode calls, or up to `PREFILL_CALLS` of prefill."""
        from workers.measure.profile import PREFILL_CALLS, profile_graph

        calls = task.profile_calls
        inputs_dir = (self.cache_dir or Path(tempfile.gettempdir())) / "profile-inputs"
        return profile_graph(
            vmfb,
            task.graph(self.cfg, kind),
            vw,
            self.device.driver,
            weights_key=weights_key(task.weights_id, task.variant, task.layout),
            values=values,
            num_calls=calls if kind == GraphKind.DECODE else min(calls, PREFILL_CALLS),
            inputs_dir=inputs_dir,
            num_threads=task.threads if self.device.driver == "local-task" else 0,
        )

    def _ensure_weights(self, task: BenchTask) -> tuple[float, VariantWeights]:
        """Makes the task's variant resident in its runtime, freeing the other runtime's."""
        key = weights_key(task.weights_id, task.variant, task.layout)
        make = lambda: self.source.variant(task.variant, task.layout)  # noqa: E731
        if self._llamacpp is not None:
            self._llamacpp.close()  # its process ends: the memory goes back
        if task.runtime == Runtime.XLA:
            from workers.runtimes.xla import XlaRunner

            self.iree.release()
            self._xla = self._xla or XlaRunner(self.device.driver)
            upload_s = self._xla.ensure_weights(key, make)
            vw = self._xla.resident_variant
        else:
            if self._xla is not None:
                self._xla.release()
            upload_s = self.iree.ensure_weights(key, make)
            vw = self.iree.resident_variant
        assert vw is not None
        return upload_s, vw

    def _cache_bytes(self, task: BenchTask) -> int:
        """One sequence's K and V caches as a step reads them: the slots it attends over
        (the whole capacity, or the span of the filled part)."""
        num_elements = math.prod(cache_shape(self.cfg, task.attention_span or task.max_seq))
        return 2 * num_elements * numpy_dtype(task.variant.dtype).itemsize


def device_name(device: DeviceSpec) -> str:
    """A human name for the device: the GPU's name from nvidia-smi, or the CPU model."""
    import subprocess

    if device.driver == "cuda":
        try:
            out = (
                subprocess.run(
                    ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                    check=True,
                )
                .stdout.strip()
                .splitlines()
            )
            return out[0] if out else "cuda"
        except (OSError, subprocess.SubprocessError):
            return "cuda"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return device.name
