"""Search: the fastest correct configuration of each (variant, device), found instead of listed.

`python -m sweep +grid=smoke +search=flags search.trials=12` runs one study per
(variant, device) of the grid over the space `conf/search/flags.yaml` declares: IREE
flag dimensions (each a set of named choices, a switch being off/on), the weight
layout and the weight format. A trial is one configuration, measured as an ordinary
point (same compile tasks, cache, resident-weight actors and row) at the study's
shape: the grid's longest prompt, and its first batch size, depth and attention.

Why Optuna's ask-and-tell: the scheduler owns the loop (compiles spread over the
cluster while the actors measure), so the search must not. `refill` asks each study
for up to `search.parallel` trials in flight; a trial's row tells its study when the
sink writes it. Ray Tune would run the trials itself, beside the scheduler, not
through it. The sampler is TPE (seeded; `constant_liar` so parallel asks spread).

Rules:
- The objective is the decode median (ms/token) of an `ok` row: tokens equal to the
  reference. Any other status (compile error, crash, timeout, wrong tokens) is told
  to the study as infeasible (complete, value inf, constraint `failed` = 1), never as
  fast, and its row says why. Not as Optuna's FAIL state: TPE leaves FAIL trials out
  of its model, so it would keep proposing the flags that break the compiler;
  infeasible trials rank below every ok one and steer it away (in the space of
  `test_the_sampler_learns_to_avoid_configurations_that_fail`, 16 of the 24 trials
  after the start-up failed when told FAIL, 10 when told infeasible).
- A quality bound (`search.max_kld`, `search.min_top1`; a checkpoint with a tokenizer,
  see `workers.measure.perplexity`): an ok row whose `kld_mean` is above the bound, or whose
  `top1_agree` is below it, is told as infeasible the same way, with constraint
  `quality` (a row without the columns counts as outside). So the best trial, and the
  ablation's minimal configuration, are the fastest inside the bound.
- The budget is distinct configurations: a configuration proposed again is told its
  first answer and costs nothing, and one whose point the results already hold (a
  grid or another search measured it) is told that row. A study whose sampler keeps
  proposing known configurations is handed an unexplored one.
- The study's state is an SQLite database beside the results (`search.db`), so an
  interrupted search resumes (trials left running are measured, or told the row that
  finished meanwhile) and the same command adds no trials.
- Baselines run beside the trials as plain points: the grid's flag sets at the
  study's shape, and the XLA baseline. A trial whose flags equal a listed flag set
  takes that set's name; the others are named from their content, `s-<hash>`.
- Seeds (`Seed`): before the sampler proposes, a study is told the default configuration
  and every listed point at its shape that its space can spell (`Space.params_of`), each
  its baseline's row; so its best is never worse than a listed row inside the bound.
  They use no budget, and a resumed study is not seeded twice.
- Known-broken choices (`Dimension.breaks`, `sweep.search.broken`): a trial whose compile
  error holds a signature the space lists for one of its choices teaches the study that
  the choice breaks a graph (`user_attrs["broken"]`); later proposals holding it are told
  infeasible (constraint `broken`) without a compile and use no budget. Until one trial
  holding such a choice has answered, the others holding it wait (`held`) instead of
  compiling beside it, so a broken switch costs one compile, not `search.parallel`.
- When the budget is spent, the winner is ablated: it is measured again (its trial's
  time is the least of many noisy ones, so likely a lucky draw that every fresh
  measurement would look slow against), then each axis at a non-default choice is
  reset to its default in turn, and dropped when the configuration without it is no
  more than `search.ablation_tolerance` slower than the winner measured again. The
  minimal configuration is stored in the study (`user_attrs["minimal"]`);
  `python -m sweep.report --search` shows it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import random
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweep.plan.config import Dimension, SearchConfig, SweepConfig
from sweep.plan.grid import NO_FLAG_SET, Point
from sweep.search.broken import KnownBreaks
from workers.core.kinds import Runtime, Status, Weights

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial, Trial

STORAGE_FILE = "search.db"
REPEATS_BEFORE_FORCING = 8  # proposals of known configurations in a row before we pick one
MAX_RANDOM_DRAWS = 2000  # tries to draw an unexplored configuration at random
SEARCH_PREFIX = "s-"  # flag sets named from their content

Params = dict[str, str]
Lookup = Callable[[str], "Mapping[str, Any] | None"]  # point key -> its measured row, if any
Scheduled = Callable[[str], bool]  # is a point of this key already queued in this sweep?


def storage_url(results_dir: Path) -> str:
    return f"sqlite:///{Path(results_dir).resolve() / STORAGE_FILE}"


def objective(row: Mapping[str, Any]) -> float | None:
    """What a row tells its study: the decode median of an ok row; None (failed) otherwise."""
    value = row.get("decode_ms_p50")
    return float(value) if row.get("status") == Status.OK and value is not None else None


FAILED = "failed"  # the constraint a failed trial violates
QUALITY = "quality"  # ... and one whose quality is outside the search's bound
BROKEN = "broken"  # ... and one not compiled: it holds a choice known to break the graph


@dataclasses.dataclass(frozen=True)
class QualityBound:
    """`search.max_kld` and `search.min_top1`: what an ok row's quality must satisfy."""

    max_kld: float | None = None
    min_top1: float | None = None

    @classmethod
    def of(cls, search: SearchConfig) -> QualityBound:
        return cls(search.max_kld, search.min_top1)

    def __bool__(self) -> bool:
        return self.max_kld is not None or self.min_top1 is not None

    def admits(self, row: Mapping[str, Any]) -> bool:
        """Inside the bound; a row without the quality columns is not (unknown quality)."""
        kld, top1 = row.get("kld_mean"), row.get("top1_agree")
        if self.max_kld is not None and (kld is None or kld > self.max_kld):
            return False
        return self.min_top1 is None or (top1 is not None and top1 >= self.min_top1)

    def text(self) -> str:
        parts = [f"kld_mean <= {self.max_kld:g}"] if self.max_kld is not None else []
        parts += [f"top1_agree >= {self.min_top1:g}"] if self.min_top1 is not None else []
        return " and ".join(parts) or "none"


