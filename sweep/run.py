"""One sweep, driver side: check inputs, plan, resume, run on Ray, write, summarise.

`run_sweep` is what `python -m sweep` calls after Hydra has composed the config.
Inputs are checked before Ray starts (a bad checkpoint or an unwritable results
directory costs no compile); finished points are skipped by key unless
`rerun=true`; rows are written as points finish, so an interrupted sweep loses
nothing that finished.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sweep.config import ConfigError, SweepConfig
from sweep.grid import Point, expand
from sweep.progress import ProgressDisplay
from sweep.results import ResultsWriter, completed_point_keys
from sweep.rows import DONE, FAILED, RunContext
from workers.llama_config import LlamaConfig
from workers.point import ModelSource


@dataclasses.dataclass
class SweepOutcome:
    run_id: str
    num_points: int
    rows: list[dict[str, Any]]
    exit_code: int
    wall_s: float
    counters: Any = None  # scheduler Counters: compiles, cache hits, ...


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def model_source(cfg: SweepConfig) -> tuple[ModelSource, LlamaConfig]:
    """The model's source and config, checked now: a bad checkpoint fails before any work."""
    m = cfg.model
    source = ModelSource(name=m.name, preset=None if m.path else m.preset, path=m.path, seed=m.seed)
    if m.path:
        from workers.checkpoint import CheckpointError, check_checkpoint

        try:
            check_checkpoint(m.path)
        except CheckpointError as e:
            raise ConfigError(f"model.path: {e}") from None
    return source, source.config()


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {
        "iree_version": version("iree-base-compiler"),
        "jax_version": version("jax"),
        "ray_version": version("ray"),
    }


def run_sweep(cfg: SweepConfig, resolved: dict[str, Any], out: Any = sys.stdout) -> SweepOutcome:
    start = time.monotonic()
    source, model_cfg = model_source(cfg)
    points = expand(cfg, source.weights_id)
    run_id = new_run_id()
    results_dir = Path(cfg.results_dir)
    done = set() if cfg.rerun else completed_point_keys(results_dir, statuses=DONE)
    todo = [p for p in points if p.key not in done]
    print(
        f"sweep {run_id}: grid {cfg.grid.name}, {len(points)} points, "
        f"{len(points) - len(todo)} already done, {len(todo)} to run",
        file=out,
    )
    if cfg.dry_run:
        print_plan(todo, out)
        return SweepOutcome(run_id, len(points), [], 0, time.monotonic() - start)
    try:
        writer = ResultsWriter(results_dir, run_id)
    except (OSError, ValueError) as e:
        raise ConfigError(f"results_dir={cfg.results_dir!r} cannot be written: {e}") from None
    save_run(results_dir, run_id, resolved, points)
    rows, counters = (
        _run_on_ray(cfg, source, model_cfg, todo, writer, run_id, out) if todo else ([], None)
    )
    print_summary(rows, out)
    failed = [r for r in rows if r["status"] in FAILED]
    return SweepOutcome(
        run_id, len(points), rows, 1 if failed else 0, time.monotonic() - start, counters
    )


def _run_on_ray(
    cfg: SweepConfig,
    source: ModelSource,
    model_cfg: LlamaConfig,
    todo: list[Point],
    writer: ResultsWriter,
    run_id: str,
    out: Any,
) -> tuple[list[dict[str, Any]], Any]:
    import ray

    from sweep.cluster import alive_nodes, connect
    from sweep.scheduler import Scheduler

    started = connect(cfg.ray.address, cfg.ray.num_cpus)
    rows: list[dict[str, Any]] = []

    def sink(new_rows: list[dict[str, Any]]) -> None:
        writer.write(new_rows)
        rows.extend(new_rows)
        for row in new_rows:
            progress.log_row(row)

    ctx = RunContext(run_id, cfg.grid.name, versions())
    progress = ProgressDisplay(out)
    scheduler = Scheduler(cfg, source, model_cfg, alive_nodes(), ctx, sink, progress.update)
    try:
        with progress:
            scheduler.run(todo)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: {len(rows)} finished points are saved; rerun the same command "
            "to run the rest",
            file=out,
        )
        raise
    finally:
        scheduler.shutdown()
        if started:
            ray.shutdown()
    return rows, scheduler.counters


def save_run(results_dir: Path, run_id: str, resolved: dict[str, Any], points: list[Point]) -> Path:
    """The resolved config, library versions and the grid's points, next to the results."""
    run_dir = results_dir / "_runs" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(resolved, indent=2, sort_keys=True))
    (run_dir / "versions.json").write_text(
        json.dumps({**versions(), "python": sys.version.split()[0]}, indent=2)
    )
    (run_dir / "points.json").write_text(
        json.dumps([{"point_key": p.key, **dataclasses.asdict(p)} for p in points], indent=1)
    )
    return run_dir


def print_plan(points: list[Point], out: Any) -> None:
    graphs = {
        p.compile_key(kind) for p in points if p.runtime == "iree" for kind in ("prefill", "decode")
    }
    print(f"plan: {len(points)} points, {len(graphs)} unique graphs to compile", file=out)
    for p in points[:50]:
        print(f"  {p.key}  {p.label}", file=out)
    if len(points) > 50:
        print(f"  ... and {len(points) - 50} more", file=out)


def print_summary(rows: list[dict[str, Any]], out: Any) -> None:
    """The seed's table: per variant, device, flag set and prompt length."""
    ok = sorted(
        (r for r in rows if r.get("decode_ms_p50") is not None),
        key=lambda r: (r["variant"], r["device"], r["runtime"], r["flag_set"], r["prompt_length"]),
    )
    if ok:
        head = (
            "variant",
            "device",
            "runtime",
            "flags",
            "prompt",
            "tok/s",
            "ms/tok p50",
            "p10-p90",
            "prefill ms",
            "matched",
            "status",
        )
        lines = [head]
        for r in ok:
            lines.append(
                (
                    r["variant"],
                    r["device"],
                    r["runtime"],
                    r["flag_set"],
                    str(r["prompt_length"]),
                    f"{r['tok_s']:.2f}",
                    f"{r['decode_ms_p50']:.2f}",
                    f"{r['decode_ms_p10']:.2f}-{r['decode_ms_p90']:.2f}",
                    f"{r['prefill_ms']:.2f}",
                    f"{r['num_tokens_matched']}/{len(r['tokens'])}",
                    r["status"],
                )
            )
        _print_table(lines, out)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(
        "status: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing run"),
        file=out,
    )
    for r in rows:
        if r["status"] in FAILED:
            message = (r.get("error_message") or "").strip().splitlines()
            print(
                f"  {r['status']}: {r['variant']}/{r['device']}/L{r['prompt_length']}/"
                f"{r['flag_set']}: {message[-1] if message else ''}"[:240],
                file=out,
            )


def _print_table(lines: list[tuple[str, ...]], out: Any) -> None:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for n, line in enumerate(lines):
        print(
            "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |",
            file=out,
        )
        if n == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|", file=out)
