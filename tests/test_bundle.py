"""Compile here, benchmark there: the smoke bundle run by its own run.sh, as on an offline host.

The bundle is built with the pip `python -m venv` ships (ensurepip's: 23.2.1 on Python
3.11.7), not an upgraded one, as a new user following the README has it.

The "host" is a fresh venv holding only what the issue's GPU host has (jax, numpy,
pyarrow, rich, safetensors), installed from the package index before the bundle
runs; run.sh itself gets no index (PIP_NO_INDEX) and no iree-compile (neither the
compiler package nor this venv's bin/ on PATH), and must install its wheels from the
bundle and take every graph from the bundle's cache.
"""

from __future__ import annotations

import ensurepip
import json
import os
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest

from sweep.offline.bundle import BundleError, build_pure_wheel, split_large, unpack
from sweep.store.results import read_results
from tests.helpers import ROOT

HOST_PACKAGES = ("jax", "jaxlib", "numpy", "pyarrow", "rich", "safetensors")


def test_large_files_travel_in_parts_and_come_back_checked(tmp_path: Path):
    bundle = tmp_path / "bundle"
    (bundle / "wheels").mkdir(parents=True)
    big = os.urandom(2500)
    (bundle / "wheels" / "big.bin").write_bytes(big)
    (bundle / "small.txt").write_text("small")
    files = split_large(bundle, part_bytes=1000)
    (entry,) = [f for f in files if f["path"] == "wheels/big.bin"]
    assert entry["parts"] == ["big.bin.part000", "big.bin.part001", "big.bin.part002"]
    assert not (bundle / "wheels" / "big.bin").exists()
    assert max(p.stat().st_size for p in bundle.rglob("*") if p.is_file()) <= 1000
    (bundle / "manifest.json").write_text(json.dumps({"files": files}))
    unpack(bundle)
    assert (bundle / "wheels" / "big.bin").read_bytes() == big
    (bundle / "small.txt").write_text("smaLL")
    with pytest.raises(BundleError, match="small.txt: sha256 differs"):
        unpack(bundle)


def venv_with_shipped_pip(path: Path) -> Path:
    """A fresh venv's python, with the pip that `python -m venv` installs (not upgraded),
    seeing this venv's packages through a .pth file (no install: iree-compile, JAX...)."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    python = path / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = subprocess.run([python, "-m", "pip", "--version"], capture_output=True, text=True)
    assert pip.stdout.startswith(f"pip {ensurepip.version()} from {path}"), pip.stdout
    return python


@pytest.mark.slow
def test_an_sdist_that_builds_a_platform_wheel_is_refused_by_name(tmp_path: Path):
    project = tmp_path / "platformonly"
    project.mkdir()
    (project / "setup.py").write_text(
        "from setuptools import setup\n"
        "from setuptools.dist import Distribution\n\n"
        "class Binary(Distribution):  # tagged for this Python and platform, as with C code\n"
        "    def has_ext_modules(self):\n"
        "        return True\n\n"
        "setup(name='platformonly', version='1.0', py_modules=[], distclass=Binary)\n"
    )
    dest = tmp_path / "wheels"
    dest.mkdir()
    with pytest.raises(BundleError, match=r"platformonly: no wheel for Python 3\.12 .* not pure"):
        build_pure_wheel(str(project), dest, "Python 3.12 on manylinux_2_28_x86_64")
    assert not list(dest.iterdir()), "a platform wheel never lands in the bundle"


@pytest.mark.slow
def test_smoke_bundle_runs_offline_from_its_cache(tmp_path: Path):
    bundle = tmp_path / "bundle"
    build = subprocess.run(
        [
            venv_with_shipped_pip(tmp_path / "builder"),
            "-m",
            "sweep.bundle",
            "+grid=smoke",
            "grid.devices=[cpu]",
            "grid.prompt_lengths=[8]",  # 4 points, 8 graphs: the suite's time
            "--out",
            str(bundle),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["num_graphs"] == 8 and not manifest["failed_graphs"], manifest
    assert max(p.stat().st_size for p in bundle.rglob("*") if p.is_file()) <= 60e6
    assert any(f.get("parts") for f in manifest["files"]), "the ray wheel travels in parts"
    assert not (bundle / "cache" / "work").exists()
    # hydra-core's antlr4-python3-runtime 4.9.3 is an sdist only: built here, pure Python
    assert list((bundle / "wheels").glob("antlr4_python3_runtime-4.9.3-py3-none-any.whl"))

    host = tmp_path / "host"
    subprocess.run([sys.executable, "-m", "venv", str(host)], check=True)
    pins = [f"{name}=={metadata.version(name)}" for name in HOST_PACKAGES]
    subprocess.run(
        [str(host / "bin" / "python"), "-m", "pip", "install", "-q", *pins],
        check=True,
        capture_output=True,
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL")
    }
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != venv_bin)
    env.update(PYTHON=str(host / "bin" / "python"), PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull)
    results = tmp_path / "results"
    ran = subprocess.run(
        [str(bundle / "run.sh"), str(results)], capture_output=True, text=True, env=env
    )
    assert ran.returncode == 0, ran.stdout[-4000:] + ran.stderr[-4000:]
    rows = read_results(results).to_pylist()
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}, ran.stdout[-3000:]
    assert all(r["compile_cache_hit"] for r in rows), "every graph from the bundle's cache"
    assert (results / "report.md").read_text().count("| fp32") >= 1
    installed = {p.name.split("-")[0].lower() for p in (bundle / "site").glob("*.dist-info")}
    assert {"ray", "hydra_core", "iree_base_runtime"} <= installed
    assert not installed & {"jax", "numpy", "pyarrow"}, "the host's own packages are kept"
