"""Compile here, benchmark there: a self-contained bundle for an offline host.

    python -m sweep.bundle +grid=phase2b [overrides] --out DIR [--python 3.12]
                           [--platform manylinux_2_28_x86_64] [--part-mb 60]

On a machine with iree-compile and the network, this writes DIR with everything a
host that has only Python, numpy, pyarrow, rich, safetensors and JAX needs to run the
sweep there, with no network and no compiler:

    cache/     every graph the grid needs for its devices, compiled here into the
               content-addressed compile cache, with the export memo that maps each
               graph to its cache key (`workers.compile.iree`): the host never exports or
               compiles (`compile=cache_only`)
    wheels/    what the sweep needs beyond that host's packages, for its Python and
               platform (`pip download`): ray, hydra-core, iree-base-runtime, duckdb and
               their dependencies, at the versions installed here
    project/   this project's source (sweep/, workers/, conf/)
    model/     the checkpoint, when the grid names one (synthetic weights need none)
    run.sh     reassembles split files and checks every file's sha256, installs the
               wheels the host lacks into DIR/site (no network), runs the sweep in
               cache-only mode and writes its Parquet and report where asked
    manifest.json  what was bundled, with every file's sha256 and parts

Any file over `--part-mb` (default 60 MB, a transfer's limit) is split into parts
(`NAME.part000`, ...), so every file of DIR fits one transfer. On the host:

    ./run.sh [RESULTS_DIR] [more sweep overrides]        # PYTHON=python3.12 by default

A `target-cpu=host` CPU graph runs only on a CPU like this one (its cache key holds
the CPU's id; another CPU finds it "not prepared"); for another CPU, bundle with an
explicit target, e.g. `'devices.cpu.target_flags=[--iree-hal-target-device=local,
--iree-hal-local-target-device-backends=llvm-cpu,--iree-llvmcpu-target-cpu=znver4]'`.

The host side (`--unpack`) uses the standard library only: it runs before the wheels
are installed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

# What the sweep imports beyond the host's own packages (numpy, pyarrow, rich,
# safetensors, jax), pinned to the versions installed here; pip adds their dependencies.
# gguf: the config reads GGUF block facts from its tables (workers/formats/gguf_blocks.py).
BUNDLED = ("ray", "hydra-core", "iree-base-runtime", "duckdb", "gguf")
PROJECT_PARTS = ("sweep", "workers", "conf", "pyproject.toml", "README.md")
PART_SUFFIX = ".part"
MANIFEST = "manifest.json"


class BundleError(Exception):
    """A bundle that cannot be made or unpacked: the message says why and what to do."""


# --- building (here) -------------------------------------------------------------------


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m sweep.bundle",
        description="Compile a grid's graphs and pack them with what an offline host needs.",
    )
    parser.add_argument("--out", type=Path, help="the bundle's folder (created)")
    parser.add_argument(
        "--python",
        default=f"{sys.version_info.major}.{sys.version_info.minor}",
        help="the host's Python version (default: this one's)",
    )
    parser.add_argument(
        "--platform",
        default=f"manylinux_2_28_{platform.machine()}",
        help="the host's wheel platform tag (default: %(default)s)",
    )
    parser.add_argument("--part-mb", type=float, default=60.0, help="largest file, in MB")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiles")
    parser.add_argument("--unpack", type=Path, metavar="DIR", help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args(argv)
    unknown = [o for o in overrides if o.startswith("-")]
    if unknown:
        parser.error(f"unknown option(s) {unknown}")
    if args.unpack is None and args.out is None:
        parser.error("--out DIR is required")
    return args, overrides


def build(args: argparse.Namespace, overrides: list[str]) -> Path:
    from sweep.plan.config import load_config
    from sweep.plan.grid import expand
    from sweep.run import checked_model, resolve_inputs

    out: Path = args.out.resolve()
    if out.exists() and any(out.iterdir()):
        raise BundleError(f"--out {out} exists and is not empty: name a new folder")
    cfg, _ = load_config([*overrides, "compile=auto"])
    cfg = resolve_inputs(cfg, sys.stdout)
    model_cfg = checked_model(cfg)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "cache"
    from sweep.plan.eval_text import eval_spec

    points = expand(cfg, cfg.model.weights_id(cache), eval_spec(cfg, sys.stdout))
    jobs = sorted(
        {(g, p.device, p.flags) for p in points if p.compiled_by_iree for g in p.graphs(model_cfg)},
        key=lambda j: (j[1].name, j[0].label, j[2]),
    )
    print(f"bundle {out}: grid {cfg.grid.name}, {len(points)} points, {len(jobs)} graphs")
    failed = compile_all(
        jobs, cache, args.jobs, cfg.bench.compile_timeout_s, cfg.bench.compile_max_memory_gb
    )
    shutil.rmtree(cache / "work", ignore_errors=True)  # the compiler's inputs and dumps
    for lock in cache.rglob("*.lock"):
        lock.unlink()
    notes = host_cpu_notes(cfg)
    copy_project(out / "project")
    extra = []
    if cfg.model.path:
        source = Path(cfg.model.path)
        if source.is_file():  # a GGUF file: the bundle's model folder holds just it
            (out / "model").mkdir()
            shutil.copy2(source, out / "model" / source.name)
        else:
            shutil.copytree(source, out / "model")
        extra.append("model.path=$BUNDLE/model")
        extra += ["model.repo=null"] if cfg.model.repo else []
    fetch_wheels(out / "wheels", args.python, args.platform)
    files = split_large(out, int(args.part_mb * 1e6))
    write_manifest(out, cfg, overrides, args, files, len(jobs), failed, notes)
    write_run_sh(out, [*overrides, *extra], args.python)
    total = sum(f["bytes"] for f in files)
    largest = max(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(
        f"bundle {out}: {total / 1e6:.0f} MB in {len(files)} files, largest piece "
        f"{largest / 1e6:.1f} MB; on the host: {out.name}/run.sh [RESULTS_DIR]"
    )
    for note in notes:
        print(f"note: {note}")
    return out


def compile_all(
    jobs: list[Any],
    cache: Path,
    num_jobs: int,
    timeout_s: float,
    max_memory_gb: float | None = None,
) -> list[str]:
    """Compiles every job into `cache`; returns the labels of the ones that failed (the
    host will record them as compile_error rows, as a sweep here would)."""
    from workers.compile.iree import compile_graph

    def one(job: Any) -> tuple[Any, Any]:
        graph, device, flags = job
        result = compile_graph(
            graph,
            device,
            flags,
            cache_dir=cache,
            timeout_s=timeout_s,
            max_memory_gb=max_memory_gb,
        )
        return job, result

    failed = []
    with concurrent.futures.ThreadPoolExecutor(max(1, num_jobs)) as pool:
        for i, (job, result) in enumerate(pool.map(one, jobs), 1):
            graph, device, flags = job
            what = f"{graph.label} {device.name} {' '.join(flags) or '(default flags)'}"
            if result.ok:
                how = "cached" if result.cache_hit else f"compiled in {result.compile_s:.1f} s"
                print(f"[{i}/{len(jobs)}] {what}: {how}", flush=True)
            else:
                failed.append(what)
                headline = (result.error_message or "").strip().splitlines()[:1]
                print(f"[{i}/{len(jobs)}] {what}: {result.error_class} {headline}", flush=True)
    return failed


def host_cpu_notes(cfg: Any) -> list[str]:
    from workers.compile.iree import host_cpu_id, targets_host

    notes = []
    for name in cfg.grid.devices:
        device = cfg.devices[name]
        if targets_host(device.target_flags):
            notes.append(
                f"device {name!r} compiles for this host's CPU (target-cpu=host, cpu id "
                f"{host_cpu_id()}): its graphs load only on a host with the same CPU; for "
                f"another, bundle with devices.{name}.target_flags naming its CPU"
            )
    return notes


def copy_project(dest: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in PROJECT_PARTS:
        source = root / part
        if source.is_dir():
            shutil.copytree(source, dest / part, ignore=ignore)
        elif source.is_file():
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / part)


def fetch_wheels(dest: Path, python: str, platform_tag: str) -> None:
    """`pip download` of BUNDLED (at this machine's versions) and their dependencies for
    the host's Python and platform.

    A pure-Python dependency published only as an sdist (antlr4-python3-runtime, which
    hydra-core pins) is built into a wheel here first. The pinned distributions are
    checked for wheels without their dependencies, before the resolve: in a resolve,
    pip reports a missing wheel as "no matching distribution" or, as pip 23.2 does (what
    `python3 -m venv` ships on Python 3.11 and 3.12), as a conflict that names no package.
    """
    dest.mkdir(parents=True, exist_ok=True)
    constraints = dest.parent / "constraints.txt"
    constraints.write_text("\n".join(_installed_pins()) + "\n")
    target = [
        "--only-binary=:all:",
        f"--python-version={python}",
        *(f"--platform={tag}" for tag in platform_tags(platform_tag)),
        "--implementation=cp",
        f"--dest={dest}",
    ]

    def without_wheel(pins: list[str]) -> list[str]:
        """The pins with no wheel for the host: one pip call when all have one, else
        halves, down to single pins (pip's exit code is all that is read)."""
        if not pins or _pip("download", "--no-deps", *target, *pins).returncode == 0:
            return []
        if len(pins) == 1:
            return pins
        half = len(pins) // 2
        return without_wheel(pins[:half]) + without_wheel(pins[half:])

    try:
        for pin in without_wheel(_required_pins(BUNDLED, python)):
            build_pure_wheel(pin, dest, f"Python {python} on {platform_tag}")
            print(f"bundle: {pin} has no wheel for the host: built from its sdist", flush=True)
        wanted = [f"{name}=={metadata.version(name)}" for name in BUNDLED]
        proc = _pip(
            "download", *target, f"--constraint={constraints}", f"--find-links={dest}", *wanted
        )
        if proc.returncode != 0:  # pip explains a conflict on stdout
            raise BundleError(f"pip download failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    finally:
        constraints.unlink(missing_ok=True)


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


_MANYLINUX = re.compile(r"manylinux_2_(\d+)_(\w+)")
_LEGACY_MANYLINUX = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}


def platform_tags(tag: str) -> list[str]:
    """A manylinux tag and every older one a host of that glibc also runs (pip does not
    widen `--platform` itself): manylinux_2_28_x86_64 takes a manylinux2014 wheel too."""
    match = _MANYLINUX.fullmatch(tag)
    if match is None:
        return [tag]
    newest, arch = int(match.group(1)), match.group(2)
    tags = []
    for minor in range(newest, 4, -1):
        tags.append(f"manylinux_2_{minor}_{arch}")
        if minor in _LEGACY_MANYLINUX:
            tags.append(f"{_LEGACY_MANYLINUX[minor]}_{arch}")
    return tags


def _installed_pins() -> list[str]:
    """`name==version` of this environment's distributions (not editable ones, such as
    this project): the host gets the versions tested here."""
    pins = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
        if name and not direct.get("dir_info", {}).get("editable"):
            pins[name.lower()] = f"{name}=={dist.version}"
    return sorted(pins.values())


def _required_pins(names: tuple[str, ...], python: str) -> list[str]:
    """`name==version` of `names` and all they require, as installed here, with the
    requirements' markers taken for the host's Python (extras left out, as pip does)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    environment = {"extra": "", "python_version": python, "python_full_version": f"{python}.0"}
    pins: dict[str, str] = {}
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in pins:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # needed on the host's Python only: the resolve fetches it
        pins[name] = f"{dist.metadata['Name']}=={dist.version}"
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                todo.append(requirement.name)
    return sorted(pins.values())


def build_pure_wheel(requirement: str, dest: Path, host: str) -> None:
    """Builds `requirement`'s sdist into a wheel in `dest`. Only a pure-Python wheel
    (tagged `none-any`) built here runs on the host; any other is refused."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = _pip("wheel", "--no-deps", f"--wheel-dir={tmp}", requirement)
        built = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not built:
            raise BundleError(
                f"{requirement}: no wheel for {host}, and its sdist could not be built "
                f"here:\n{(proc.stdout + proc.stderr)[-3000:]}"
            )
        wheel = built[0]
        if not wheel.name.endswith("-none-any.whl"):
            raise BundleError(
                f"{requirement}: no wheel for {host}, and it is not pure Python (its sdist "
                f"builds {wheel.name} here, which runs only on this Python and platform): "
                "bundle for a host it publishes wheels for (--python, --platform)"
            )
        shutil.move(wheel, dest / wheel.name)


def split_large(root: Path, part_bytes: int) -> list[dict[str, Any]]:
    """Every file under `root` with its sha256; files over `part_bytes` are replaced by
    parts of at most that size."""
    files = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        size = path.stat().st_size
        entry = {"path": path.relative_to(root).as_posix(), "bytes": size, "sha256": _sha256(path)}
        if size > part_bytes:
            parts = []
            with path.open("rb") as f:
                while chunk := f.read(part_bytes):
                    part = path.with_name(f"{path.name}{PART_SUFFIX}{len(parts):03d}")
                    part.write_bytes(chunk)
                    parts.append(part.name)
            path.unlink()
            entry["parts"] = parts
        files.append(entry)
    return files


def write_manifest(
    out: Path,
    cfg: Any,
    overrides: list[str],
    args: argparse.Namespace,
    files: list[dict[str, Any]],
    num_graphs: int,
    failed: list[str],
    notes: list[str],
) -> None:
    from workers.compile.iree import compiler_version

    manifest = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "grid": cfg.grid.name,
        "devices": list(cfg.grid.devices),
        "overrides": overrides,
        "python": args.python,
        "platform": args.platform,
        "compiler": compiler_version(),
        "num_graphs": num_graphs,
        "failed_graphs": failed,
        "notes": notes,
        "files": files,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


RUN_SH = """#!/usr/bin/env bash
# Made by `python -m sweep.bundle` on {date}: grid {grid} for {devices}, compiled
# with {compiler}. See manifest.json and docs/deploy.md, "On a GPU host without internet".
#
#   ./run.sh [RESULTS_DIR] [more sweep overrides]     (PYTHON={python} by default)
#
# Reassembles split files and checks them, installs the wheels this host lacks into
# site/ (no network), runs the sweep with every graph from cache/ (compile=cache_only),
# and writes the Parquet and report.md into RESULTS_DIR (default: results/ here).
set -euo pipefail
BUNDLE="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
PYTHON="${{PYTHON:-{python}}}"
RESULTS="${{1:-$BUNDLE/results}}"
if [ $# -gt 0 ]; then shift; fi
mkdir -p "$RESULTS" && RESULTS="$(cd "$RESULTS" && pwd)"
export PYTHONPATH="$BUNDLE/site:$BUNDLE/project${{PYTHONPATH:+:$PYTHONPATH}}"
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
cd "$BUNDLE/project"
"$PYTHON" -m sweep.bundle --unpack "$BUNDLE"
status=0
"$PYTHON" -m sweep {overrides} compile=cache_only "cache_dir=$BUNDLE/cache" \\
    "results_dir=$RESULTS" "$@" || status=$?
"$PYTHON" -m sweep.report --results "$RESULTS" --out "$RESULTS/report.md" || true
exit $status
"""


def write_run_sh(out: Path, overrides: list[str], python: str) -> None:
    manifest = json.loads((out / MANIFEST).read_text())
    quoted = " ".join(
        f'"{o}"' if "$BUNDLE" in o else shlex.quote(o) for o in overrides
    )  # "$BUNDLE/..." must expand on the host
    script = RUN_SH.format(
        date=manifest["created"],
        grid=manifest["grid"],
        devices=", ".join(manifest["devices"]),
        compiler=manifest["compiler"],
        python=f"python{python}",
        overrides=quoted,
    )
    path = out / "run.sh"
    path.write_text(script)
    path.chmod(0o755)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# --- unpacking (there; the standard library only) --------------------------------------


def unpack(bundle: Path) -> None:
    """Reassembles split files, checks every file against the manifest, and installs the
    wheels whose distributions this Python lacks into `bundle/site`."""
    manifest = json.loads((bundle / MANIFEST).read_text())
    for entry in manifest["files"]:
        path = bundle / entry["path"]
        if entry.get("parts") and not path.exists():
            joined = path.with_name(path.name + ".joining")
            with joined.open("wb") as f:
                for part in entry["parts"]:
                    f.write((path.parent / part).read_bytes())
            joined.replace(path)
        if not path.is_file() or path.stat().st_size != entry["bytes"]:
            raise BundleError(
                f"{entry['path']}: missing or incomplete; copy it (or its parts) again"
            )
        if _sha256(path) != entry["sha256"]:
            raise BundleError(f"{entry['path']}: sha256 differs from the manifest; copy it again")
    site = bundle / "site"
    marker = site / ".installed"
    stamp = hashlib.sha256(json.dumps(manifest["files"]).encode()).hexdigest()
    if marker.is_file() and marker.read_text() == stamp:
        return
    wheels = sorted((bundle / "wheels").glob("*.whl"))
    have, lack = [], []
    for wheel in wheels:
        (have if _distribution_present(wheel, site) else lack).append(wheel)
    print(
        f"bundle: {len(lack)} wheels to install into {site}, "
        f"{len(have)} already here ({', '.join(_dist_name(w) for w in have) or 'none'})",
        flush=True,
    )
    site.mkdir(exist_ok=True)
    _install(lack, site)
    marker.write_text(stamp)


def _dist_name(wheel: Path) -> str:
    return wheel.name.split("-")[0]


def _distribution_present(wheel: Path, site: Path) -> bool:
    """The host already has this distribution (any version), outside the bundle's site."""
    try:
        dist = metadata.distribution(_dist_name(wheel))
    except metadata.PackageNotFoundError:
        return False
    located = Path(str(dist.locate_file(""))).resolve()
    return site.resolve() not in (located, *located.parents)


def _install(wheels: list[Path], site: Path) -> None:
    if not wheels:
        return
    pip = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet"]
    if subprocess.run([*pip[:3], "--version"], capture_output=True).returncode == 0:
        subprocess.run([*pip, "--target", str(site), *map(str, wheels)], check=True)
        return
    for wheel in wheels:  # no pip on the host: a wheel is a zip laid out for site-packages
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.unpack is not None:  # on the host, before hydra and the rest are installed
        try:
            unpack(args.unpack.resolve())
        except BundleError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    from sweep.plan.config import ConfigError

    try:
        build(args, overrides)
    except (BundleError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
