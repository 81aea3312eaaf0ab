"""Fidelity: the decode ms/token our benchmark actor reports against IREE's `iree-benchmark-module`.

Why: a sweep's numbers are only worth the harness that takes them. IREE ships a C++
benchmark tool; if the actor that measures a sweep point reports a decode step slower
(or faster) than that tool on the same vmfb and inputs, the difference is the
harness (argument lists, readback, Ray, the process it runs in), not the compiler.
The target: ours / theirs in [0.97, 1.03]. The report's `ratio` holds it per variant.

What "ours" is (`--via`):
- actor (default): the sweep's own benchmark actor, `sweep.execute.cluster.BenchActorImpl`,
  started on a local Ray as the scheduler starts it (same runtime env, so the same
  huge pages; same resources). Each measurement is one `run` call, the call a sweep
  point makes, and its figure is the median of the decode samples that call returns:
  the `decode_ms_p50` a sweep row stores.
- worker: the same `PointWorker` in this process, for a machine without Ray.
- runner: the bare `BenchmarkRunner`, to tell the runner's overhead from the actor's.

What makes the two sides comparable:
- The same vmfb: the graphs are exported and compiled once per variant through the
  project's content-addressed compile cache (or taken from `--vmfbs`); the tool loads
  that very decode vmfb.
- The same inputs: every decode argument (the weights in `VariantWeights` order, then
  token, pos, kcache, vcache) is written once per variant to .npy files that the tool
  reads with `--input=@file.npy`. The weights are rebuilt here from the same seed, so
  they are the bytes the actor holds. The token is our first run's first token and
  pos the prompt length; the caches are zeros, not the state after prefill. That does
  not change the timing: the decode graph is static-shaped, attends over all `max_seq`
  slots under a mask and has no data-dependent control flow, so it does the same work
  whatever the values are, and zeros are not denormals.
- The same threads: IREE's default task topology on both sides (recorded), or
  `--task-workers` on both.
- The same memory: transparent huge pages change CPU decode speed by 10-30%. The actor
  runs with `sweep.execute.cluster.BENCH_ENV`; `--thp on` (default) gives this process and the
  tool the same glibc tunable, and `--thp off` turns huge pages off for both (the
  actor always has them, as in a sweep).
- The same statistic: ours is the median of N timed steps after W warmup steps, each
  step bracketing the call and the 4-byte token readback; theirs is the median of N
  repetitions of one call each (`--benchmark_min_time=1x --benchmark_repetitions=N`),
  after one warmup call when W > 0.
- Interleaved rounds on quiet cpus: the machine may be shared, and a compile running
  beside a 2-worker benchmark can make a step several times slower. So R rounds
  alternate the two sides (ours first in even rounds, theirs first in odd ones); each
  measurement first waits (up to --quiet-wait-s) until other processes use under 10%
  of the cpus, records how much they used while it ran (/proc/stat minus our own, the
  actor's and the tool's cpu time), and is redone up to --retries times if that was
  over 10%. Each side's figure is its median over the rounds in which neither side
  was disturbed, and the report gives a 95% bootstrap interval for their ratio; every
  attempt is in the report.

What stays different by design: ours advances pos and feeds each step's caches into
the next (a real decode), while the tool repeats one step with fixed inputs; ours also
builds the argument list in Python and reads back the 4-byte token. Together that is
tens of microseconds per step: lost in the noise for real models, but ~20% of the
0.25 ms step of the 2-layer `tiny` preset, so `tiny` does not meet the target.

For a GPU machine without iree-compile or Ray: compile its graphs here with
`--device cuda --prepare DIR`, carry DIR there, and run `--device cuda --vmfbs DIR
--via worker` on it.

Usage:
    python benchmarks/fidelity.py                        # mid, fp32 and int4, CPU, the actor
    python benchmarks/fidelity.py --model llama-3.2-1b --steps 5 --warmup 1
    python benchmarks/fidelity.py --device cuda --prepare DIR
    python benchmarks/fidelity.py --device cuda --vmfbs DIR --via worker
    python benchmarks/fidelity.py --variants bf16,int8-w8a8 --weights parameters --flags packed

With `--weights parameters` the graphs are one module holding the weights as parameters
(`workers.model.export.ModuleSpec`): ours serves them from the resident arrays, the tool
reads an `.irpa` of the same bytes and calls the module's `decode` entry point.
`--flags` names a flag set of conf/flags/ (`packed`: data tiling and micro-kernels, which
pack a parameter once at load).
"""

