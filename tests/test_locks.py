"""The host lock: a measurement waiting behind compiles is not starved by later compiles,
and GPU points share the host only on different GPUs, never beside a compile.

Threads with their own file descriptors stand in for processes: `flock` locks belong to
an open file description, so two `os.open`s in one process exclude each other as two
processes would.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from workers.core import locks


@pytest.fixture
def lock_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "host.lock"
    monkeypatch.setenv(locks.HOST_LOCK_ENV, str(path))
    return path


COMPILE, HOST = locks.HostUse.COMPILE, locks.HostUse.HOST


def _hold(
    use: locks.HostUse, name: str, order: list[str], release: threading.Event, device: int = 0
) -> None:
    with locks.host_lock(use, device):
        order.append(name)
        release.wait(timeout=10)


def _start(*args: object) -> threading.Thread:
    thread = threading.Thread(target=_hold, args=args)
    thread.start()
    return thread


def _until(order: list[str], length: int) -> None:
    deadline = time.monotonic() + 5
    while len(order) < length and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_waiting_measurement_goes_before_a_later_compile(lock_path: Path) -> None:
    order: list[str] = []
    first_compile, measurement, later_compile = (threading.Event() for _ in range(3))
    threads = [threading.Thread(target=_hold, args=(COMPILE, "compile 1", order, first_compile))]
    threads[0].start()
    while order != ["compile 1"]:
        time.sleep(0.01)
    threads.append(threading.Thread(target=_hold, args=(HOST, "measure", order, measurement)))
    threads[1].start()
    time.sleep(0.3)  # the measurement now waits for compile 1
    threads.append(
        threading.Thread(target=_hold, args=(COMPILE, "compile 2", order, later_compile))
    )
    threads[2].start()
    time.sleep(0.3)
    assert order == ["compile 1"], "a compile started while a measurement waited"
    first_compile.set()
    time.sleep(0.3)
    assert order == ["compile 1", "measure"], "the waiting measurement must run next"
    measurement.set()
    later_compile.set()
    for thread in threads:
        thread.join(timeout=10)
    assert order == ["compile 1", "measure", "compile 2"]


def test_compiles_share_the_host_with_each_other(lock_path: Path) -> None:
    order: list[str] = []
    release = threading.Event()
    threads = [
        threading.Thread(target=_hold, args=(COMPILE, f"compile {i}", order, release))
        for i in range(2)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while len(order) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(order) == ["compile 0", "compile 1"], "two compiles must hold it at once"
    release.set()
    for thread in threads:
        thread.join(timeout=10)


def test_gpu_points_share_the_host_on_different_gpus_only(lock_path: Path) -> None:
    DEVICE = locks.HostUse.DEVICE
    order: list[str] = []
    first, second, same_gpu = (threading.Event() for _ in range(3))
    threads = [_start(DEVICE, "gpu 0", order, first, 0), _start(DEVICE, "gpu 1", order, second, 1)]
    _until(order, 2)
    assert sorted(order) == ["gpu 0", "gpu 1"], "two GPUs must be timed at once"
    threads.append(_start(DEVICE, "gpu 0 again", order, same_gpu, 0))
    time.sleep(0.3)
    assert len(order) == 2, "a second point on GPU 0 ran beside the first"
    first.set()
    _until(order, 3)
    assert order[-1] == "gpu 0 again"
    second.set()
    same_gpu.set()
    for thread in threads:
        thread.join(timeout=10)


@pytest.mark.parametrize("other", [COMPILE, HOST])
def test_a_gpu_point_never_runs_beside_a_compile_or_a_host_point(
    lock_path: Path, other: locks.HostUse
) -> None:
    order: list[str] = []
    gpu, held = threading.Event(), threading.Event()
    threads = [_start(locks.HostUse.DEVICE, "gpu", order, gpu, 3)]
    _until(order, 1)
    threads.append(_start(other, str(other), order, held))
    time.sleep(0.3)
    assert order == ["gpu"], f"a {other} started beside a timed GPU point"
    gpu.set()
    _until(order, 2)
    assert order == ["gpu", str(other)]
    held.set()
    for thread in threads:
        thread.join(timeout=10)
