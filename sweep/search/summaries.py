"""A search's studies read back (`python -m sweep.report --search`, and the end of a search).

Per study, that is per (variant, device), first its answer: the fastest configuration
inside the quality bound of everything the study was told (the listed configurations
are seeded into it, so the answer is never slower than a listed row inside the bound),
its ms/token, KLD and top-1, and where it came from (listed, the default, or proposed by
the sampler). Then the details: how many distinct configurations it measured
and how many failed, the choices it learned break its graphs, the best one in its
minimal form (after the winner's ablation), its decode ms/token beside the `default`
configuration, the best listed flag set and the XLA baseline, and the best-so-far
curve over trials. Trial values come from the
study's database (`results_dir/search.db`); the baselines' from the results.

A search with a quality bound (`search.max_kld`, `search.min_top1`) told every trial
outside it as infeasible, so its best is the fastest configuration inside the bound;
the table shows the bound, how many trials fell outside it and the best's KLD, and a
listed flag set counts as a baseline only when its row is inside the bound too.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweep.search.study import (
    BROKEN,
    QUALITY,
    STORAGE_FILE,
    QualityBound,
    storage_url,
    trial_ms,
)
from sweep.store.results import Col, newest_rows
from workers.core.kinds import Runtime, Status

if TYPE_CHECKING:
    import optuna
    from matplotlib.figure import Figure
    from optuna.trial import FrozenTrial

    from sweep.readers.tables import Table


@dataclasses.dataclass(frozen=True)
class Answer:
    """A study's answer: the fastest configuration inside the bound of all it measured."""

    config: str  # its non-default choices as `axis=choice` ("default" when none)
    ms: float  # its decode ms/token
    kld: float | None
    top1: float | None
    origin: str  # "listed NAME", "default" or "proposed"
    point_key: str


@dataclasses.dataclass
class StudySummary:
    name: str
    variant: str
    device: str
    space_size: int
    trials: int  # distinct configurations the sampler proposed and the study was told
    failed: int  # of all told (seeds too), failed (any status but ok)
    history: list[tuple[int, float | None]]  # (trial number, ms or None), repeats left out
    best_ms: float | None
    best: dict[str, str]  # the winner's non-default choices
    minimal: dict[str, Any] | None  # the ablation's result (see `sweep.search.study`)
    default_ms: float | None
    listed: tuple[str, float] | None  # the best listed flag set: (flag_set/layout, ms)
    xla_ms: float | None
    llamacpp_ms: float | None = None  # llama.cpp's ms/token at the study's shape
    bound: str = "none"  # the quality bound, as text
    outside: int = 0  # trials told infeasible for their quality
    best_kld: float | None = None  # the best trial's kld_mean and top1_agree
    best_top1: float | None = None
    seeded: int = 0  # configurations told before the sampler proposed: the default, listed
    skipped: int = 0  # proposals never compiled: they held a choice learned to break
    broken: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    answer: Answer | None = None

    @property
    def vs_default(self) -> float | None:
        return _ratio(self.default_ms, self.best_ms)

    @property
    def vs_listed(self) -> float | None:
        return _ratio(self.listed[1] if self.listed else None, self.best_ms)

    @property
    def vs_llamacpp(self) -> float | None:
        """llama.cpp's ms/token over the best trial's: below 1, llama.cpp is faster."""
        return _ratio(self.llamacpp_ms, self.best_ms)

    def best_so_far(self) -> list[tuple[int, float]]:
        curve, best = [], None
        for number, value in self.history:
            if value is not None and (best is None or value < best):
                best = value
            if best is not None:
                curve.append((number, best))
        return curve


def _ratio(baseline: float | None, best: float | None) -> float | None:
    return baseline / best if baseline and best else None


def load_studies(
    results_dir: Path, rows: Mapping[str, Mapping[str, Any]] | None = None
) -> list[StudySummary]:
    """Every study of the searches under `results_dir`; [] when none ran there. The
    baselines' rows come from the results unless given (newest row by point key)."""
    if not (Path(results_dir) / STORAGE_FILE).is_file():
        return []
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = storage_url(results_dir)
    if rows is None:
        columns = [Col.DECODE_MS_P50, Col.KLD_MEAN, Col.TOP1_AGREE]
        rows = newest_rows(results_dir, columns) if _has_results(results_dir) else {}
    return [
        _summary(optuna.load_study(study_name=info.study_name, storage=storage), rows)
        for info in optuna.get_all_study_summaries(storage)
    ]


