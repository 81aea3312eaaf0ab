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
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sweep import analysis
from sweep.claims import Claims
from sweep.compaction import compact_run
from sweep.config import ConfigError, SweepConfig
from sweep.grid import Point, expand, point_label
from sweep.progress import ProgressDisplay
from sweep.report import Column, Table, fmt_statuses, render_md
from sweep.results import ResultsWriter, completed_point_keys
from sweep.rows import DONE, FAILED, RunContext
from workers.llama_config import LlamaConfig

CLAIM_POLL_S = 2.0


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


def checked_model(cfg: SweepConfig) -> LlamaConfig:
    """The model's config, checked now: a bad checkpoint or variant fails before any work."""
    source = cfg.model
    try:
        if source.path:
            from workers.checkpoint import check_checkpoint

            model_cfg = check_checkpoint(source.path)
        else:
            model_cfg = source.config()
        for name in cfg.grid.variants:
            cfg.variants[name].check_model(model_cfg)
    except ValueError as e:  # CheckpointError included: it names the file
        raise ConfigError(f"model: {e}") from None
    return model_cfg


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {
        "iree_version": version("iree-base-compiler"),
        "jax_version": version("jax"),
        "ray_version": version("ray"),
    }


def run_sweep(cfg: SweepConfig, resolved: dict[str, Any], out: Any = sys.stdout) -> SweepOutcome:
    start = time.monotonic()
    model_cfg = checked_model(cfg)
    points = expand(cfg, cfg.model.weights_id(Path(cfg.cache_dir)))
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
        print_plan(todo, model_cfg, out)
        return SweepOutcome(run_id, len(points), [], 0, time.monotonic() - start)
    try:
        writer = ResultsWriter(results_dir, run_id)
    except (OSError, ValueError) as e:
        raise ConfigError(f"results_dir={cfg.results_dir!r} cannot be written: {e}") from None
    rows, counters = [], None
    if todo:
        from sweep.cluster import connect

        disconnect = connect(cfg.ray.address, cfg.ray.num_cpus)  # a bad cluster: exit 2 now
        try:
            save_run(results_dir, run_id, resolved, points)
            rows, counters = _run_on_ray(cfg, model_cfg, todo, writer, run_id, out)
        finally:
            disconnect()
    if rows:
        compact_run(results_dir, run_id)
    print_summary(rows, out)
    failed = [r for r in rows if r["status"] in FAILED]
    return SweepOutcome(
        run_id, len(points), rows, 1 if failed else 0, time.monotonic() - start, counters
    )


def _run_on_ray(
    cfg: SweepConfig,
    model_cfg: LlamaConfig,
    todo: list[Point],
    writer: ResultsWriter,
    run_id: str,
    out: Any,
) -> tuple[list[dict[str, Any]], Any]:
    from sweep.cluster import RayBackend, alive_nodes
    from sweep.scheduler import Scheduler

    results_dir = Path(cfg.results_dir)
    # A point finished by another sweep is not measured again; with rerun=true, only
    # one finished since this sweep began (it asked for new measurements).
    since = datetime.now(UTC) if cfg.rerun else None
    claims = Claims(results_dir, run_id, lambda: completed_point_keys(results_dir, DONE, since))
    rows: list[dict[str, Any]] = []

    def sink(new_rows: list[dict[str, Any]]) -> None:
        writer.write(new_rows)
        rows.extend(new_rows)
        for row in new_rows:
            claims.release(row["point_key"])
            progress.log_row(row)

    progress = ProgressDisplay(out)
    scheduler = Scheduler(
        RayBackend(cfg.model, cfg.cache_dir, cfg.bench.compile_timeout_s),
        alive_nodes(),
        model_cfg,
        RunContext(run_id, cfg.grid.name, versions()),
        sink,
        max_retries=cfg.bench.max_retries,
        point_timeout_s=cfg.bench.point_timeout_s,
        on_progress=progress.update,
        admit=claims.admit,
    )
    try:
        with progress:
            scheduler.run(todo, refill=claims.refill)
            while claims.deferred:  # points another sweep is measuring: wait for them
                time.sleep(CLAIM_POLL_S)
                scheduler.run([], refill=claims.refill)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: {len(rows)} finished points are saved; rerun the same command "
            "to run the rest",
            file=out,
        )
        raise
    finally:
        claims.release_all()
        scheduler.shutdown()
    if claims.done_elsewhere:
        print(f"{len(claims.done_elsewhere)} points were measured by another sweep", file=out)
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


def print_plan(points: list[Point], model_cfg: LlamaConfig, out: Any) -> None:
    graphs = {
        (graph, p.device, p.flags)
        for p in points
        if p.compiled_by_iree
        for graph in p.graphs(model_cfg)
    }
    print(f"plan: {len(points)} points, {len(graphs)} unique graphs to compile", file=out)
    for p in points[:50]:
        print(f"  {p.key}  {p.label}", file=out)
    if len(points) > 50:
        print(f"  ... and {len(points) - 50} more", file=out)


def _cell(fmt: str, *keys: str) -> Callable[[dict[str, Any]], str]:
    return lambda r: fmt.format(*(r[k] for k in keys))


SUMMARY_COLUMNS = [
    Column("variant", _cell("{}", "variant")),
    Column("layout", _cell("{}", "layout"), fold="layout"),
    Column("device", _cell("{}", "device")),
    Column("runtime", _cell("{}", "runtime")),
    Column("flags", _cell("{}", "flag_set")),
    Column("prompt", _cell("{}", "prompt_length"), right=True),
    Column("tok/s", _cell("{:.2f}", "tok_s"), right=True),
    Column("ms/tok p50", _cell("{:.2f}", "decode_ms_p50"), right=True),
    Column("p10-p90", _cell("{:.2f}-{:.2f}", "decode_ms_p10", "decode_ms_p90"), right=True),
    Column("prefill ms", _cell("{:.2f}", "prefill_ms"), right=True),
    Column("matched", lambda r: f"{r['num_tokens_matched']}/{len(r['tokens'])}", right=True),
    Column("status", _cell("{}", "status")),
]


def print_summary(rows: list[dict[str, Any]], out: Any) -> None:
    """The seed's table (per variant, device, flag set and prompt), then every failure."""
    ok = sorted(
        (r for r in rows if r.get("decode_ms_p50") is not None),
        key=lambda r: (
            r["variant"],
            r["layout"],
            r["device"],
            r["runtime"],
            r["flag_set"],
            r["prompt_length"],
        ),
    )
    if ok:
        print(render_md(Table(ok, SUMMARY_COLUMNS, header={})), file=out)
    counts = analysis.status_counts(rows)
    print("status: " + (fmt_statuses(counts) or "nothing run"), file=out)
    for r in rows:
        if r["status"] in FAILED:
            message = (r.get("error_message") or "").strip().splitlines()
            line = f"  {r['status']}: {point_label(r)}: {message[-1] if message else ''}"
            print(line[:240], file=out)
