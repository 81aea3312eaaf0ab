"""Compile StableHLO text to an IREE vmfb: a killable subprocess and a content-addressed cache.

Why a subprocess and not `iree.compiler.compile_str`: the in-process API has no
timeout, and a flag sweep does meet compiles that hang or run for an hour. Here
`iree-compile` runs in its own session, so on timeout the whole process group is
killed and the sweep records "compile_timeout" and moves on; past its memory bound
(`max_memory_gb`, the config's `bench.compile_max_memory_gb`) likewise, recorded as a
"compile_error" whose message names the limit (`workers/compile/bounded.py`). It also yields the
exact command line, so a failing point can be reproduced by pasting one line
into a shell.

Why a cache: a sweep compiles the same graph for the same device and flags many
times (repeats, restarts, several prompt lengths sharing a graph). The key covers
everything that changes the vmfb: the StableHLO text, the device and its target
flags, the extra flags, the compiler version and, for `target-cpu=host` builds,
the host CPU model (such a vmfb may crash on another CPU, so a cache shared
between machines must not hand it over).

Dispatch count: the same compile dumps the IR after each phase
(`--dump-compilation-phases-to`) and we count the `flow.dispatch` ops in the
flow-phase file: one per dispatch op in the program after dispatch formation,
counted statically (a dispatch inside a loop counts once). It matches a separate
`--compile-to=flow` run exactly. The stream statistics
(`--iree-scheduling-dump-statistics-format=json`) were not used: they also count
the set/unset-encoding dispatches that data tiling adds after the flow phase
(56 against 30 flow dispatches on a 2-layer toy model with
`--iree-opt-data-tiling=true`), and agree with the flow count otherwise. Large
constants are elided from the dumps (`--mlir-elide-*`), which keeps them small
and leaves the vmfb byte-identical. The same flow file gives the dispatch names
(`flow.executable.export`), kept in the cache's metadata, from which
`workers/compile/dispatches.py` reads whether the quantized linears' dequant was fused.

Export memo: the cache key needs the StableHLO's hash, and exporting a 1B graph takes
seconds, so `compile_graph` remembers, per graph definition (the `GraphSpec` and the
source of the modules that build graphs), the hash its export gave
(`cache_dir/export/`). A warm cache then answers without exporting, and a host
without the compiler (`cache_only`, see `sweep.bundle`) finds its vmfbs by the
compiler version the cache recorded (`cache_dir/vmfb/compilers.json`), never by
running iree-compile.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from workers.compile.bounded import Bound, Finished, run_bounded
from workers.core.devices import DeviceSpec
from workers.core.files import atomic_write
from workers.core.kinds import GraphKind, Status, Weights
from workers.core.locks import key_lock

if TYPE_CHECKING:
    from workers.model.export import Compilable

logger = logging.getLogger(__name__)

ERROR_TAIL_CHARS = 4000
# Flags whose value "host" makes the vmfb specific to the compiling machine's CPU.
_HOST_CPU_FLAGS: tuple[str, ...] = (
    "--iree-llvmcpu-target-cpu",
    "--iree-llvmcpu-target-cpu-features",
)
# /proc/cpuinfo fields that name the CPU and its instruction set (x86 and arm64);
# the others (MHz, core ids, bogomips) differ between cores and boots.
_CPUINFO_KEYS: frozenset[str] = frozenset(
    {"vendor_id", "cpu family", "model", "model name", "flags"}
    | {"CPU implementer", "CPU architecture", "CPU variant", "CPU part", "Features"}
)
_FLOW_DISPATCH_RE = re.compile(r"\bflow\.dispatch @")
_FLOW_EXPORT_RE = re.compile(r"\bflow\.executable\.export\s+(?:public\s+)?@([\w$.-]+)")
_SYMBOL_RE = re.compile(r"@([\w$.-]+)")


@dataclass(frozen=True)
class CompileResult:
    """The outcome of one compile; failures are data, not exceptions, so a sweep goes on.

    It crosses from a compile task to the driver as itself, without its vmfb (which
    travels separately, straight to the benchmark actors): see `without_vmfb`.
    """

    ok: bool
    key: str  # cache key (hex sha256); "" when the compile never ran
    vmfb: bytes | None = field(repr=False)
    compile_s: float | None  # wall seconds of the real compile (a cache hit reports the original's)
    num_dispatches: int | None  # flow.dispatch ops after the flow phase
    cache_hit: bool
    command: str  # shlex-joined iree-compile command line, with input and output paths
    error_class: Status | None  # None, compile_error or compile_timeout
    error_message: str | None  # tail of the compiler's output
    returncode: int | None  # None when killed on timeout
    vmfb_bytes: int | None = None
    stablehlo_sha256: str | None = None
    # The flow phase's dispatch (executable export) names, in order; None when unknown
    # (a cache entry from before they were kept). See workers/compile/dispatches.py.
    dispatch_names: tuple[str, ...] | None = None
    # Data tiling's packings (`flow.tensor.encode` in the flow phase): those hoisted into
    # initializers, which run once when the module loads, and those left in the entry
    # points, which run on every call (the activations' always; a weight's when it is an
    # argument). None when unknown (a cache entry from before they were counted).
    num_packed_at_load: int | None = None
    num_packed_per_call: int | None = None
    # Every quantized linear's dequant inside a contraction dispatch (compile_graph
    # derives it from dispatch_names); None: unquantized, or names unknown.
    dequant_fused: bool | None = None
    # Wall clock (epoch seconds) while the compile task held the host's compile lock
    # (sweep.execute.cluster; a cache hit: its lookup); None where no task ran it.
    started_at: float | None = None
    finished_at: float | None = None

    def __post_init__(self) -> None:
        if self.vmfb is not None and self.vmfb_bytes is None:
            object.__setattr__(self, "vmfb_bytes", len(self.vmfb))

    def without_vmfb(self) -> CompileResult:
        return dataclasses.replace(self, vmfb=None)

    @classmethod
    def failed(cls, error_class: str, message: str, *, command: str = "") -> CompileResult:
        """A compile that produced nothing, e.g. because the task running it died."""
        return cls(
            ok=False,
            key="",
            vmfb=None,
            compile_s=None,
            num_dispatches=None,
            cache_hit=False,
            command=command,
            error_class=error_class,
            error_message=clip_message(message),
            returncode=None,
        )


def clip_message(message: str, limit: int = ERROR_TAIL_CHARS) -> str:
    """The message, or its first and last lines when long: a crash's headline is at the
    top of the compiler's output and its diagnostics at the bottom."""
    if len(message) <= limit:
        return message
    marker = f"\n[... {len(message) - limit} characters ...]\n"  # a close upper bound
    keep = limit - len(marker)
    return f"{message[: keep // 4]}{marker}{message[-(keep - keep // 4) :]}"


