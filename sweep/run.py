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
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from sweep.execute.claims import Claims
from sweep.execute.progress import ProgressDisplay
from sweep.plan.config import ConfigError, SweepConfig, check
from sweep.plan.eval_text import check_quality_bound, eval_spec
from sweep.plan.grid import Point, expand, point_label
from sweep.readers import analysis
from sweep.readers.report import fp32_notes, host_notes, text_notes
from sweep.readers.tables import Column, Table, fmt_spread, fmt_statuses, metric, render_md
from sweep.search.study import Search, print_search_plan
from sweep.search.study import baselines as search_baselines
from sweep.store.compaction import compact_run
from sweep.store.results import (
    DISPATCH_SCHEMA,
    DISPATCHES,
    SCHEMA,
    Col,
    ResultsWriter,
    completed_point_keys,
    newest_rows,
)
from sweep.store.rows import DONE, FAILED, RunContext
from workers.core.config import LlamaConfig
from workers.core.files import atomic_write
from workers.formats.variant import Variant

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


def resolve_inputs(cfg: SweepConfig, out: Any) -> SweepConfig:
    """The config with its model found (a Hugging Face repo in the local cache) and a
    text prompt's length as the prompt length; errors before any work."""
    from workers.checkpoints.tensors import CheckpointError
    from workers.checkpoints.tokenizers import load_tokenizer

    try:
        model = cfg.model.resolved()
        if cfg.bench.prompt is None:
            return dataclasses.replace(cfg, model=model)
        if not model.path:
            raise ConfigError(
                "bench.prompt: a text prompt needs a checkpoint with a tokenizer "
                "(model.path=DIR or model.repo=ORG/NAME); seeded weights take seeded token ids"
            )
        ids = load_tokenizer(model.path).encode(cfg.bench.prompt).ids
    except CheckpointError as e:
        raise ConfigError(str(e)) from None
    if not ids:
        raise ConfigError("bench.prompt: the text has no tokens")
    print(f"prompt: {len(ids)} tokens of text (grid.prompt_lengths set to [{len(ids)}])", file=out)
    grid = dataclasses.replace(cfg.grid, prompt_lengths=(len(ids),))
    resolved = dataclasses.replace(cfg, model=model, grid=grid)
    check(resolved)
    return resolved


def checked_model(cfg: SweepConfig) -> LlamaConfig:
    """The model's config, checked now: a bad checkpoint or variant fails before any work."""
    source = cfg.model
    try:
        if source.path:
            from workers.checkpoints.source import check_checkpoint

            model_cfg = check_checkpoint(source.path)
        else:
            model_cfg = source.config()
        for name in cfg.grid.variants:
            check_variant(cfg.variants[name], model_cfg, source.path)
    except ValueError as e:  # CheckpointError included: it names the file
        raise ConfigError(f"model: {e}") from None
    return model_cfg


def check_variant(variant: Variant, model_cfg: LlamaConfig, path: str | None) -> None:
    """ValueError unless the variant can hold this model: whole groups, and for a variant
    that keeps a GGUF file's own blocks, a GGUF file whose linears are of that type."""
    variant.check_model(model_cfg)
    if variant.blocks is not None:
        from workers.checkpoints.source import check_blocks

        check_blocks(path, variant.blocks)


def stored_variants(cfg: SweepConfig) -> SweepConfig:
    """The config with each `blocks: file` variant the grid runs made for the model's file:
    its matrices' types (a Q4_K_M file's mix), which its graph arguments follow."""
    names = [n for n in cfg.grid.variants if cfg.variants[n].as_stored]
    if not names:
        return cfg
    from workers.checkpoints.source import file_blocks

    try:
        types = file_blocks(cfg.model.path)
    except ValueError as e:  # CheckpointError included: it names the file and tensors
        raise ConfigError(f"model: {e}") from None
    variants = dict(cfg.variants)
    for name in names:
        variants[name] = variants[name].stored_as(types)
    return dataclasses.replace(cfg, variants=variants)