def _summary(study: optuna.Study, rows: Mapping[str, Mapping[str, Any]]) -> StudySummary:
    from optuna.trial import TrialState

    attrs = study.user_attrs
    bound = QualityBound(**(attrs.get("quality_bound") or {}))

    def ms(key: str | None, bound: QualityBound | None = None) -> float | None:
        row = rows.get(key) if key else None
        if not row or row[Col.STATUS] != Status.OK or (bound and not bound.admits(row)):
            return None
        return row[Col.DECODE_MS_P50]

    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
    told = [t for t in finished if not (t.user_attrs.get("repeat") or t.user_attrs.get("skipped"))]
    complete = [t for t in told if trial_ms(t) is not None]
    best = min(complete, key=lambda t: (t.value, t.number)) if complete else None
    default = next((t for t in told if t.user_attrs.get("default")), None)
    listed = [(name, ms(key, bound), key) for name, key in (attrs.get("listed") or {}).items()]
    listed_ok = [(name, value, key) for name, value, key in listed if value is not None]
    best_row = rows.get(best.user_attrs.get(Col.POINT_KEY)) if best else None
    outside = sum(t.constraints.get(QUALITY, 0.0) > 0 for t in told)
    seeded = sum(bool(t.user_attrs.get("seed")) for t in told)
    return StudySummary(
        name=study.study_name,
        variant=attrs.get("variant", "?"),
        device=attrs.get("device", "?"),
        space_size=attrs.get("space_size", 0),
        trials=len(told) - seeded,
        failed=len(told) - len(complete) - outside,
        history=[(t.number, trial_ms(t)) for t in told],
        best_ms=best.value if best else None,
        best=_changes(best.params, attrs.get("defaults", {})) if best else {},
        minimal=attrs.get("minimal"),
        default_ms=trial_ms(default) if default else None,
        listed=min(((n, v) for n, v, _ in listed_ok), key=lambda x: x[1]) if listed_ok else None,
        xla_ms=ms(attrs.get(Runtime.XLA)),
        llamacpp_ms=ms(attrs.get(Runtime.LLAMACPP)),
        bound=bound.text(),
        outside=outside,
        best_kld=(best_row or {}).get(Col.KLD_MEAN),
        best_top1=(best_row or {}).get(Col.TOP1_AGREE),
        seeded=seeded,
        skipped=sum(bool(t.user_attrs.get("skipped")) for t in finished),
        broken=dict(attrs.get(BROKEN) or {}),
        answer=_answer(best, attrs.get("defaults", {}), listed_ok, rows),
    )


def _answer(
    best: FrozenTrial | None,
    defaults: dict[str, str],
    listed: list[tuple[str, float, str]],
    rows: Mapping[str, Mapping[str, Any]],
) -> Answer | None:
    """The best trial, or a listed row inside the bound when it is faster (a study told
    before listed configurations were seeded into it)."""
    answers = []
    if best is not None:
        key, attrs = best.user_attrs.get(Col.POINT_KEY, ""), best.user_attrs
        changes = _changes(best.params, defaults)
        config = " ".join(f"{k}={v}" for k, v in changes.items()) or "default"
        origin = (
            f"listed {attrs['listed_as']}"
            if attrs.get("listed_as")
            else "default"
            if attrs.get("default")
            else "proposed"
        )
        answers.append((best.value, 0, config, origin, key))
    answers += [(ms, 1, f"listed {name}", f"listed {name}", key) for name, ms, key in listed]
    if not answers:
        return None
    ms, _, config, origin, key = min(answers)
    row = rows.get(key) or {}
    return Answer(config, ms, row.get(Col.KLD_MEAN), row.get(Col.TOP1_AGREE), origin, key)


def _has_results(results_dir: Path) -> bool:
    return any(Path(results_dir).glob("run_id=*/*.parquet"))


def _changes(params: dict[str, str], defaults: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in params.items() if defaults.get(k) != v}


def minimal_text(s: StudySummary) -> str:
    """The minimal configuration as `axis=choice` pairs ("default" when nothing is left)."""
    if s.minimal is None:
        return "(not ablated)" if s.best_ms is not None else ""
    params = s.minimal["params"]
    kept = [f"{axis}={params[axis]}" for axis in s.minimal["kept"]]
    return " ".join(kept) or "default"