def verdict(row: Mapping[str, Any], bound: QualityBound) -> tuple[float | None, str]:
    """(ms to tell, or None for infeasible; the constraint an infeasible row violates)."""
    value = objective(row)
    if value is not None and bound and not bound.admits(row):
        return None, QUALITY
    return value, FAILED


def trial_ms(trial: FrozenTrial) -> float | None:
    """The measured ms of a told trial; None for an infeasible one (failed or outside the
    quality bound), or FAIL in a study written before failures were told as infeasible."""
    from optuna.trial import TrialState

    if trial.state != TrialState.COMPLETE or any(v > 0 for v in trial.constraints.values()):
        return None
    return trial.value


# --- the space -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Space:
    """The axes of one study: the flag dimensions that apply to its device, the layouts,
    the formats and how the graphs hold the weights, each with its default first. The
    weights are an axis only where they have a choice (so the spaces, and studies, from
    before the axis stay the same)."""

    name: str
    dimensions: tuple[tuple[str, Dimension], ...]
    layouts: tuple[str, ...]
    formats: tuple[str, ...]
    weights: tuple[str, ...] = (Weights.ARGUMENTS,)

    @classmethod
    def of(cls, search: SearchConfig, cfg: SweepConfig, variant: str, device: str) -> Space:
        layouts = search.layouts or cfg.grid.layouts
        default_layout = cfg.grid.layouts[0]  # the grid's own layout comes first
        layouts = (default_layout, *(layout for layout in layouts if layout != default_layout))
        formats = search.formats.get(variant, (variant,))
        formats = (variant, *(f for f in formats if f != variant))
        dims = tuple((n, d) for n, d in search.dimensions.items() if d.applies_to(device))
        weights = search.weights or cfg.grid.weights
        weights = (cfg.grid.weights[0], *(w for w in weights if w != cfg.grid.weights[0]))
        return cls(search.name, dims, layouts, formats, weights)

    @property
    def axes(self) -> dict[str, tuple[str, ...]]:
        """Every parameter's choices, the default first, in the order flags are given."""
        axes = {name: tuple(dim.choices) for name, dim in self.dimensions}
        axes = {**axes, "layout": self.layouts, "format": self.formats}
        return {**axes, "weights": self.weights} if len(self.weights) > 1 else axes

    def weights_of(self, params: Params) -> str:
        return params.get("weights", self.weights[0])

    def default(self) -> Params:
        return {name: choices[0] for name, choices in self.axes.items()}

    @property
    def size(self) -> int:
        return math.prod(len(choices) for choices in self.axes.values())

    def suggest(self, trial: optuna.Trial) -> Params:
        return {name: trial.suggest_categorical(name, list(c)) for name, c in self.axes.items()}

    def draw(self, rng: random.Random) -> Params:
        return {name: rng.choice(choices) for name, choices in self.axes.items()}

    def flags(self, params: Params) -> tuple[str, ...]:
        return tuple(flag for name, dim in self.dimensions for flag in dim.choices[params[name]])

    def params_of(self, point: Point) -> Params | None:
        """The configuration whose flags, layout and format are the point's, or None when
        the space cannot spell it (a flag no dimension offers, another layout)."""
        if point.layout not in self.layouts or point.variant.name not in self.formats:
            return None
        if point.weights not in self.weights:
            return None
        params = {"layout": point.layout, "format": point.variant.name}
        if len(self.weights) > 1:
            params["weights"] = point.weights
        given = set(point.flags)
        for name, dim in self.dimensions:
            fitting = [c for c, flags in dim.choices.items() if set(flags) <= given]
            params[name] = max(fitting, key=lambda c: len(dim.choices[c]), default=dim.default)
        return params if self.flags(params) == point.flags else None

    def fingerprint(self) -> str:
        dims = {name: {c: list(f) for c, f in dim.choices.items()} for name, dim in self.dimensions}
        axes = [list(dims.items()), self.layouts, self.formats]
        blob = json.dumps([*axes, self.weights] if len(self.weights) > 1 else axes)
        return hashlib.sha256(blob.encode()).hexdigest()[:8]