def fitting_formats(cfg: SweepConfig, model_cfg: LlamaConfig, out: Any) -> SweepConfig:
    """The config with the search's formats that cannot hold this model left out, said so
    (groups of 128 on a 64-wide model): a search space offers formats for every model."""
    if cfg.search is None:
        return cfg
    formats: dict[str, tuple[str, ...]] = {}
    for family, names in cfg.search.formats.items():
        kept = []
        for name in names:
            try:
                check_variant(cfg.variants[name], model_cfg, cfg.model.path)
                kept.append(name)
            except ValueError as e:
                print(f"search: format {name} left out: {e}", file=out)
        formats[family] = tuple(kept)
    return dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, formats=formats))


def named_model(cfg: SweepConfig) -> SweepConfig:
    """The config with `model.name` naming the weights measured: a checkpoint's file or
    folder name and content fingerprint (`ModelSource.label`), not the preset's name that
    `conf/model/*.yaml` left there. Rows, reports, plots and the summary all read it."""
    try:
        name = cfg.model.label(Path(cfg.cache_dir))
    except (OSError, ValueError) as e:  # CheckpointError included: it names the file
        raise ConfigError(f"model: {e}") from None
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name=name))


def versions() -> dict[str, str]:
    """The versions a row records; a host without the compiler (compile=cache_only)
    records the runtime's."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        iree = version("iree-base-compiler")
    except PackageNotFoundError:
        iree = f"runtime {version('iree-base-runtime')}"
    return {
        Col.IREE_VERSION: iree,
        Col.JAX_VERSION: version("jax"),
        Col.RAY_VERSION: version("ray"),
    }


def run_sweep(cfg: SweepConfig, resolved: dict[str, Any], out: Any = sys.stdout) -> SweepOutcome:
    start = time.monotonic()
    cfg = stored_variants(resolve_inputs(cfg, out))
    model_cfg = checked_model(cfg)
    cfg = fitting_formats(named_model(cfg), model_cfg, out)
    print(f"model: {cfg.model.name}", file=out)
    quality = eval_spec(cfg, out)
    check_quality_bound(cfg, quality)
    grid_points = expand(cfg, cfg.model.weights_id(Path(cfg.cache_dir)), quality)
    points = grid_points if cfg.search is None else search_baselines(cfg, grid_points)
    run_id = new_run_id()
    results_dir = Path(cfg.results_dir)
    # the finished points (skipped, and what a search is told, its quality bound too):
    # point key -> row
    told = [Col.DECODE_MS_P50, Col.KLD_MEAN, Col.TOP1_AGREE]
    done = {} if cfg.rerun else newest_rows(results_dir, told, statuses=DONE)
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
    search = None
    if cfg.search is not None:
        from sweep.search.study import open_search

        search = open_search(cfg, grid_points, done.get)
        todo = search.schedule(todo) + search.refill()
        print_search_plan(search, out)
    rows, counters = [], None
    if todo:
        from sweep.execute.cluster import connect

        disconnect = connect(cfg.ray.address, cfg.ray.num_cpus)  # a bad cluster: exit 2 now
        try:
            save_run(results_dir, run_id, resolved, points)
            rows, counters = _run_on_ray(cfg, model_cfg, todo, writer, run_id, out, search, done)
        finally:
            disconnect()
    if rows:
        compact(results_dir, run_id)
    print_summary(rows, out, cfg.bench.priority)
    # a search's trials may fail (that is what it learns from); its baselines may not,
    # and a study must find at least one correct configuration
    failed = [
        r
        for r in rows
        if r[Col.STATUS] in FAILED and (search is None or not search.owns(r[Col.POINT_KEY]))
    ]
    if search is not None:
        from sweep.search.summaries import print_studies

        print_studies(results_dir, out)
        for study in search.studies:
            if study.best() is None:
                print(f"search {study.name}: no trial gave ok tokens", file=out)
                failed.append({"study": study.name})
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
    search: Search | None = None,
    done: dict[str, dict[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], Any]:
    """Runs `todo` (and what a search proposes) to one row each; `done` (finished rows
    by point key) gains this sweep's finished rows as they come."""
    from sweep.execute.cluster import RayBackend, alive_nodes
    from sweep.execute.scheduler import Scheduler

    results_dir = Path(cfg.results_dir)
    # A point finished by another sweep is not measured again; with rerun=true, only
    # one finished since this sweep began (it asked for new measurements).
    since = datetime.now(UTC) if cfg.rerun else None
    claims = Claims(results_dir, run_id, lambda: completed_point_keys(results_dir, DONE, since))
    rows: list[dict[str, Any]] = []
    dispatch_writers: list[ResultsWriter] = []  # made when the first profile arrives
    profiles_dir = results_dir / "_runs" / run_id / "profiles"

    def sink(
        new_rows: list[dict[str, Any]], dispatches: list[dict[str, Any]], profiles: dict[str, bytes]
    ) -> None:
        # The profile first: a row on disk means its dispatches are too.
        for point_key, raw in profiles.items():
            atomic_write(profiles_dir / f"{point_key}.ireeprof", raw)
        if dispatches:
            if not dispatch_writers:
                dispatch_writers.append(
                    ResultsWriter(results_dir / DISPATCHES, run_id, DISPATCH_SCHEMA)
                )
            dispatch_writers[0].write(dispatches)
        writer.write(new_rows)
        rows.extend(new_rows)
        for row in new_rows:
            claims.release(row[Col.POINT_KEY])
            progress.log_row(row)
            if done is not None and row[Col.STATUS] in DONE:
                done[row[Col.POINT_KEY]] = row
        if search is not None:
            search.observe(new_rows)  # after the write: a told trial's row is on disk

    def refill() -> list[Point]:
        more = claims.refill()
        return more + search.refill() if search is not None else more

    progress = ProgressDisplay(out)
    scheduler = Scheduler(
        RayBackend(
            cfg.model,
            cfg.cache_dir,
            cfg.bench.compile_timeout_s,
            cfg.compile,
            cfg.bench.priority,
            cfg.bench.compile_max_memory_gb,
        ),
        alive_nodes(),
        model_cfg,
        RunContext(run_id, cfg.grid.name, versions(), model_cfg.architecture),
        sink,
        max_retries=cfg.bench.max_retries,
        point_timeout_s=cfg.bench.point_timeout_s,
        on_progress=progress.update,
        admit=claims.admit,
        gpu_concurrency=cfg.bench.gpu_concurrency,
    )
    try:
        with progress:
            scheduler.run(todo, refill=refill)
            if claims.deferred:
                progress.note(
                    f"waiting for {len(claims.deferred)} points another sweep is measuring "
                    f"(their claims are in {claims.dir})"
                )
            while claims.deferred:  # points another sweep is measuring: wait for them
                time.sleep(CLAIM_POLL_S)
                scheduler.run([], refill=refill)
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