def studies_table(summaries: list[StudySummary]) -> Table:
    from sweep.readers.tables import Column, Table, fmt_num, fmt_percent, fmt_ratio, metric

    def speedup(value: float | None) -> str:
        return fmt_ratio(value or None)

    records = [
        {
            Col.VARIANT: s.variant,
            Col.DEVICE: s.device,
            "trials": s.trials,
            "seeded": s.seeded,
            "skipped": s.skipped,
            "failed": s.failed,
            "space": s.space_size,
            "default_ms": s.default_ms,
            "listed": f"{s.listed[0]} {fmt_num(s.listed[1])}" if s.listed else "",
            "best_ms": s.best_ms,
            "vs_default": s.vs_default,
            "vs_listed": s.vs_listed,
            "xla_ms": s.xla_ms,
            "llamacpp_ms": s.llamacpp_ms,
            "vs_llamacpp": s.vs_llamacpp,
            "minimal": minimal_text(s),
            "minimal_ms": (s.minimal or {}).get("ms"),
            Col.FLAGS: " ".join((s.minimal or {}).get(Col.FLAGS, [])),
            "dropped": ", ".join((s.minimal or {}).get("dropped", [])),
            "study": s.name,
            "bound": s.bound,
            "outside": s.outside,
            "best_kld": s.best_kld,
            "best_top1": s.best_top1,
            **_answer_record(s.answer),
            "broken": s.broken,
        }
        for s in summaries
    ]
    columns = [
        Column(Col.VARIANT, lambda r: r[Col.VARIANT]),
        Column(Col.DEVICE, lambda r: r[Col.DEVICE]),
        Column("trials", lambda r: f"{r['trials']}/{r['space']}", right=True),
        metric("seeded", "seeded", str),
        metric("failed", "failed", str),
        metric("outside bound", "outside", str),
        metric("default ms", "default_ms"),
        Column("best listed ms", lambda r: r["listed"], right=True),
        metric("best ms", "best_ms"),
        metric("its KLD", "best_kld", lambda v: "" if v is None else f"{v:.4g}"),
        metric("its top-1", "best_top1", fmt_percent),
        Column("vs default", lambda r: speedup(r["vs_default"]), right=True),
        Column("vs listed", lambda r: speedup(r["vs_listed"]), right=True),
        metric("XLA ms", "xla_ms"),
        *(
            [
                metric("llama.cpp ms", "llamacpp_ms"),
                Column("vs llama.cpp", lambda r: speedup(r["vs_llamacpp"]), right=True),
            ]
            if any(r["llamacpp_ms"] is not None for r in records)
            else []
        ),
        Column("minimal configuration", lambda r: r["minimal"]),
        metric("its ms", "minimal_ms"),
        Column("dropped by ablation", lambda r: r["dropped"]),
    ]
    notes = [f"flags of {r['variant']}/{r['device']}: {r['flags'] or '(none)'}" for r in records]
    notes += [
        f"quality bound of {r['variant']}/{r['device']}: {r['bound']} (best: the fastest "
        "inside it; outside bound: ok trials whose quality is not)"
        for r in records
        if r["bound"] != "none"
    ]
    notes += broken_notes(records)
    return Table(records, columns, header={}, notes=notes)


def _answer_record(answer: Answer | None) -> dict[str, Any]:
    fields = ("config", "ms", "kld", "top1", "origin")
    values = dataclasses.asdict(answer) if answer else {}
    return {f"answer_{name}": values.get(name) for name in fields}


def broken_notes(records: list[dict[str, Any]]) -> list[str]:
    """The choices each study learned break its graphs, and how many proposals they cost."""
    return [
        f"broken in {r['variant']}/{r['device']}: {label} breaks {info['graph']} "
        f"(iree-compile: '{info['signature']}', point {info['point_key']}); "
        f"not proposed again ({r['skipped']} proposals skipped)"
        for r in records
        for label, info in r["broken"].items()
    ]


def answers_table(summaries: list[StudySummary]) -> Table:
    """One line per variant and device: the search's answer and where it came from."""
    from sweep.readers.tables import Column, Table, fmt_kld, fmt_percent, metric

    records = [
        {
            Col.VARIANT: s.variant,
            Col.DEVICE: s.device,
            **_answer_record(s.answer),
            "minimal": minimal_text(s),
            "minimal_ms": (s.minimal or {}).get("ms"),
        }
        for s in summaries
    ]
    columns = [
        Column(Col.VARIANT, lambda r: r[Col.VARIANT]),
        Column(Col.DEVICE, lambda r: r[Col.DEVICE]),
        Column("answer", lambda r: r["answer_config"] or "(no ok configuration)"),
        metric("ms/tok", "answer_ms"),
        metric("KLD", "answer_kld", fmt_kld),
        metric("top-1", "answer_top1", fmt_percent),
        Column("from", lambda r: r["answer_origin"] or ""),
        Column("ablated to", lambda r: r["minimal"]),
        metric("its ms", "minimal_ms"),
    ]
    return Table(records, columns, header={})


def print_studies(results_dir: Path, out: Any = sys.stdout) -> None:
    summaries = load_studies(results_dir)
    if summaries:
        print("\n" + studies_text(summaries), file=out)


def studies_text(summaries: list[StudySummary]) -> str:
    """The answers, then the studies in detail: what `report --search` prints as markdown."""
    from sweep.readers.tables import render_md

    return (
        "search answers (per variant and device: the fastest configuration inside the "
        "bound of all the study measured, listed or proposed):\n\n"
        + render_md(answers_table(summaries))
        + "\n\nsearch studies (decode ms/token; trials: distinct configurations the "
        "sampler proposed / space; seeded: the default and the listed ones):\n\n"
        + render_md(studies_table(summaries))
    )


def best_so_far_figure(summaries: list[StudySummary]) -> Figure | str:
    """Best decode ms/token so far over trial number, one line per study."""
    from matplotlib.figure import Figure

    curves = [(s, s.best_so_far()) for s in summaries if s.best_so_far()]
    if not curves:
        return "no study has an ok trial"
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    for s, curve in curves:
        numbers, values = zip(*curve, strict=True)
        line = ax.step(numbers, values, where="post", label=f"{s.variant}/{s.device}")[0]
        if s.default_ms:
            ax.axhline(s.default_ms, color=line.get_color(), linestyle=":", linewidth=1)
    ax.set_xlabel("trial")
    ax.set_ylabel("best decode ms/token so far")
    ax.set_title("search: best so far (dotted: the default configuration)")
    ax.legend()
    return fig