@functools.cache
def iree_compile_path() -> str:
    """The `iree-compile` binary of the installed iree-base-compiler.

    The package's own binary (not whatever is on PATH) so the compiler matches
    `compiler_version()` and the runtime installed next to it.
    """
    try:
        from iree.compiler.tools.binaries import find_tool

        return os.path.realpath(find_tool("iree-compile"))
    except (ImportError, ValueError):
        pass
    candidate = Path(sys.executable).parent / "iree-compile"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    raise FileNotFoundError(
        f"iree-compile not found for {sys.executable}: install it with "
        "`pip install 'iree-base-compiler>=3.13'` or set IREE_TOOL_PATH to its directory"
    )


@functools.cache
def compiler_version() -> str:
    """The compiler version and commit; part of every cache key.

    E.g. "IREE compiler version 3.13.0rc20261016 @ 89ece87b...".
    """
    try:
        out = subprocess.run(
            [iree_compile_path(), "--version"], capture_output=True, text=True, timeout=60
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    for line in out.splitlines():
        if "compiler version" in line:
            return line.strip()
    from importlib.metadata import version

    return f"iree-base-compiler {version('iree-base-compiler')}"


@functools.cache
def host_cpu_id() -> str:
    """A short hash of the host CPU's model and instruction-set flags.

    Two machines get the same id only if a `target-cpu=host` vmfb built on one
    can be trusted on the other; a spurious difference only costs a recompile.
    """
    fields = {"machine": platform.machine(), "processor": platform.processor()}
    with contextlib.suppress(OSError):
        first_cpu = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
        for line in first_cpu.splitlines():
            name, _, value = line.partition(":")
            if name.strip() in _CPUINFO_KEYS:
                fields[name.strip()] = value.strip()
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def targets_host(flags: Sequence[str]) -> bool:
    """True if the effective (last given) target cpu or cpu features is "host"."""
    last: dict[str, str] = {}
    for flag in flags:
        name, _, value = flag.partition("=")
        last[name] = value
    return any(last.get(name) == "host" for name in _HOST_CPU_FLAGS)


def cache_key(
    stablehlo_sha256: str, device: DeviceSpec, flags: Sequence[str], compiler: str | None = None
) -> str:
    """The content address of a compile: equal keys mean interchangeable vmfbs.
    `compiler` defaults to the installed compiler's version."""
    host_cpu = host_cpu_id() if targets_host((*device.target_flags, *flags)) else None
    parts = {
        "stablehlo_sha256": stablehlo_sha256,
        "device": device.name,
        "target_flags": list(device.target_flags),
        "flags": list(flags),
        "compiler": compiler or compiler_version(),
        "host_cpu": host_cpu,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def compile_stablehlo(
    stablehlo: str,
    device: DeviceSpec,
    flags: Sequence[str] = (),
    *,
    cache_dir: Path | None = None,
    timeout_s: float = 600.0,
    max_memory_gb: float | None = None,
    work_dir: Path | None = None,
) -> CompileResult:
    """Compiles `stablehlo` for `device`, from `cache_dir` when it has the key.

    With `work_dir` the input, output and phase dumps stay there (named by key),
    so `command` can be rerun by hand; without it they go to a temporary
    directory that is removed. A successful compile is cached, and so is one the
    compiler itself rejected (see `_deterministic_failure`): the same input fails the
    same way, and a search must not pay for its compile errors twice.
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    if max_memory_gb is not None and max_memory_gb <= 0:
        raise ValueError(f"max_memory_gb must be > 0 or None, got {max_memory_gb}")
    flags = tuple(flags)
    sha = hashlib.sha256(stablehlo.encode()).hexdigest()
    key = cache_key(sha, device, flags)
    if cache_dir is None:
        result = _compile(stablehlo, device, flags, key, (timeout_s, max_memory_gb), work_dir)
        return dataclasses.replace(result, stablehlo_sha256=sha)
    cache_dir = Path(cache_dir)
    # One compile of a key at a time, across processes (two sweeps sharing the cache):
    # the second finds the first's vmfb, and neither reads a file the other is writing.
    with key_lock(_cache_paths(cache_dir, key)[0].with_suffix(".lock")):
        result = _load_cached(cache_dir, key)
        if result is None:
            result = _compile(stablehlo, device, flags, key, (timeout_s, max_memory_gb), work_dir)
            if result.ok or _deterministic_failure(result):
                _store_cached(cache_dir, result)
    return dataclasses.replace(result, stablehlo_sha256=sha)


COMPILE_MODES: tuple[str, ...] = ("auto", "cache_only")


def compile_graph(
    graph: Compilable,
    device: DeviceSpec,
    flags: Sequence[str] = (),
    *,
    cache_dir: Path,
    timeout_s: float = 600.0,
    max_memory_gb: float | None = None,
    mode: str = "auto",
) -> CompileResult:
    """The vmfb of `graph` for `device` and `flags`: from the cache without exporting when
    the export memo knows the graph, else exported and compiled (and cached). With
    `mode="cache_only"` a graph the cache lacks is a compile_error, never a compile."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode {mode!r}; allowed: {list(COMPILE_MODES)}")
    cache_dir = Path(cache_dir)
    flags = tuple(flags)
    sha = _memo_read(cache_dir, graph)
    if sha is not None:
        compilers = recorded_compilers(cache_dir) if mode == "cache_only" else [None]
        for compiler in compilers:
            key = cache_key(sha, device, flags, compiler)
            with key_lock(_cache_paths(cache_dir / "vmfb", key)[0].with_suffix(".lock")):
                cached = _load_cached(cache_dir / "vmfb", key)
            if cached is not None:
                return _with_verdict(dataclasses.replace(cached, stablehlo_sha256=sha), graph)
    if mode == "cache_only":
        return CompileResult.failed(
            Status.COMPILE_ERROR,
            f"graph {graph.label} for {device.name} with flags {list(flags)} was not prepared: "
            f"compile=cache_only compiles nothing and {cache_dir} lacks it; prepare it on a "
            "host with iree-compile (python -m sweep.bundle, or the same sweep there)",
        )
    from workers.model.export import export_graph

    exported = export_graph(graph)
    _memo_write(cache_dir, graph, exported.sha256)
    result = compile_stablehlo(
        exported.stablehlo,
        device,
        flags,
        cache_dir=cache_dir / "vmfb",
        timeout_s=timeout_s,
        max_memory_gb=max_memory_gb,
        work_dir=cache_dir / "work",
    )
    return _with_verdict(result, graph)


def _with_verdict(result: CompileResult, graph: Compilable) -> CompileResult:
    """The result with `dequant_fused` read from its dispatch names for `graph`'s variant."""
    from workers.compile.dispatches import dequant_fused

    fused = dequant_fused(result.dispatch_names, graph.variant, graph.cfg, graph.layout)
    return dataclasses.replace(result, dequant_fused=fused)


def graph_fingerprint(graph: Compilable) -> str:
    """What determines a graph's StableHLO: its spec and the code that builds it; for one
    module of graphs (`ModuleSpec`), its graphs' fingerprints in order."""
    from workers.model.export import GraphSpec, source_sha

    if not isinstance(graph, GraphSpec):
        parts = "/".join(graph_fingerprint(g) for g in graph.graphs)
        return hashlib.sha256(f"module/{parts}".encode()).hexdigest()
    fields = dataclasses.asdict(graph)
    fields["cfg"] = graph.cfg.to_dict()  # llama's without the architecture fields, as before
    if fields["weights"] == Weights.ARGUMENTS:
        fields.pop("weights")  # so the graphs from before the axis keep their memos
    spec = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(f"{spec}/{source_sha(graph.variant)}".encode()).hexdigest()


def _memo_path(cache_dir: Path, graph: Compilable) -> Path:
    fingerprint = graph_fingerprint(graph)
    return cache_dir / "export" / fingerprint[:2] / f"{fingerprint}.json"


def _memo_read(cache_dir: Path, graph: Compilable) -> str | None:
    try:
        return json.loads(_memo_path(cache_dir, graph).read_text())["stablehlo_sha256"]
    except (OSError, ValueError, KeyError):
        return None


def _memo_write(cache_dir: Path, graph: Compilable, sha: str) -> None:
    memo = {"stablehlo_sha256": sha, "graph": graph.label}
    try:
        atomic_write(_memo_path(cache_dir, graph), json.dumps(memo).encode())
    except OSError as exc:
        logger.warning("could not write the export memo of %s: %s", graph.label, exc)


def recorded_compilers(cache_dir: Path) -> list[str]:
    """The compiler versions that wrote vmfbs into `cache_dir`, newest first."""
    return _read_compilers(Path(cache_dir) / "vmfb")


def _read_compilers(vmfb_dir: Path) -> list[str]:
    try:
        return list(json.loads((vmfb_dir / "compilers.json").read_text()))
    except (OSError, ValueError):
        return []


def _record_compiler(vmfb_dir: Path) -> None:
    known, current = _read_compilers(vmfb_dir), compiler_version()
    if known[:1] != [current]:
        versions = [current, *(v for v in known if v != current)]
        atomic_write(vmfb_dir / "compilers.json", json.dumps(versions).encode())


def _compile(
    stablehlo: str,
    device: DeviceSpec,
    flags: tuple[str, ...],
    key: str,
    bounds: tuple[float, float | None],
    work_dir: Path | None,
) -> CompileResult:
    if work_dir is None:
        with tempfile.TemporaryDirectory(prefix="sweep-compile-") as tmp:
            return _compile_in(Path(tmp), stablehlo, device, flags, key, bounds)
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    return _compile_in(Path(work_dir), stablehlo, device, flags, key, bounds)


def _compile_in(
    directory: Path,
    stablehlo: str,
    device: DeviceSpec,
    flags: tuple[str, ...],
    key: str,
    bounds: tuple[float, float | None],
) -> CompileResult:
    """Runs one real compile with its files in `directory`, within `bounds` (timeout_s,
    max_memory_gb: None, no memory bound)."""
    timeout_s, max_memory_gb = bounds
    stem = key[:16]
    input_path, output_path = directory / f"{stem}.mlir", directory / f"{stem}.vmfb"
    phases_dir = directory / f"{stem}.phases"
    input_path.write_text(stablehlo)
    output_path.unlink(missing_ok=True)  # stale files would pass for this compile's
    shutil.rmtree(phases_dir, ignore_errors=True)
    cmd = [
        iree_compile_path(),
        str(input_path),
        "--iree-input-type=stablehlo",
        *device.target_flags,
        *flags,
        f"--dump-compilation-phases-to={phases_dir}",
        "--mlir-elide-elementsattrs-if-larger=16",
        "--mlir-elide-resource-strings-if-larger=16",
        "-o",
        str(output_path),
    ]
    max_rss_bytes = None if max_memory_gb is None else int(max_memory_gb * 1e9)
    finished = run_bounded(cmd, timeout_s=timeout_s, max_rss_bytes=max_rss_bytes)
    returncode, output = finished.returncode, finished.output
    common = {
        "key": key,
        "compile_s": finished.wall_s,
        "cache_hit": False,
        "command": shlex.join(cmd),
    }
    if returncode != 0:
        output_path.unlink(missing_ok=True)  # a killed compiler leaves an empty or partial file
    if finished.killed_by == Bound.TIME:
        message = f"iree-compile ran past timeout_s={timeout_s} and was killed\n{output}"
        return _failure(common, Status.COMPILE_TIMEOUT, message, None)
    if finished.killed_by == Bound.MEMORY:
        return _failure(common, Status.COMPILE_ERROR, memory_message(finished, max_memory_gb), None)
    if returncode != 0 or not output_path.is_file():
        headline = f"iree-compile {_exit_text(returncode)}"
        return _failure(common, Status.COMPILE_ERROR, f"{headline}\n{output}", returncode)
    return CompileResult(
        ok=True,
        vmfb=output_path.read_bytes(),
        num_dispatches=_count_dispatches(phases_dir),
        dispatch_names=_dispatch_names(phases_dir),
        **_packings(phases_dir),
        error_class=None,
        error_message=None,
        returncode=returncode,
        **common,
    )


def memory_message(finished: Finished, max_memory_gb: float | None) -> str:
    """A compile killed by the memory bound: the limit, the knob that raises it, the output."""
    return (
        f"iree-compile passed {max_memory_gb:g} GB of memory (resident, its processes together) "
        f"after {finished.wall_s:.1f} s and was killed; raise bench.compile_max_memory_gb "
        f"(now {max_memory_gb:g}) where the host has the memory, or leave this graph and "
        f"flag set out\n{finished.output}"
    )


def _exit_text(returncode: int) -> str:
    if returncode < 0:  # killed by a signal: a crash
        try:
            return f"crashed ({signal.Signals(-returncode).name})"
        except ValueError:
            return f"crashed (signal {-returncode})"
    return f"failed (exit code {returncode})" if returncode else "wrote no output file"


def _failure(
    common: dict[str, object], error_class: str, message: str, returncode: int | None
) -> CompileResult:
    failed = CompileResult.failed(error_class, message, command=str(common["command"]))
    return dataclasses.replace(
        failed, key=common["key"], compile_s=common["compile_s"], returncode=returncode
    )


def _flow_text(phases_dir: Path) -> str | None:
    """The IR dumped at the end of the flow phase, if there is exactly one dump."""
    flow_files = sorted(phases_dir.glob("*.flow.mlir"))
    return flow_files[0].read_text(errors="replace") if len(flow_files) == 1 else None


def _regions(flow: str) -> list[tuple[str, str, str]]:
    """The module-level ops of a flow dump as (op, symbol, text): `util.initializer`,
    `util.func` (symbol `decode`, `main`, ...), `flow.executable`, `util.global`."""
    regions: list[tuple[str, str, list[str]]] = []
    for line in flow.splitlines():
        if line.startswith("  ") and not line.startswith("   ") and not line.startswith("  }"):
            symbol = _SYMBOL_RE.search(line)
            regions.append((line.split(maxsplit=1)[0], symbol.group(1) if symbol else "", []))
        if regions:
            regions[-1][2].append(line)
    return [(op, symbol, "\n".join(lines)) for op, symbol, lines in regions]


def _per_call(regions: list[tuple[str, str, str]]) -> list[str]:
    """The functions a decode call runs: the module's `decode` entry point where it has
    one (one module of a point's graphs, `workers.model.export.ModuleSpec`), else all."""
    funcs = [(symbol, text) for op, symbol, text in regions if op == "util.func"]
    decode = [text for symbol, text in funcs if _of_decode(symbol)]
    return decode or [text for _, text in funcs]


def _of_decode(symbol: str) -> bool:
    """The decode entry point of a module of graphs, or one of its functions left uninlined
    (`workers.model.parameters.one_module` names them `decode__...`)."""
    return symbol == GraphKind.DECODE or symbol.startswith(f"{GraphKind.DECODE}__")


def _count_dispatches(phases_dir: Path) -> int | None:
    """Counts `flow.dispatch` ops in a call's functions (the decode entry point of one
    module of several graphs) in the IR dumped at the end of the flow phase."""
    flow = _flow_text(phases_dir)
    if flow is None:
        return None
    regions = _regions(flow)
    if not any(_of_decode(symbol) for _, symbol, _ in regions):
        return len(_FLOW_DISPATCH_RE.findall(flow))
    return sum(len(_FLOW_DISPATCH_RE.findall(text)) for text in _per_call(regions))


def _dispatch_names(phases_dir: Path) -> tuple[str, ...] | None:
    """The names of the dispatches (executable exports) in the flow-phase dump."""
    flow = _flow_text(phases_dir)
    return None if flow is None else tuple(_FLOW_EXPORT_RE.findall(flow))


def _packings(phases_dir: Path) -> dict[str, int | None]:
    """How many packings (`flow.tensor.encode`) the flow phase put in initializers and how
    many in the functions a call runs: the proof that data tiling packed a weight at load."""
    flow = _flow_text(phases_dir)
    if flow is None:
        return {"num_packed_at_load": None, "num_packed_per_call": None}
    regions = _regions(flow)
    at_load = sum(
        text.count("flow.tensor.encode") for op, _, text in regions if op == "util.initializer"
    )
    per_call = sum(text.count("flow.tensor.encode") for text in _per_call(regions))
    return {"num_packed_at_load": at_load, "num_packed_per_call": per_call}


def _cache_paths(cache_dir: Path, key: str) -> tuple[Path, Path]:
    shard = cache_dir / key[:2]
    return shard / f"{key}.vmfb", shard / f"{key}.json"


# A crash the compiler causes itself (not a kill from outside, such as the OOM killer).
_COMPILER_CRASHES = (-signal.SIGSEGV, -signal.SIGABRT, -signal.SIGILL, -signal.SIGFPE)


def _deterministic_failure(result: CompileResult) -> bool:
    """An error exit or a crash of the compiler's own making; never a timeout or a kill."""
    rc = result.returncode
    return (
        result.error_class == Status.COMPILE_ERROR
        and rc is not None
        and (rc > 0 or rc in _COMPILER_CRASHES)
    )


def _load_cached(cache_dir: Path, key: str) -> CompileResult | None:
    """The cached result for `key`, or None when absent or damaged."""
    vmfb_path, meta_path = _cache_paths(cache_dir, key)
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("ok") is False:
            return dataclasses.replace(
                CompileResult.failed(
                    Status.COMPILE_ERROR, meta["error_message"], command=meta["command"]
                ),
                key=key,
                compile_s=meta["compile_s"],
                returncode=meta["returncode"],
                cache_hit=True,
            )
        vmfb = vmfb_path.read_bytes()
        if hashlib.sha256(vmfb).hexdigest() != meta["vmfb_sha256"]:
            return None
        return CompileResult(
            ok=True,
            key=key,
            vmfb=vmfb,
            compile_s=meta["compile_s"],
            num_dispatches=meta["num_dispatches"],
            dispatch_names=_names_of(meta.get("dispatch_names")),
            num_packed_at_load=meta.get("num_packed_at_load"),
            num_packed_per_call=meta.get("num_packed_per_call"),
            cache_hit=True,
            command=meta["command"],
            error_class=None,
            error_message=None,
            returncode=0,
        )
    except (OSError, ValueError, KeyError):
        return None


def _names_of(value: object) -> tuple[str, ...] | None:
    return tuple(str(n) for n in value) if isinstance(value, list) else None


def _store_cached(cache_dir: Path, result: CompileResult) -> None:
    """Writes the vmfb, then its metadata, each atomically; the metadata marks the entry done.

    Concurrent writers of one key each replace whole files, so a reader sees an
    old or a new file, never a torn one. A failed write only loses the caching. A
    failure is metadata alone (`ok: false`, with the compiler's message).
    """
    vmfb_path, meta_path = _cache_paths(cache_dir, result.key)
    if not result.ok:
        failure = {
            "ok": False,
            "compile_s": result.compile_s,
            "command": result.command,
            "returncode": result.returncode,
            "error_message": result.error_message,
            "compiler": compiler_version(),
        }
        try:
            atomic_write(meta_path, json.dumps(failure, indent=1).encode())
        except OSError as exc:
            logger.warning("could not cache compile %s in %s: %s", result.key, cache_dir, exc)
        return
    assert result.vmfb is not None
    meta = {
        "compile_s": result.compile_s,
        "num_dispatches": result.num_dispatches,
        "dispatch_names": result.dispatch_names,
        "num_packed_at_load": result.num_packed_at_load,
        "num_packed_per_call": result.num_packed_per_call,
        "command": result.command,
        "compiler": compiler_version(),
        "vmfb_sha256": hashlib.sha256(result.vmfb).hexdigest(),
    }
    try:
        atomic_write(vmfb_path, result.vmfb)
        atomic_write(meta_path, json.dumps(meta, indent=1).encode())
        _record_compiler(cache_dir)
    except OSError as exc:
        logger.warning("could not cache compile %s in %s: %s", result.key, cache_dir, exc)