def compact(results_dir: Path, run_id: str) -> None:
    """The run's files into one file per dataset; the rows are safe either way, so a
    failure here is a warning, not the sweep's."""
    for folder, schema in ((results_dir, SCHEMA), (results_dir / DISPATCHES, DISPATCH_SCHEMA)):
        try:
            compact_run(folder, run_id, schema)
        except (OSError, ValueError, pa.ArrowException) as e:
            warnings.warn(f"could not compact run {run_id} in {folder}: {e}", stacklevel=2)


def save_run(results_dir: Path, run_id: str, resolved: dict[str, Any], points: list[Point]) -> Path:
    """The resolved config, library versions and the grid's points, next to the results."""
    run_dir = results_dir / "_runs" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(resolved, indent=2, sort_keys=True))
    (run_dir / "versions.json").write_text(
        json.dumps({**versions(), "python": sys.version.split()[0]}, indent=2)
    )
    (run_dir / "points.json").write_text(
        json.dumps([{Col.POINT_KEY: p.key, **dataclasses.asdict(p)} for p in points], indent=1)
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
    Column(Col.VARIANT, _cell("{}", Col.VARIANT)),
    Column(Col.LAYOUT, _cell("{}", Col.LAYOUT), fold=Col.LAYOUT),
    Column(Col.WEIGHTS, lambda r: r.get(Col.WEIGHTS) or "", fold=Col.WEIGHTS),
    Column(Col.DEVICE, _cell("{}", Col.DEVICE)),
    Column(Col.RUNTIME, _cell("{}", Col.RUNTIME)),
    Column(Col.FLAGS, _cell("{}", Col.FLAG_SET)),
    Column("prompt", _cell("{}", Col.PROMPT_LENGTH), right=True),
    # shown where they vary (a batch or depth grid), folded into a line above otherwise
    Column("batch", _cell("{}", Col.BATCH_SIZE), right=True, fold=Col.BATCH_SIZE),
    Column(Col.DEPTH, _cell("{}", Col.DEPTH), right=True, fold=Col.DEPTH),
    Column("attention", lambda r: str(r.get(Col.ATTENTION_SPAN) or "all"), fold=Col.ATTENTION_SPAN),
    Column("threads", _cell("{}", Col.THREADS), right=True, fold=Col.THREADS),
    metric("tok/s", Col.TOK_S),
    metric("ms/tok p50", Col.DECODE_MS_P50),
    Column("p10-p90", fmt_spread, right=True),
    metric("prefill ms", Col.PREFILL_MS),
    Column("matched", lambda r: f"{r['num_tokens_matched']}/{len(r['tokens'])}", right=True),
    Column(Col.STATUS, _cell("{}", Col.STATUS)),
]
# bench.repeats: the repeats' medians' spread beside a point measured more than once
REPEATS_COLUMN = Column("repeats (spread)", lambda r: _repeats_cell(r), right=True)


