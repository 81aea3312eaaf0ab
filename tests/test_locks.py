"""The host lock: a measurement waiting behind compiles is not starved by later compiles.

Threads with their own file descriptors stand in for processes: `flock` locks belong to
an open file description, so two `os.open`s in one process exclude each other as two
processes would.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from workers import locks


@pytest.fixture
def lock_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "host.lock"
    monkeypatch.setenv(locks.HOST_LOCK_ENV, str(path))
    return path


def _hold(exclusive: bool, name: str, order: list[str], release: threading.Event) -> None:
    with locks.host_lock(exclusive=exclusive):
        order.append(name)
        release.wait(timeout=10)


def test_a_waiting_measurement_goes_before_a_later_compile(lock_path: Path) -> None:
    order: list[str] = []
    first_compile, measurement, later_compile = (threading.Event() for _ in range(3))
    threads = [threading.Thread(target=_hold, args=(False, "compile 1", order, first_compile))]
    threads[0].start()
    while order != ["compile 1"]:
        time.sleep(0.01)
    threads.append(threading.Thread(target=_hold, args=(True, "measure", order, measurement)))
    threads[1].start()
    time.sleep(0.3)  # the measurement now waits for compile 1
    threads.append(threading.Thread(target=_hold, args=(False, "compile 2", order, later_compile)))
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
        threading.Thread(target=_hold, args=(False, f"compile {i}", order, release))
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