def flag_set_name(flags: tuple[str, ...], listed: Mapping[str, tuple[str, ...]]) -> str:
    """A listed flag set's name when the flags are the same, else one made from them."""
    for name, listed_flags in listed.items():
        if tuple(listed_flags) == flags:
            return name
    return SEARCH_PREFIX + hashlib.sha256(json.dumps(flags).encode()).hexdigest()[:8]


# --- one study -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Seed:
    """A configuration a study is told before its sampler proposes: the default, and each
    point the grid lists inside the space (its row is the baselines' own), so the best
    is never worse than what the run measured. Seeds do not use up `search.trials`."""

    params: Params
    key: str  # its point's key
    listed: str | None  # the listed point's name (`[variant/]flag_set/layout`), if listed
    default: bool = False  # the default configuration

    def user_attrs(self) -> dict[str, Any]:
        return {
            "seed": True,
            "point_key": self.key,  # so a resumed study finds it, asked or not
            "listed_as": self.listed,
            "default": self.default,
        }


def seeds_of(
    space: Space, point_of: Callable[[Params], Point], variant: str, listed: list[Point]
) -> list[Seed]:
    """The default configuration, then each listed point the space can spell, one per key."""
    default = space.default()
    seeds = {point_of(default).key: Seed(default, point_of(default).key, None, default=True)}
    for p in listed:
        params = space.params_of(p)
        if params is None or point_of(params).key != p.key:
            continue
        name = f"{p.flag_set}/{p.layout}"
        name = name if p.variant.name == variant else f"{p.variant.name}/{name}"
        seed = seeds.get(p.key)
        if seed is None or seed.listed is None:
            seeds[p.key] = Seed(params, p.key, name, default=seed is not None)
    return list(seeds.values())