from __future__ import annotations

import abc
import argparse
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _common as common  # noqa: E402

SCRIPT = "fidelity"
WEIGHT_SEED = 0
BOUND = (0.97, 1.03)  # ours / theirs
DISTURBED_OTHER_CPU = 0.10  # a measurement during which others used more of the CPUs is redone


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mid", help="a preset of workers/core/config.py")
    p.add_argument("--variants", default="fp32,int4", help="comma-separated names in conf/variant/")
    p.add_argument("--device", default="cpu", help="a device of conf/device/")
    p.add_argument(
        "--weights",
        choices=("arguments", "parameters"),
        default="arguments",
        help="how the graphs hold the weights (docs/axes.md): call arguments, or parameters "
        "of one module",
    )
    p.add_argument("--flags", default="default", help="a flag set of conf/flags/ (e.g. packed)")
    p.add_argument(
        "--target-cpu",
        default="host",
        help="CPU: iree-compile's --iree-llvmcpu-target-cpu (e.g. x86-64-v3 for graphs "
        "that --prepare builds for another machine)",
    )
    p.add_argument(
        "--via",
        choices=("actor", "worker", "runner"),
        default="actor",
        help="ours: the sweep's Ray actor, its PointWorker in this process, or the bare runner",
    )
    p.add_argument("--steps", type=int, default=16, help="timed decode steps (N)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warmup steps (W)")
    p.add_argument("--prompt-length", type=int, default=16, help="prompt tokens (L)")
    p.add_argument("--max-seq", type=int, default=256, help="KV cache capacity")
    p.add_argument("--rounds", type=int, default=24, help="interleaved rounds of ours/theirs (R)")
    p.add_argument(
        "--tool-iterations",
        type=int,
        default=1,
        help="calls per iree-benchmark-module repetition (its sample is their mean); 1 gives "
        "per-call samples like ours",
    )
    p.add_argument(
        "--task-workers",
        type=int,
        default=None,
        help="CPU: --task_topology_max_group_count for both sides (default: IREE's own, "
        "as in a sweep; not with --via actor)",
    )
    p.add_argument(
        "--quiet-wait-s",
        type=float,
        default=60.0,
        help="before each measurement, wait up to this long for other processes "
        "to leave the CPUs (under 10%% busy)",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=2,
        help="times to redo a measurement during which other processes used over 10%% of the cpus",
    )
    p.add_argument(
        "--thp",
        choices=("on", "off"),
        default="on",
        help="transparent huge pages for this process and the tool (see benchmarks/_common.py)",
    )
    p.add_argument("--prepare", type=Path, default=None, help="compile into this folder and exit")
    p.add_argument("--vmfbs", type=Path, default=None, help="use the graphs --prepare compiled")
    p.add_argument("--out", type=Path, default=None, help="JSON report path")
    p.add_argument("--cache-dir", type=Path, default=ROOT / "outputs" / "cache")
    args = p.parse_args(argv)
    for name in ("steps", "rounds", "prompt_length", "max_seq", "tool_iterations"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be > 0")
    if args.warmup < 0 or args.retries < 0:
        p.error("--warmup and --retries must be >= 0")
    if args.prompt_length + args.warmup + args.steps > args.max_seq:
        p.error("--prompt-length + --warmup + --steps must fit in --max-seq (the KV cache)")
    if args.task_workers is not None and (args.task_workers <= 0 or args.via == "actor"):
        p.error("--task-workers must be > 0, and needs --via worker or runner")
    if args.prepare and args.vmfbs:
        p.error("--prepare compiles, --vmfbs uses what it compiled: give one")
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.out is None:
        args.out = ROOT / common.default_report_path(SCRIPT, f"{args.model}-{args.device}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from sweep.plan.config import load_config
    from workers.model.export import prompt_bucket
    from workers.tasks import ModelSource

    known = load_config([])[0]  # the sweep's own devices, variants and flag sets (conf/)
    if args.flags not in known.grid.flag_sets:
        flag_sets = sorted(f.stem for f in (ROOT / "conf" / "flags").glob("*.yaml"))
        if args.flags not in flag_sets:
            raise SystemExit(f"unknown --flags {args.flags!r}; flag sets: {flag_sets}")
        known = load_config([f"+flags@grid.flag_sets.{args.flags}={args.flags}"])[0]
    args.compile_flags = list(known.grid.flag_sets[args.flags].flags)
    unknown = [v for v in args.variants if v not in known.variants]
    if unknown or args.device not in known.devices:
        raise SystemExit(
            f"unknown --variants {unknown} or --device {args.device!r}; "
            f"variants: {sorted(known.variants)}, devices: {sorted(known.devices)}"
        )
    variants = {name: known.variants[name] for name in args.variants}
    device = known.devices[args.device]
    if device.runs_on_host_cpu:
        target = f"--iree-llvmcpu-target-cpu={args.target_cpu}"
        flags = [f for f in device.target_flags if not f.startswith("--iree-llvmcpu-target-cpu=")]
        device = dataclasses.replace(device, target_flags=(*flags, target))
    source = ModelSource(args.model, preset=args.model, seed=WEIGHT_SEED)
    cfg = source.config()
    bucket = prompt_bucket(args.prompt_length, args.max_seq)
    if args.prepare:
        prepare(args, cfg, device, variants, bucket)
        return {}

    task_flags = (
        []
        if args.task_workers is None
        else [f"--task_topology_max_group_count={args.task_workers}"]
    )
    # every graph before the actor starts: a compile beside a benchmark disturbs it
    graphs = {v: load_graphs(args, cfg, device, variants[v], bucket) for v in args.variants}
    ours = make_ours(args.via, device, source, str(args.cache_dir), task_flags)
    report: dict[str, Any] = {
        "script": SCRIPT,
        "machine": common.machine_info(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "bound": list(BOUND),
        "task_flags": task_flags,
        # False when main() runs in a process not started with the --thp environment
        "thp_env_active": common.thp_active(args.thp == "on"),
        "tool_task_groups": tool_task_groups(task_flags) if device.driver == "local-task" else None,
        "ours_where": ours.where,
        "variants": {},
    }
    print(f"# {args.model} on {ours.where.get('device_name', args.device)}, ours via {args.via}")
    try:
        for name, variant in variants.items():
            result = bench_variant(
                args, source, variant, device, bucket, graphs[name], ours, task_flags
            )
            report["variants"][name] = result
            common.write_json(
                args.out, report
            )  # after each variant: a crash keeps what was measured
    finally:
        ours.close()
    print()
    rows = [table_row(v, args, r) for v, r in report["variants"].items()]
    print(common.markdown_table(TABLE_HEADER, rows))
    print(f"\nreport: {args.out}")
    return report


TABLE_HEADER = (
    "variant",
    "device",
    "ours (via)",
    "ours ms/tok",
    "iree-benchmark-module ms/tok",
    "ratio (95% CI)",
    f"in [{BOUND[0]}, {BOUND[1]}]",
    "weight GB",
    "dispatches",
)


def table_row(variant: str, args: argparse.Namespace, r: dict[str, Any]) -> list[str]:
    return [
        variant,
        args.device,
        args.via,
        f"{r['ours_ms']:.2f}",
        f"{r['iree_benchmark_module_ms']:.2f}",
        f"{r['ratio']:.3f} ({r['ratio_ci95'][0]:.3f}-{r['ratio_ci95'][1]:.3f})",
        "yes" if r["within_bound"] else "no",
        f"{r['weight_gb']:.2f}",
        str(r["num_dispatches"]),
    ]


# --- the graphs --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Graphs:
    prefill: bytes
    decode: bytes
    meta: dict[str, Any]  # compile seconds, dispatches, the decode compile command


def compile_variant(
    args: argparse.Namespace, cfg: Any, device: Any, variant: Any, bucket: int
) -> Graphs:
    """The prefill and decode graphs' vmfbs: two modules, or one (the same bytes twice)
    when the weights are parameters."""
    from workers.compile.iree import compile_stablehlo
    from workers.model.export import GraphSpec, ModuleSpec, export_graph

    specs = [
        GraphSpec(cfg, variant, args.max_seq, kind, bucket if kind == "prefill" else 0)
        for kind in ("prefill", "decode")
    ]
    if args.weights == "parameters":
        specs = [ModuleSpec(tuple(dataclasses.replace(g, weights=args.weights) for g in specs))]
    results = []
    for spec in specs:
        stablehlo = export_graph(spec).stablehlo
        result = compile_stablehlo(stablehlo, device, args.compile_flags, cache_dir=args.cache_dir)
        if not result.ok:
            raise RuntimeError(f"{spec.label}: {result.error_class}\n{result.error_message}")
        results.append(result)
    prefill, decode = results[0], results[-1]
    return Graphs(
        prefill.vmfb,
        decode.vmfb,
        {
            "decode_compile_s": decode.compile_s,
            "prefill_compile_s": prefill.compile_s if len(results) > 1 else None,
            "packed_at_load": decode.num_packed_at_load,
            "packed_per_call": decode.num_packed_per_call,
            "decode_cache_hit": decode.cache_hit,
            "num_dispatches": decode.num_dispatches,
            "decode_vmfb_bytes": decode.vmfb_bytes,
            "decode_compile_command": decode.command,
        },
    )


def prepare(
    args: argparse.Namespace, cfg: Any, device: Any, variants: dict[str, Any], bucket: int
) -> None:
    """Compiles every variant's graphs into `--prepare` with a manifest of what they are."""
    out: Path = args.prepare
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {**_graph_identity(args, bucket), "variants": {}}
    for name, variant in variants.items():
        graphs = compile_variant(args, cfg, device, variant, bucket)
        if graphs.prefill is graphs.decode:  # one module (weights as parameters)
            (out / f"{name}-module.vmfb").write_bytes(graphs.decode)
        else:
            (out / f"{name}-prefill.vmfb").write_bytes(graphs.prefill)
            (out / f"{name}-decode.vmfb").write_bytes(graphs.decode)
        manifest["variants"][name] = graphs.meta
        print(f"{name}: {graphs.meta['num_dispatches']} decode dispatches")
    common.write_json(out / "manifest.json", manifest)
    print(f"graphs for {args.device} in {out}")


def _graph_identity(args: argparse.Namespace, bucket: int) -> dict[str, Any]:
    return {
        "model": args.model,
        "device": args.device,
        "target_cpu": args.target_cpu if args.device == "cpu" else None,
        "max_seq": args.max_seq,
        "bucket": bucket,
        "weights": args.weights,
        "flags": args.compile_flags,
    }


def load_graphs(
    args: argparse.Namespace, cfg: Any, device: Any, variant: Any, bucket: int
) -> Graphs:
    if args.vmfbs is None:
        return compile_variant(args, cfg, device, variant, bucket)
    manifest = json.loads((args.vmfbs / "manifest.json").read_text())
    wanted = _graph_identity(args, bucket)
    have = {key: manifest.get(key) for key in wanted}
    if have != wanted:
        raise SystemExit(
            f"--vmfbs {args.vmfbs} holds graphs for {have}, not {wanted}: "
            "run --prepare with the same --model, --device, --target-cpu, --max-seq, "
            "--prompt-length, --weights and --flags"
        )
    if variant.name not in manifest["variants"]:
        have_variants = sorted(manifest["variants"])
        raise SystemExit(
            f"--vmfbs {args.vmfbs} has no {variant.name!r} graphs, only {have_variants}"
        )
    meta = manifest["variants"][variant.name]
    if args.weights == "parameters":
        module = (args.vmfbs / f"{variant.name}-module.vmfb").read_bytes()
        return Graphs(module, module, meta)
    return Graphs(
        (args.vmfbs / f"{variant.name}-prefill.vmfb").read_bytes(),
        (args.vmfbs / f"{variant.name}-decode.vmfb").read_bytes(),
        meta,
    )


# --- our side --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OursRun:
    """What one run of our side gives back."""

    tokens: tuple[int, ...]
    decode_samples_ms: tuple[float, ...]
    upload_s: float
    num_tokens_matched: int | None = None  # None: the bare runner checks no reference

    @classmethod
    def of(cls, m: Any) -> OursRun:  # a workers.records.Measurement
        return cls(m.tokens, m.decode_samples_ms, m.upload_s, m.num_tokens_matched)


class Ours(abc.ABC):
    """Our side: `run` measures one point as a sweep point is measured."""

    where: dict[str, Any]
    pids: tuple[int, ...] = ()  # other processes whose cpu time is ours

    @abc.abstractmethod
    def run(self, task: Any, graphs: Graphs) -> OursRun: ...

    def memory(self) -> dict[str, int]:
        return common.memory_mb(self.pids[0] if self.pids else "self")

    def close(self) -> None:  # noqa: B027 - optional hook: only the actor has a Ray to stop
        return None


class ActorOurs(Ours):
    """The sweep's benchmark actor on a local Ray, placed and configured as the scheduler does."""

    def __init__(self, device: Any, source: Any, cache_dir: str) -> None:
        import ray

        from sweep.execute.cluster import actor_options, alive_nodes, connect, remote_functions

        self._disconnect = connect("", None)
        _, actor_class = remote_functions()
        options = actor_options(device, alive_nodes()[0])
        self.actor = actor_class.options(**options).remote(device, source, cache_dir)
        self.where = ray.get(self.actor.where.remote())
        self.pids = (self.where["pid"],)

    def run(self, task: Any, graphs: Graphs) -> OursRun:
        import ray

        return OursRun.of(ray.get(self.actor.run.remote(task, graphs.prefill, graphs.decode)))

    def close(self) -> None:
        self._disconnect()


class WorkerOurs(Ours):
    """The actor's body, `PointWorker`, in this process."""

    def __init__(self, device: Any, source: Any, cache_dir: str) -> None:
        from workers.point import PointWorker

        self.worker = PointWorker(device, source, cache_dir)
        self.where = {"pid": os.getpid(), **self.worker.info()}

    def run(self, task: Any, graphs: Graphs) -> OursRun:
        return OursRun.of(self.worker.run(task, graphs.prefill, graphs.decode))


class RunnerOurs(Ours):
    """The bare `IreeRunner` and the decode loop in this process: no reference, no actor."""

    def __init__(self, device: Any, source: Any) -> None:
        from workers.point import device_name
        from workers.runtimes.iree import IreeRunner

        self.runner, self.source = IreeRunner(device.driver), source
        self.where = {"pid": os.getpid(), "device_name": device_name(device)}

    def run(self, task: Any, graphs: Graphs) -> OursRun:
        from workers.runtimes.session import greedy_decode, prompt_ids
        from workers.tasks import weights_key

        key = weights_key(task.weights_id, task.variant, task.layout)
        make = lambda: self.source.variant(task.variant, task.layout)  # noqa: E731
        upload_s = self.runner.ensure_weights(key, make)
        parameters = task.weights == "parameters"
        run = greedy_decode(
            self.runner.session(graphs.prefill, graphs.decode, parameters=parameters),
            prompt_ids(self.source.config().vocab_size, task.prompt_length),
            task.prompt_bucket,
            task.steps,
        )
        return OursRun(run.tokens, run.decode_samples_ms, upload_s)


def make_ours(via: str, device: Any, source: Any, cache_dir: str, task_flags: list[str]) -> Ours:
    if task_flags:
        import iree.runtime as rt

        rt.flags.parse_flags(*task_flags)  # process-wide; must precede the device's creation
    if via == "actor":
        return ActorOurs(device, source, cache_dir)
    if via == "worker":
        return WorkerOurs(device, source, cache_dir)
    return RunnerOurs(device, source)


# --- one variant -----------------------------------------------------------------------------


@dataclasses.dataclass
class _Variant:
    """What both sides of one variant's rounds share."""

    args: argparse.Namespace
    task: Any  # BenchTask
    graphs: Graphs
    tool_cmd: list[str]
    tokens: tuple[int, ...]  # greedy tokens of the first run; later runs must match


def bench_variant(
    args: argparse.Namespace,
    source: Any,
    variant: Any,
    device: Any,
    bucket: int,
    graphs: Graphs,
    ours: Ours,
    task_flags: list[str],
) -> dict[str, Any]:
    from workers.model.export import GraphSpec
    from workers.tasks import BenchTask, DecodeSteps

    steps = DecodeSteps(warmup_steps=args.warmup, decode_steps=args.steps, prefill_runs=1)
    weights_id = source.weights_id()
    task = BenchTask(
        variant,
        "iree",
        weights_id,
        args.prompt_length,
        bucket,
        args.max_seq,
        steps,
        weights=args.weights,
    )
    decode_graph = GraphSpec(source.config(), variant, args.max_seq, "decode", weights=args.weights)
    print(f"\n## {variant.name}: {graphs.meta['num_dispatches']} decode dispatches")
    with tempfile.TemporaryDirectory(prefix=f"fidelity-{variant.name}-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "decode.vmfb").write_bytes(graphs.decode)
        weight_inputs, entry, weight_bytes = write_weights(source, task, decode_graph, tmp)
        first = ours.run(task, graphs)  # uploads the weights; its first token feeds the tool
        print(f"weights {weight_bytes / 1e9:.2f} GB, uploaded in {first.upload_s:.1f} s")
        state = write_decode_state(decode_graph, args, first.tokens[0], tmp)
        tool_cmd = tool_command(
            tmp / "decode.vmfb", device.driver, entry, weight_inputs + state, task_flags, args
        )
        v = _Variant(args, task, graphs, tool_cmd, tuple(first.tokens))
        rounds = []
        for r in range(args.rounds):
            record: dict[str, Any] = {"round": r}
            for side in ("ours", "theirs") if r % 2 == 0 else ("theirs", "ours"):
                record.update(measure_side(v, side, ours))
            print(
                f"round {r}: ours {record['ours_ms']:.3f} ms/tok "
                f"(others {record['ours_other_cpu']:.0%} cpu), iree-benchmark-module "
                f"{record['theirs_ms']:.3f} ms/tok (others {record['theirs_other_cpu']:.0%})"
            )
            rounds.append(record)
        command = shlex.join(tool_cmd).replace(str(tmp), "$INPUTS")

    return {
        **summarize_rounds(rounds),
        **graphs.meta,
        "weight_gb": weight_bytes / 1e9,
        "weight_bytes": weight_bytes,
        "upload_s": first.upload_s,
        "num_tokens_matched": first.num_tokens_matched,
        "iree_benchmark_module_command": command,
        "decode_inputs": "weights; token: our first run's first token; pos: the prompt length; "
        "kcache, vcache: zeros",
        "prompt_bucket": bucket,
        "tokens": list(v.tokens),
        "rounds": rounds,
    }


def summarize_rounds(rounds: list[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """Each side's median over the rounds in which neither side was disturbed, their
    ratio, and a 95% bootstrap interval for it (rounds resampled with both sides).

    Both sides use the same rounds, so the ratio compares measurements taken seconds
    apart. On a shared VM each round's median still scatters by 5-10%, so the interval,
    not the point alone, says whether the harness adds anything. Falls back to every
    round when none was clean (`all_rounds_disturbed` says so).
    """
    clean = [r for r in rounds if not r["ours_disturbed"] and not r["theirs_disturbed"]]
    used = clean or rounds
    ours = np.array([r["ours_ms"] for r in used])
    theirs = np.array([r["theirs_ms"] for r in used])
    ratio = float(np.median(ours) / np.median(theirs))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(used), size=(2000, len(used)))
    boot = np.median(ours[picks], axis=1) / np.median(theirs[picks], axis=1)
    return {
        "ours_ms": float(np.median(ours)),
        "iree_benchmark_module_ms": float(np.median(theirs)),
        "ratio": ratio,
        "ratio_ci95": [float(q) for q in np.percentile(boot, [2.5, 97.5])],
        "within_bound": BOUND[0] <= ratio <= BOUND[1],
        "rounds_used": [r["round"] for r in used],
        "all_rounds_disturbed": not clean,
    }


def measure_side(v: _Variant, side: str, ours: Ours) -> dict[str, Any]:
    """One side's measurement, redone (up to --retries times) while others disturb it.

    Keys are prefixed with the side: `ours_ms`, `theirs_samples_ms`, `ours_other_cpu`, ...
    """
    disturbed: list[dict[str, Any]] = []
    for attempt in range(v.args.retries + 1):
        quiet_before = common.wait_for_quiet(v.args.quiet_wait_s, window_s=0.5, pids=ours.pids)
        with common.OtherCpu(ours.pids) as cpu:
            if side == "ours":
                samples, memory = measure_ours(v, ours), ours.memory()
            else:
                samples, memory = run_tool(v.tool_cmd, v.args.thp == "on")
        result = {
            "ms": float(np.median(samples)),
            "samples_ms": samples,
            "common.memory_mb": memory,
            "other_cpu": cpu.other,
            "steal": cpu.steal,
            "quiet_before": quiet_before,
            "loadavg_1m": os.getloadavg()[0],
            "disturbed": cpu.other > DISTURBED_OTHER_CPU,
        }
        if not result["disturbed"] or attempt == v.args.retries:
            break
        disturbed.append(result)
        print(
            f"  {side}: {result['ms']:.3f} ms/tok with others using {cpu.other:.0%} of the "
            "cpus: measuring again"
        )
    result["disturbed_attempts"] = disturbed
    return {f"{side}_{key}": value for key, value in result.items()}


def measure_ours(v: _Variant, ours: Ours) -> list[float]:
    out = ours.run(v.task, v.graphs)
    if tuple(out.tokens) != v.tokens:
        raise RuntimeError(f"{v.task.variant.name}: greedy tokens changed between runs of a point")
    return list(out.decode_samples_ms)


def write_weights(
    source: Any, task: Any, decode_graph: Any, tmp: Path
) -> tuple[list[str], list[str], int]:
    """Writes the variant's weights (rebuilt from the seed: the actor's bytes) for the tool:
    as its inputs, or as an `.irpa` of parameters (`--weights parameters`). Returns the
    inputs, the flags that name the entry point (and the archive), and the weights' bytes."""
    from workers.measure.profile import weight_archive
    from workers.tasks import weights_key

    vw = source.variant(task.variant, task.layout)
    if task.weights == "parameters":
        key = weights_key(task.weights_id, task.variant, task.layout)
        inputs, entry = [], decode_graph.entry_flags(weight_archive(vw, key, tmp))
    else:
        inputs = [write_input(tmp / f"w{i:03d}", a) for i, a in enumerate(vw.arrays)]
        entry = decode_graph.entry_flags()
    nbytes = vw.nbytes
    del vw
    os.sync()  # the kernel's writeback of GBs would otherwise run during the first rounds
    return inputs, entry, nbytes


def write_decode_state(
    decode_graph: Any, args: argparse.Namespace, token: int, tmp: Path
) -> list[str]:
    """token, pos, kcache, vcache: the decode inputs after the weights (caches of zeros)."""
    from workers.formats.variant import numpy_dtype

    _, _, kcache, vcache = decode_graph.args()[-4:]
    return [
        write_input(tmp / "token", np.array(token, np.int32)),
        write_input(tmp / "pos", np.array(args.prompt_length, np.int32)),
        *(
            write_input(tmp / c.name, np.zeros(c.shape, numpy_dtype(c.dtype)))
            for c in (kcache, vcache)
        ),
    ]


def write_input(stem: Path, array: np.ndarray) -> str:
    """Writes one tool input and returns its `--input=` value.

    .npy where numpy has the dtype; bfloat16 (which .npy cannot name) as raw bytes with
    the shape and type spelled out.
    """
    if array.dtype.name == "bfloat16":
        path = stem.with_suffix(".bin")
        array.view(np.uint16).tofile(path)
        return "x".join([*map(str, array.shape), "bf16"]) + f"=@{path}"
    path = stem.with_suffix(".npy")
    np.save(path, array)
    return f"@{path}"


# --- IREE's own tool ---------------------------------------------------------------------------


def tool_command(
    vmfb: Path,
    driver: str,
    entry: list[str],
    inputs: list[str],
    task_flags: list[str],
    args: argparse.Namespace,
) -> list[str]:
    """`entry`: `GraphSpec.entry_flags`, the function (and the parameters archive)."""
    cmd = [
        common.iree_tool("iree-benchmark-module"),
        f"--module={vmfb}",
        f"--device={driver}",
        *entry,
        *task_flags,
        *(f"--input={value}" for value in inputs),
        # one call per repetition by default: per-call samples, like ours
        f"--benchmark_min_time={args.tool_iterations}x",
        f"--benchmark_repetitions={args.steps}",
        "--benchmark_format=json",
    ]
    if args.warmup > 0:
        cmd.append("--benchmark_min_warmup_time=1e-9")  # exactly one untimed call first
    return cmd


def run_tool(cmd: list[str], thp: bool) -> tuple[list[float], dict[str, int]]:
    """Runs iree-benchmark-module: (real time of each repetition in ms, peak memory in MB).

    Its memory is sampled every second, so the report shows whether its weights sat in
    huge pages as ours do.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            text=True,
            env=common.thp_env(thp),
        )
        peak: dict[str, int] = {}
        while proc.poll() is None:
            for key, value in common.memory_mb(proc.pid).items():
                peak[key] = max(peak.get(key, 0), value)
            time.sleep(0.2)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(
            f"iree-benchmark-module failed ({proc.returncode}):\n{stderr[-4000:]}\n{stdout[-2000:]}"
        )
    return parse_tool_json(stdout), peak


_TIME_UNIT_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_tool_json(stdout: str) -> list[float]:
    """Per-repetition real times (ms) from google-benchmark JSON; aggregates are skipped."""
    data = json.loads(stdout[stdout.index("{") :])
    # google-benchmark's real_time is already per iteration (here one call).
    samples = [
        b["real_time"] * _TIME_UNIT_MS[b["time_unit"]]
        for b in data["benchmarks"]
        if b.get("run_type", "iteration") == "iteration"
    ]
    if not samples:
        raise RuntimeError("iree-benchmark-module reported no iterations")
    return samples


def tool_task_groups(task_flags: list[str]) -> int | None:
    """How many task workers the tool's local-task device gets with these flags."""
    proc = subprocess.run(
        [common.iree_tool("iree-benchmark-module"), "--dump_task_topologies", *task_flags],
        capture_output=True,
        text=True,
    )
    count = (proc.stdout + proc.stderr).count("group[")
    return count or None


if __name__ == "__main__":
    thp = parse_args(sys.argv[1:]).thp == "on"
    if not common.thp_active(thp):  # glibc reads its tunables at start: restart with them set
        os.execve(sys.executable, [sys.executable, *sys.argv], common.thp_env(thp))
    start = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - start:.0f} s")