def _repeats_cell(row: dict[str, Any]) -> str:
    if not row.get(analysis.NUM_REPEATS):
        return ""
    return f"{row[analysis.NUM_REPEATS]} ({100 * row[analysis.REPEAT_SPREAD]:.1f}%)"


def print_summary(rows: list[dict[str, Any]], out: Any, priority: int | None = None) -> None:
    """The seed's table (per variant, device, flag set and prompt; a point's repeats
    merged into one line), per device the fastest variant against fp32, then every
    failure."""
    ok = sorted(
        analysis.merge_repeats([r for r in rows if r.get(Col.DECODE_MS_P50) is not None]),
        key=lambda r: (
            r[Col.VARIANT],
            r[Col.LAYOUT],
            r.get(Col.WEIGHTS) or "",
            r[Col.DEVICE],
            r[Col.RUNTIME],
            r[Col.FLAG_SET],
            r[Col.PROMPT_LENGTH],
            r.get(Col.BATCH_SIZE) or 1,
            r.get(Col.DEPTH) or 0,
            r.get(Col.ATTENTION_SPAN) or 0,
            r.get(Col.THREADS) or 0,
        ),
    )
    if ok:
        # which weights, of which family: the header line
        header = analysis.constant_columns(ok, (Col.MODEL, Col.ARCHITECTURE))
        repeated = any(r.get(analysis.NUM_REPEATS) for r in ok)
        columns = [
            *SUMMARY_COLUMNS[:-1],
            *([REPEATS_COLUMN] if repeated else []),
            SUMMARY_COLUMNS[-1],
        ]
        print(render_md(Table(ok, columns, header=header)), file=out)
    for note in text_notes(rows) + host_notes(rows, priority):
        print(note, file=out)
    for line in fp32_notes(rows):  # the seed's question: which variant decodes fastest
        print(line, file=out)
    counts = analysis.status_counts(rows)
    print("status: " + (fmt_statuses(counts) or "nothing run"), file=out)
    for r in rows:
        if r[Col.STATUS] in FAILED:
            message = (r.get(Col.ERROR_MESSAGE) or "").strip().splitlines() or [""]
            # a compiler's headline is its first line; a Python error's, its last
            headline = message[0] if r[Col.STATUS].startswith("compile") else message[-1]
            line = f"  {r['status']}: {point_label(r)}: {headline}"
            print(line[:240], file=out)