@dataclasses.dataclass
class Ablation:
    """The winner with its non-default axes reset one at a time (see the module docstring)."""

    winner: Params
    winner_key: str
    winner_ms: float  # its trial's time: the best of many noisy ones, so likely a lucky one
    todo: list[str]  # axes still to try at their default
    reference: float | None = None  # the winner measured again: what candidates must match
    params: Params = dataclasses.field(default_factory=dict)  # the configuration so far
    value: float = 0.0  # its ms/token
    dropped: list[str] = dataclasses.field(default_factory=list)
    kept: list[str] = dataclasses.field(default_factory=list)
    asked: str | None = None  # the point key being measured

    def __post_init__(self) -> None:
        self.params, self.value = dict(self.winner), self.winner_ms


class StudyRun:
    """One study in this sweep: its Optuna study, what it knows, and what it waits for."""

    def __init__(
        self,
        study: optuna.Study,
        space: Space,
        point_of: Callable[[Params], Point],
        lookup: Lookup,
        scheduled: Scheduled,
        search: SearchConfig,
        seeds: Iterable[Seed] = (),
    ) -> None:
        self.study, self.space, self.point_of, self.lookup = study, space, point_of, lookup
        self.scheduled = scheduled
        self.parallel, self.tolerance = search.parallel, search.ablation_tolerance
        self.seeds = list(seeds)
        self.budget = min(search.trials, max(space.size - len(self.seeds), 0))
        self.rng = random.Random(search.seed)
        self.bound = QualityBound.of(search)
        self.known: dict[str, float | None] = {}  # trial configurations told: key -> ms or None
        self.violated: dict[str, str] = {}  # key -> the constraint an infeasible one violates
        self.waiting: dict[str, list[int]] = {}  # key -> numbers of the trials waiting for it
        self.measured: dict[str, float | None] = {}  # ablation points' outcomes
        self.asked: dict[int, Trial] = {}  # trial number -> its handle, to tell a failure
        self.seeded: set[str] = set()  # keys of seed trials: they use no budget
        self.params_of_key: dict[str, Params] = {}  # each trial key's configuration
        self.breaks = KnownBreaks(space.dimensions, dict(study.user_attrs.get(BROKEN) or {}))
        self.held: dict[str, Point] = {}  # proposals waiting for a suspect choice's answer
        self._to_ask = 0  # enqueued trials (seeds) to ask before the sampler proposes
        self.repeats = 0  # known configurations proposed in a row
        self.exhausted = False
        self.ablation: Ablation | None = None
        self.done = False
        self._resumed: list[Point] | None = None  # None: not resumed yet

    @property
    def name(self) -> str:
        return self.study.study_name

    def num_told(self) -> int:
        """Distinct configurations the sampler added and the study has been told, in this
        sweep or before: what `search.trials` bounds (seeds and skipped ones not counted)."""
        from optuna.trial import TrialState

        finished = (TrialState.COMPLETE, TrialState.FAIL)
        trials = self.study.get_trials(deepcopy=False, states=finished)
        seeds = {t.user_attrs.get("point_key") for t in trials if t.user_attrs.get("seed")}
        keys = {t.user_attrs.get("point_key") for t in trials if not t.user_attrs.get("skipped")}
        return len(keys - seeds)

    def _num_proposed(self) -> int:
        """Distinct configurations the sampler added in this study so far (told or not)."""
        return len((self.known.keys() | self.waiting.keys()) - self.seeded)

    @property
    def owned_keys(self) -> set[str]:
        return set(self.known) | set(self.waiting) | set(self.measured)

    def _resume(self) -> None:
        """Rebuilds what the study knows from its database; trials left running (an
        interrupted sweep) are measured again, or told the row that finished meanwhile."""
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        self._enqueue_seeds(trials)
        for t in trials:
            if set(t.params) != set(self.space.axes) or t.user_attrs.get("skipped"):
                continue  # enqueued, not yet asked; or never measured
            key = self.point_of(t.params).key
            self.params_of_key[key] = dict(t.params)
            if t.user_attrs.get("seed"):
                self.seeded.add(key)
            if t.state in (TrialState.COMPLETE, TrialState.FAIL):
                self.known[key] = trial_ms(t)
                violated = [c for c, v in t.constraints.items() if v > 0]
                self.violated[key] = violated[0] if violated else FAILED
                if self.violated[key] != FAILED or self.known[key] is not None:
                    self.breaks.note_compiled(dict(t.params))  # it ran
            elif t.state == TrialState.RUNNING:
                self._resume_running(t.number, key, seed=key in self.seeded)
        for key in list(self.waiting):
            if (row := self.lookup(key)) is not None:
                self.observe(row)

    def _resume_running(self, number: int, key: str, seed: bool) -> None:
        """A trial a sweep left running: skipped if it holds a choice learned broken since,
        else it waits for its row (measured again, or held behind a suspect's probe)."""
        params = self.params_of_key[key]
        if not seed and (broken := self.breaks.broken_choice(params)) is not None:
            self._skip(number, broken)
            return
        if key not in self.waiting and not self._answered(key):
            point = self.point_of(params)
            if self._awaits_probe(key, params):
                self.held[key] = point
            else:
                self._resumed.append(point)
        self.waiting.setdefault(key, []).append(number)

    def _enqueue_seeds(self, trials: list[FrozenTrial]) -> None:
        """The seeds the study has no trial of yet: all of them in a new study, none in a
        resumed one (unless the grid lists more now); asked before the sampler proposes."""
        from optuna.trial import TrialState

        present = {t.user_attrs.get("point_key") for t in trials}
        for seed in self.seeds:
            if seed.key not in present:
                self.study.enqueue_trial(seed.params, user_attrs=seed.user_attrs())
        self._to_ask = len(self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    # --- proposing ---------------------------------------------------------------------

    def next_points(self) -> list[Point]:
        """Points to measure now: trials up to `parallel` in flight, then the ablation."""
        if self._resumed is None:  # first call: the baselines are scheduled by now
            self._resumed = []
            self._resume()
        points, self._resumed = self._resumed + self._release(), []
        for _ in range(self._to_ask):  # the seeds first: their rows are the baselines'
            points += [p for p in [self._ask()] if p is not None]
        self._to_ask = 0
        while (
            not self.exhausted
            and self._num_proposed() < self.budget
            and len(self.waiting.keys() - self.seeded - self.held.keys()) < self.parallel
        ):
            point = self._ask()
            if point is not None:
                points.append(point)
        if not points and not self.waiting and not self.done:
            points += self._ablate()
        return points

    def _ask(self) -> Point | None:
        """One trial: a new configuration to measure, or None when it was answered at once."""
        if self.repeats >= REPEATS_BEFORE_FORCING:
            unexplored = self._unexplored()
            if unexplored is None:
                self.exhausted = True
                return None
            self.study.enqueue_trial(unexplored, user_attrs={"forced": True})
        trial = self.study.ask()
        self.asked[trial.number] = trial
        params = self.space.suggest(trial)
        point = self.point_of(params)
        key = point.key
        trial.set_user_attr("point_key", key)
        trial.set_user_attr("flag_set", point.flag_set)
        seed = bool(trial.user_attrs.get("seed"))
        if not seed and (broken := self.breaks.broken_choice(params)) is not None:
            self.repeats += 1
            self._skip(trial.number, broken)
            return None
        self.params_of_key[key] = params
        if seed:
            self.seeded.add(key)
        if key in self.known or key in self.waiting:  # proposed before: no budget
            self.repeats += 1
            trial.set_user_attr("repeat", True)
            if key in self.known:
                self._tell(trial.number, self.known[key], self.violated.get(key, FAILED))
            else:
                self.waiting[key].append(trial.number)
            return None
        self.repeats = 0
        self.waiting[key] = [trial.number]
        if (row := self.lookup(key)) is not None:  # measured before, by a grid or a search
            self.observe(row)
            return None
        if self.scheduled(key):
            return None  # a baseline's row will answer it
        if self._awaits_probe(key, params):
            self.held[key] = point
            return None
        return point

    def _answered(self, key: str) -> bool:
        """A row holds the answer already, or one being measured will."""
        return self.lookup(key) is not None or self.scheduled(key)

    def _unexplored(self) -> Params | None:
        seen = self.owned_keys

        def new(params: Params) -> bool:
            key = self.point_of(params).key
            return key not in seen and self.breaks.broken_choice(params) is None

        for _ in range(MAX_RANDOM_DRAWS):
            params = self.space.draw(self.rng)
            if new(params):
                return params
        if self.space.size <= MAX_RANDOM_DRAWS:  # a small space: look at every configuration
            axes = self.space.axes
            for values in itertools.product(*axes.values()):
                params = dict(zip(axes, values, strict=True))
                if new(params):
                    return params
        return None

    def _awaits_probe(self, key: str, params: Params) -> bool:
        """The configuration holds a suspect choice (`Dimension.breaks`) that another trial
        in flight holds too: its answer says whether this one can compile at all."""
        untested = set(self.breaks.untested(params))
        return bool(untested) and any(
            untested & set(self.breaks.suspects(self.params_of_key[other]))
            for other in self.waiting.keys() - self.held.keys() - {key}
        )

    def _release(self) -> list[Point]:
        """Held proposals whose suspect choice has answered: told broken without a compile
        (no budget used), or measured now."""
        points = []
        for key, point in list(self.held.items()):
            params = self.params_of_key[key]
            if key not in self.waiting:  # answered meanwhile
                del self.held[key]
            elif (broken := self.breaks.broken_choice(params)) is not None:
                del self.held[key]
                for number in self.waiting.pop(key):
                    self._skip(number, broken)
            elif not self._awaits_probe(key, params):
                del self.held[key]
                points.append(point)
        return points

    def _skip(self, number: int, broken: str) -> None:
        """Trial `number` holds a choice learned broken: told infeasible, never compiled."""
        self._trial(number).set_user_attr("skipped", broken)
        self._tell(number, None, BROKEN)

    def _tell(self, number: int, value: float | None, constraint: str = FAILED) -> None:
        if self.study.get_trials(deepcopy=False)[number].state.is_finished():
            return  # told before (a repeat told its first answer, then the row came)
        if value is None:
            trial = self._trial(number)
            trial.set_constraint(constraint, 1.0)
            self.study.tell(trial, math.inf)
        else:
            self.study.tell(number, value)

    def _trial(self, number: int) -> Trial:
        """A live handle on trial `number` (asked here, or left running by a sweep before)."""
        import optuna

        if (trial := self.asked.get(number)) is None:
            # Optuna offers no public way from a trial number to a live Trial
            frozen = self.study.get_trials(deepcopy=False)[number]
            trial = self.asked[number] = optuna.Trial(self.study, frozen._trial_id)
        return trial

    # --- answers -----------------------------------------------------------------------

    def observe(self, row: Mapping[str, Any]) -> None:
        key, (value, constraint) = row["point_key"], verdict(row, self.bound)
        if key in self.waiting:
            self._learn(row)
        for number in self.waiting.pop(key, []):
            self._tell(number, value, constraint)
            self.known[key] = value
            self.violated[key] = constraint
        if self.ablation is not None and self.ablation.asked == key:
            self.measured[key] = value

    def _learn(self, row: Mapping[str, Any]) -> None:
        """What a trial's row says of its suspect choices (`sweep.search.broken`): one that
        broke the graph is stored in the study, and proposed no more."""
        params = self.params_of_key.get(row["point_key"])
        if params is not None and self.breaks.learn(params, row):
            self.study.set_user_attr(BROKEN, self.breaks.learned)

    # --- the ablation ------------------------------------------------------------------

    def best(self) -> tuple[Params, str, float] | None:
        from optuna.trial import TrialState

        complete = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        ok = [t for t in complete if trial_ms(t) is not None]
        if not ok:
            return None
        best = min(ok, key=lambda t: (t.value, t.number))
        return dict(best.params), self.point_of(best.params).key, float(best.value)

    def _ablate(self) -> list[Point]:
        """The ablation's next point, or [] when it waits or is done (the result stored)."""
        if self.ablation is None:
            best = self.best()
            minimal = self.study.user_attrs.get("minimal")
            if best is None or (minimal and minimal["of_point_key"] == best[1]):
                self.done = True
                return []
            params, key, ms = best
            default = self.space.default()
            todo = [axis for axis in self.space.axes if params[axis] != default[axis]]
            self.ablation = Ablation(params, key, ms, todo)
        ab = self.ablation
        if ab.todo and ab.reference is None:
            again = dataclasses.replace(self.point_of(ab.winner), replica=1)
            outcome = self._outcome(again.key)
            if outcome is False:
                return self._measure(ab, again)
            ab.reference = ab.winner_ms if outcome is None else outcome
            ab.value = ab.reference
        while ab.todo:
            axis = ab.todo[0]
            candidate = {**ab.params, axis: self.space.default()[axis]}
            point = self.point_of(candidate)
            outcome = self._outcome(point.key)
            if outcome is False:
                return self._measure(ab, point)
            ab.todo.pop(0)
            assert ab.reference is not None
            if outcome is not None and outcome <= ab.reference * (1 + self.tolerance):
                ab.params, ab.value = candidate, outcome
                ab.dropped.append(axis)
            else:
                ab.kept.append(axis)
        self._store_minimal(ab)
        self.done = True
        return []

    def _measure(self, ab: Ablation, point: Point) -> list[Point]:
        """The point to measure for the ablation, or [] while it is in flight."""
        if ab.asked == point.key:
            return []
        ab.asked = point.key
        return [] if self.scheduled(point.key) else [point]

    def _outcome(self, key: str) -> float | None | bool:
        """A configuration's ms/token, None if it failed, False if it was never measured."""
        for known in (self.known, self.measured):
            if key in known:
                return known[key]
        row = self.lookup(key)
        return False if row is None else verdict(row, self.bound)[0]

    def _store_minimal(self, ab: Ablation) -> None:
        point = self.point_of(ab.params)
        self.study.set_user_attr(
            "minimal",
            {
                "of_point_key": ab.winner_key,
                "winner": ab.winner,
                "winner_ms": ab.winner_ms,
                "winner_again_ms": ab.reference,
                "params": ab.params,
                "point_key": point.key,
                "flag_set": point.flag_set,
                "flags": list(point.flags),
                "ms": ab.value,
                "dropped": ab.dropped,
                "kept": ab.kept,
            },
        )


# --- every study of a sweep ------------------------------------------------------------


class Search:
    """The studies of one sweep, between the scheduler (`refill`) and the sink (`observe`)."""

    def __init__(
        self, studies: list[StudyRun], baselines: list[Point], scheduled: set[str]
    ) -> None:
        self.studies, self.baselines = studies, baselines
        self.scheduled = scheduled  # keys queued in this sweep and not yet answered

    def schedule(self, points: list[Point]) -> list[Point]:
        self.scheduled.update(p.key for p in points)
        return points

    def refill(self) -> list[Point]:
        return self.schedule([point for study in self.studies for point in study.next_points()])

    def observe(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            self.scheduled.discard(row["point_key"])
            for study in self.studies:
                study.observe(row)

    def owns(self, point_key: str) -> bool:
        """True for a trial's or an ablation's point: its failure is the search's data. A
        baseline's is not, though a study was told its row (a seed): the grid listed it."""
        if point_key in {p.key for p in self.baselines}:
            return False
        return any(point_key in study.owned_keys for study in self.studies)

    @property
    def waiting(self) -> bool:
        return any(study.waiting for study in self.studies)


def open_search(cfg: SweepConfig, grid_points: list[Point], lookup: Lookup) -> Search:
    """The studies of the grid's (variant, device) pairs, created or resumed; `lookup`
    finds a point's newest measured row (see `StudyRun`). Run `search.baselines` (those
    not done) first, through `schedule`, then whatever `refill` returns."""
    import optuna

    search = cfg.search
    assert search is not None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    storage = storage_url(Path(cfg.results_dir))
    Path(cfg.results_dir).mkdir(parents=True, exist_ok=True)
    listed = {name: fs.flags for name, fs in cfg.grid.flag_sets.items()}
    studies: list[StudyRun] = []
    scheduled: set[str] = set()  # shared with the Search made below
    shapes = study_shapes(cfg, grid_points)
    for (variant, device), shape in shapes.items():
        space = Space.of(search, cfg, variant, device)
        base = _base(shape)

        def point_of(params: Params, base: Point = base, space: Space = space) -> Point:
            flags = space.flags(params)
            return dataclasses.replace(
                base,
                variant=cfg.variants[params["format"]],
                layout=params["layout"],
                weights=space.weights_of(params),
                flags=flags,
                flag_set=flag_set_name(flags, listed),
            )

        name = f"{cfg.grid.name}/{variant}/{device}/{space.name}-{_fingerprint(base, space)}"
        sampler = optuna.samplers.TPESampler(
            seed=search.seed, n_startup_trials=search.startup_trials, constant_liar=True
        )
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            sampler=sampler,
            direction="minimize",
            load_if_exists=True,
        )
        for attr, value in (
            ("listed", {f"{p.flag_set}/{p.layout}": p.key for p in shape}),
            (Runtime.XLA, _baseline(shape, Runtime.XLA).key if search.xla_baseline else None),
            (
                Runtime.LLAMACPP,
                _baseline(shape, Runtime.LLAMACPP).key if search.llamacpp_baseline else None,
            ),
            ("variant", variant),
            ("device", device),
            ("space_size", space.size),
            ("defaults", space.default()),
            ("quality_bound", dataclasses.asdict(QualityBound.of(search))),
        ):
            study.set_user_attr(attr, value)
        on_device = [p for (_, d), points in shapes.items() if d == device for p in points]
        seeds = seeds_of(space, point_of, variant, on_device)
        studies.append(
            StudyRun(study, space, point_of, lookup, scheduled.__contains__, search, seeds)
        )
    return Search(studies, baselines(cfg, grid_points), scheduled)


def print_search_plan(search: Search, out: Any) -> None:
    for study in search.studies:
        print(
            f"search {study.name}: {study.space.size} configurations, "
            f"{len(study.seeds)} seeded (the default and what the grid lists), "
            f"budget {study.budget} more, told so far {study.num_told()}",
            file=out,
        )


def study_shapes(cfg: SweepConfig, points: list[Point]) -> dict[tuple[str, str], list[Point]]:
    """Per (variant, device) of the grid, its IREE points at the study's shape (the
    longest prompt; the first batch size, depth and attention): its listed flag sets on
    its layouts."""
    g = cfg.grid
    shapes: dict[tuple[str, str], list[Point]] = {}
    for p in points:
        if (
            p.runtime == Runtime.IREE
            and p.prompt_length == max(g.prompt_lengths)
            and (p.batch, p.depth, p.attention) == (g.batch_sizes[0], g.depths[0], g.attention[0])
        ):
            shapes.setdefault((p.variant.name, p.device.name), []).append(p)
    return shapes


def baselines(cfg: SweepConfig, grid_points: list[Point]) -> list[Point]:
    """The plain points a search measures beside its trials: the listed flag sets at each
    study's shape, and the XLA and llama.cpp baselines (`search.xla_baseline`,
    `search.llamacpp_baseline`)."""
    search = cfg.search
    assert search is not None
    runtimes = [
        runtime
        for runtime, wanted in (
            (Runtime.XLA, search.xla_baseline),
            (Runtime.LLAMACPP, search.llamacpp_baseline),
        )
        if wanted
    ]
    points = []
    for shape in study_shapes(cfg, grid_points).values():
        points += shape + [_baseline(shape, runtime) for runtime in runtimes]
    return list({p.key: p for p in points}.values())


def _base(shape: list[Point]) -> Point:
    """The study's point without flags: its trials replace variant, layout and flags."""
    return dataclasses.replace(shape[0], flags=(), flag_set="")


def _baseline(shape: list[Point], runtime: str) -> Point:
    """The study's shape on a baseline runtime (XLA, llama.cpp): no flags, the first layout."""
    return dataclasses.replace(
        shape[0], runtime=runtime, flags=(), flag_set=NO_FLAG_SET, weights=Weights.ARGUMENTS
    )


def _fingerprint(base: Point, space: Space) -> str:
    """What makes two studies the same: the shape they measure and the space."""
    return hashlib.sha256(f"{base.key}/{space.fingerprint()}".encode()).hexdigest()[:8]
