"""Real iree-compile on a tiny exported graph: results, numerics, failures, bounds, cache.

The graph has the three ops the decode graph depends on (a matmul, a
dynamic_update_slice into a cache, an argmax), so a lowering regression in any of
them shows up here in seconds rather than in a sweep.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks._common import processes
from tests.helpers import device
from workers.compile import iree as wc

CPU = device("cpu")
CUDA = device("cuda")
# The CPU device compiled for a named CPU instead of "host": a portable vmfb.
ZNVER3 = dataclasses.replace(
    CPU, target_flags=(*CPU.target_flags[:-1], "--iree-llvmcpu-target-cpu=znver3")
)
SEQ, WIDTH = 8, 16


def _tiny_step(x, w, cache, pos):
    import jax.numpy as jnp
    from jax import lax

    h = jnp.tanh(x @ w)  # (1, WIDTH)
    cache = lax.dynamic_update_slice(cache, h, (pos, 0))  # (SEQ, WIDTH)
    scores = (cache @ w.T).sum(0)  # (WIDTH,)
    return cache, jnp.argmax(scores).astype(jnp.int32)


@pytest.fixture(scope="module")
def stablehlo() -> str:
    import jax
    import jax.numpy as jnp

    args = (
        jax.ShapeDtypeStruct((1, WIDTH), jnp.float32),
        jax.ShapeDtypeStruct((WIDTH, WIDTH), jnp.float32),
        jax.ShapeDtypeStruct((SEQ, WIDTH), jnp.float32),
        jax.ShapeDtypeStruct((), jnp.int32),
    )
    exported = jax.export.export(jax.jit(_tiny_step, keep_unused=True), platforms=["cpu"])(*args)
    text = exported.mlir_module()
    assert "custom_call" not in text, "export must not contain custom_calls IREE cannot lower"
    return text


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compile_cache")


@pytest.fixture(scope="module")
def cpu_result(stablehlo: str, cache_dir: Path) -> wc.CompileResult:
    return wc.compile_stablehlo(stablehlo, CPU, cache_dir=cache_dir)


def _flow_dispatch_count(stablehlo: str, tmp_path: Path) -> int:
    """The reference count: a separate compile stopped after the flow phase."""
    src, out = tmp_path / "ref.mlir", tmp_path / "ref.flow.mlir"
    src.write_text(stablehlo)
    cmd = [wc.iree_compile_path(), str(src), "--iree-input-type=stablehlo", *CPU.target_flags]
    subprocess.run([*cmd, "--compile-to=flow", "-o", str(out)], check=True)
    return out.read_text().count("flow.dispatch ")


@pytest.mark.slow  # iree-compile
def test_cpu_compile_counts_dispatches(
    cpu_result: wc.CompileResult, stablehlo: str, tmp_path: Path
) -> None:
    assert cpu_result.ok, cpu_result.error_message
    assert cpu_result.vmfb and not cpu_result.cache_hit and cpu_result.error_class is None
    assert cpu_result.command.split()[0] == wc.iree_compile_path()
    assert "--iree-llvmcpu-target-cpu=host" in cpu_result.command
    assert cpu_result.num_dispatches is not None and cpu_result.num_dispatches >= 1
    assert cpu_result.num_dispatches == _flow_dispatch_count(stablehlo, tmp_path), (
        "dispatch count from the phase dump disagrees with a --compile-to=flow run"
    )


@pytest.mark.slow  # iree-compile
def test_cpu_vmfb_matches_jax(cpu_result: wc.CompileResult) -> None:
    import iree.runtime as ireert
    import jax

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, WIDTH), dtype=np.float32)
    w = rng.standard_normal((WIDTH, WIDTH), dtype=np.float32)
    cache = rng.standard_normal((SEQ, WIDTH), dtype=np.float32)
    pos = np.int32(3)
    module = ireert.load_vm_flatbuffer(cpu_result.vmfb, driver=CPU.driver)
    got_cache, got_token = (r.to_host() for r in module.main(x, w, cache, pos))
    want_cache, want_token = jax.jit(_tiny_step)(x, w, cache, pos)
    np.testing.assert_allclose(got_cache, np.asarray(want_cache), rtol=1e-5, atol=1e-5)
    assert int(got_token) == int(want_token)


@pytest.mark.slow  # iree-compile
def test_cuda_cross_compiles_without_gpu(stablehlo: str) -> None:
    result = wc.compile_stablehlo(stablehlo, CUDA)
    assert result.ok, result.error_message
    assert result.vmfb and result.num_dispatches
    assert "--iree-cuda-target" not in result.command, "cuda must use IREE's default PTX target"


@pytest.mark.slow  # iree-compile
def test_unknown_flag_is_a_structured_compile_error_and_is_not_retried(
    stablehlo: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = wc.compile_stablehlo(stablehlo, CPU, ["--iree-no-such-flag"], cache_dir=tmp_path)
    assert not result.ok and result.vmfb is None and not result.cache_hit
    assert result.error_class == "compile_error"
    assert result.returncode not in (None, 0)
    assert result.error_message.startswith("iree-compile failed (exit code")
    assert "--iree-no-such-flag" in result.error_message
    assert "--iree-no-such-flag" in result.command

    def no_compiler(*args, **kwargs):
        raise AssertionError("a cached compile error must not run iree-compile again")

    monkeypatch.setattr(subprocess, "Popen", no_compiler)
    again = wc.compile_stablehlo(stablehlo, CPU, ["--iree-no-such-flag"], cache_dir=tmp_path)
    assert again.cache_hit and not again.ok and again.error_class == "compile_error"
    assert (again.error_message, again.returncode) == (result.error_message, result.returncode)


def _leftover_compilers(marker: str) -> list[str]:
    """iree-compile processes that are our children (zombies too) or mention `marker`."""
    found = []
    for pid, (stat_bytes, cmdline_bytes) in processes("stat", "cmdline"):
        stat, cmdline = stat_bytes.decode(), cmdline_bytes.replace(b"\0", b" ").decode()
        comm, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat.rsplit(")", 1)[1].split()
        ppid = int(fields[1])
        if (ppid == os.getpid() and comm.startswith("iree-compile")) or marker in cmdline:
            found.append(f"{pid} {comm} {cmdline[:200]}")
    return found


@pytest.mark.slow  # iree-compile
def test_timeout_kills_the_compiler(stablehlo: str, tmp_path: Path) -> None:
    work_dir = tmp_path / "timeout_work"
    start = time.perf_counter()
    result = wc.compile_stablehlo(stablehlo, CPU, timeout_s=0.05, work_dir=work_dir)
    assert time.perf_counter() - start < 5, "the timeout did not stop the compile"
    assert not result.ok and result.error_class == "compile_timeout"
    assert result.returncode is None and result.vmfb is None
    assert _leftover_compilers(str(work_dir)) == [], "iree-compile outlived its timeout"
    assert not list(work_dir.glob("*.phases/*.vm.mlir")), "the compile ran to its last phase"
    assert not list(work_dir.glob("*.vmfb")), "a killed compile must not leave a (partial) vmfb"


# A hand-written module: no JAX export, so the memory-bound tests stay in the fast tier.
MATVEC = """func.func @main(%w: tensor<16x16xf32>, %x: tensor<16xf32>) -> tensor<16xf32> {
  %y = stablehlo.dot_general %w, %x, contracting_dims = [1] x [0]
    : (tensor<16x16xf32>, tensor<16xf32>) -> tensor<16xf32>
  return %y : tensor<16xf32>
}
"""


def test_memory_bound_kills_the_compiler_and_says_which_knob(tmp_path: Path) -> None:
    """A real iree-compile (about 150 MB resident on this module) under a 20 MB bound."""
    cache, work_dir = tmp_path / "cache", tmp_path / "memory_work"
    start = time.perf_counter()
    result = wc.compile_stablehlo(
        MATVEC, CPU, max_memory_gb=0.02, cache_dir=cache, work_dir=work_dir
    )
    assert time.perf_counter() - start < 5, "the memory bound did not stop the compile"
    assert not result.ok and result.error_class == "compile_error" and result.returncode is None
    assert result.error_message.startswith("iree-compile passed 0.02 GB of memory")
    assert "raise bench.compile_max_memory_gb" in result.error_message
    assert _leftover_compilers(str(work_dir)) == [], "iree-compile outlived its memory bound"
    assert not list(work_dir.glob("*.vmfb")), "a killed compile must not leave a (partial) vmfb"
    assert not list(cache.rglob("*.json")), "a memory kill is no verdict on the graph: not cached"
    fits = wc.compile_stablehlo(MATVEC, CPU, max_memory_gb=12, cache_dir=cache)
    assert fits.ok and not fits.cache_hit, fits.error_message


# A parent whose child holds 200 MB for a minute: the bound must count the whole tree.
_HOG = (
    "import subprocess, sys; subprocess.run([sys.executable, '-c', "
    "'import time; b = bytearray(200_000_000); time.sleep(60)'])"
)


def test_memory_bound_counts_the_children_too() -> None:
    from workers.compile.bounded import Bound, run_bounded

    start = time.perf_counter()
    finished = run_bounded([sys.executable, "-c", _HOG], timeout_s=30, max_rss_bytes=100_000_000)
    assert time.perf_counter() - start < 10, "the bound missed the grandchild's memory"
    assert finished.killed_by == Bound.MEMORY and finished.returncode is None
    assert finished.peak_rss_bytes is not None and finished.peak_rss_bytes > 100_000_000
    assert _leftover_compilers("b = bytearray(200_000_000)") == [], "the child outlived the kill"


@pytest.mark.slow  # iree-compile
def test_cache_hit_skips_the_compiler(
    cpu_result: wc.CompileResult, stablehlo: str, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert len(list(cache_dir.rglob("*.vmfb"))) == 1, "expected exactly one cache entry"

    def no_compiler(*args, **kwargs):
        raise AssertionError("a cache hit must not run iree-compile")

    monkeypatch.setattr(subprocess, "Popen", no_compiler)
    start = time.perf_counter()
    hit = wc.compile_stablehlo(stablehlo, CPU, cache_dir=cache_dir)
    assert time.perf_counter() - start < 0.5
    assert hit.cache_hit and hit.ok and hit.key == cpu_result.key
    assert hit.vmfb == cpu_result.vmfb, "a cache hit must return the compiled bytes unchanged"
    assert (hit.compile_s, hit.num_dispatches, hit.command) == (
        cpu_result.compile_s,
        cpu_result.num_dispatches,
        cpu_result.command,
    )


def test_cache_key_covers_flags_device_and_host_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    digest = "0" * 64
    base = wc.cache_key(digest, CPU, [])
    assert base == wc.cache_key(digest, CPU, ())
    assert base != wc.cache_key(digest, CPU, ["--iree-opt-level=O3"])
    assert base != wc.cache_key(digest, ZNVER3, [])
    assert base != wc.cache_key(digest, CUDA, [])
    assert base != wc.cache_key("1" * 64, CPU, [])
    cuda_key, named_cpu_key = (
        wc.cache_key(digest, CUDA, []),
        wc.cache_key(digest, ZNVER3, []),
    )

    monkeypatch.setattr(wc, "host_cpu_id", lambda: "another-cpu-model")
    assert wc.cache_key(digest, CPU, []) != base, "a host-CPU build must be keyed by the CPU"
    assert wc.cache_key(digest, CUDA, []) == cuda_key
    assert wc.cache_key(digest, ZNVER3, []) == named_cpu_key
