"""Claims: two sweeps on one results directory never measure a point twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweep.execute import claims as claims_module
from sweep.execute.claims import Claims
from tests.helpers import points


def left_claim(results_dir: Path, point, text: str) -> Path:
    """A claim file as another run (or a crash) left it."""
    claim = results_dir / "_claims" / f"{point.key}.json"
    claim.parent.mkdir(parents=True, exist_ok=True)
    claim.write_text(text)
    return claim


def make_old(path: Path, age_s: float) -> None:
    old = time.time() - age_s
    os.utime(path, (old, old))


def test_one_sweep_measures_a_point_the_other_defers_it(tmp_path: Path):
    done: set[str] = set()
    a, b = Claims(tmp_path, "run-a", lambda: done), Claims(tmp_path, "run-b", lambda: done)
    first, second = points()[:2]
    assert a.admit(first) and a.admit(first), "a claim is held until released"
    assert not b.admit(first) and first.key in b.deferred
    assert b.admit(second) and not a.admit(second)
    assert b.refill() == [], "still held by run-a"
    a.release(first.key)
    assert b.refill() == [first] and not b.deferred, "released and not done: run-b measures it"


def test_a_point_done_elsewhere_is_not_measured_again(tmp_path: Path):
    done: set[str] = set()
    a, b = Claims(tmp_path, "run-a", lambda: done), Claims(tmp_path, "run-b", lambda: done)
    point = points()[0]
    assert a.admit(point) and not b.admit(point)
    done.add(point.key)  # run-a wrote the point's row
    a.release(point.key)
    assert b.refill() == [] and b.done_elsewhere == [point]
    c = Claims(tmp_path, "run-c", lambda: done)
    assert not c.admit(point) and c.done_elsewhere == [point], "done before it was claimed"
    assert not list((tmp_path / "_claims").iterdir()), "no claim left behind"


def test_a_dead_runs_claim_is_taken_over(tmp_path: Path):
    point = points()[0]
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    holder = {"run_id": "crashed", "host": os.uname().nodename, "pid": int(dead.stdout), "time": 0}
    claim = left_claim(tmp_path, point, json.dumps(holder))
    b = Claims(tmp_path, "run-b", set)
    assert b.admit(point), "the process that held the claim is gone"
    assert json.loads(claim.read_text())["run_id"] == "run-b"


def test_another_hosts_claim_goes_stale_unless_refreshed(tmp_path: Path, monkeypatch):
    point = points()[0]
    holder = {"run_id": "far", "host": "another-host", "pid": 1, "time": 0}
    claim = left_claim(tmp_path, point, json.dumps(holder))
    b = Claims(tmp_path, "run-b", set)
    assert not b.admit(point), "a fresh claim of another host holds"
    make_old(claim, claims_module.STALE_S + 1)
    assert b.refill() == [point], "an unrefreshed claim is stale"
    assert b.admit(point)


def test_a_runs_own_claims_are_refreshed(tmp_path: Path, monkeypatch):
    point = points()[0]
    a = Claims(tmp_path, "run-a", set)
    assert a.admit(point)
    claim = tmp_path / "_claims" / f"{point.key}.json"
    make_old(claim, 1000)
    monkeypatch.setattr(claims_module, "REFRESH_S", 0.0)
    a.refresh()
    assert time.time() - claim.stat().st_mtime < 10
    a.release_all()
    assert not claim.exists()


def test_a_claim_is_whole_or_absent_even_when_interrupted(tmp_path: Path, monkeypatch):
    """A driver stopped (Ctrl-C, kill) while it takes a claim leaves no claim at all:
    an empty one used to block every later run of that point for good."""
    point = points()[0]
    a = Claims(tmp_path, "run-a", set)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(claims_module.os, "link", interrupted)
        with pytest.raises(KeyboardInterrupt):
            a.admit(point)
    assert not list((tmp_path / "_claims").iterdir()), "neither a claim nor its draft"
    assert a.admit(point)
    claim = tmp_path / "_claims" / f"{point.key}.json"
    assert json.loads(claim.read_text())["run_id"] == "run-a"
    assert [p.name for p in claim.parent.iterdir()] == [claim.name]


def test_an_unreadable_claim_holds_only_briefly(tmp_path: Path):
    point = points()[0]
    claim = left_claim(tmp_path, point, "")  # as an older version killed mid-write left it
    b = Claims(tmp_path, "run-b", set)
    assert not b.admit(point), "it may be being written right now"
    make_old(claim, claims_module.UNREADABLE_S + 1)
    assert b.refill() == [point], "unreadable for long: garbage, not a claim"
    assert b.admit(point)
