"""Progress of a long sweep: compiles, benchmarks, failures, skips and an ETA.

On a terminal a live rich bar; in a log (CI, `nohup`) one line per finished point,
so progress is visible either way.
"""

from __future__ import annotations

import time
from typing import Any

from sweep.plan.grid import point_label
from sweep.store.results import Col
from workers.core.kinds import Status

COMPILE_LOG_S = 15.0


class ProgressDisplay:
    def __init__(self, out: Any) -> None:
        self.out = out
        self.live = bool(getattr(out, "isatty", lambda: False)())
        self.start = time.monotonic()
        self._progress: Any = None
        self._compile_task = self._bench_task = None
        self._num_points = 0
        self._num_finished = 0
        self._num_logged = 0
        self._num_ran = 0
        self._compiles_logged, self._compile_logged_at = 0, 0.0

    def __enter__(self) -> ProgressDisplay:
        if self.live:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=Console(file=self.out),
            )
            self._progress.__enter__()
            self._compile_task = self._progress.add_task("compile", total=None)
            self._bench_task = self._progress.add_task("points", total=None)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def update(self, counters: Any) -> None:
        self._num_points = counters.num_points
        self._num_finished = counters.num_benchmarked + counters.num_failed + counters.num_skipped
        if self._progress is None:
            self._log_compiles(counters)
            return
        self._progress.update(
            self._compile_task,
            total=counters.num_compiles or None,
            completed=counters.num_compiled,
            description=f"compile ({counters.num_compile_cache_hits} cached)",
        )
        self._progress.update(
            self._bench_task,
            total=counters.num_points,
            completed=self._num_finished,
            description=(
                f"points (ok {counters.num_benchmarked}, failed {counters.num_failed}, "
                f"skipped {counters.num_skipped})"
            ),
        )

    def _log_compiles(self, counters: Any) -> None:
        """In a log, a line on compile progress at most every COMPILE_LOG_S (and the last)."""
        done, total = counters.num_compiled, counters.num_compiles
        if not total or done == self._compiles_logged:
            return
        now = time.monotonic()
        if done < total and now - self._compile_logged_at < COMPILE_LOG_S:
            return
        self._compiles_logged, self._compile_logged_at = done, now
        print(
            f"[{now - self.start:.0f}s] compiled {done}/{total} graphs "
            f"({counters.num_compile_cache_hits} from the cache)",
            file=self.out,
            flush=True,
        )

    def log_row(self, row: dict[str, Any]) -> None:
        """One line per finished point; the ETA extrapolates from points that ran (a
        skipped point takes no time, so it would make the estimate far too short)."""
        elapsed = time.monotonic() - self.start
        self._num_logged += 1
        self._num_ran += row[Col.STATUS] != Status.SKIPPED
        done = self._num_logged
        remaining = max(self._num_points - done, 0)
        eta = elapsed / self._num_ran * remaining if self._num_ran else 0.0
        timing = f" {row['decode_ms_p50']:.2f} ms/tok" if row.get(Col.DECODE_MS_P50) else ""
        line = (
            f"[{done}/{self._num_points} {elapsed:.0f}s eta {eta:.0f}s] {row['status']:<14} "
            f"{point_label(row)}{timing}"
        )
        self.note(line)

    def note(self, line: str) -> None:
        """A line above the live bar, or in the log."""
        if self._progress is not None:
            self._progress.console.print(line)
        else:
            print(line, file=self.out, flush=True)
