"""The typed sweep configuration: Hydra composes it, OmegaConf checks it, the driver freezes it.

Only `sweep/` touches Hydra. The schema is a set of frozen dataclasses: the ones
below and the workers' own `ModelSource`, `DeviceSpec` and `Variant`. For each, a
mutable twin is stored in Hydra's ConfigStore (OmegaConf cannot merge into a frozen
dataclass), so OmegaConf type-checks every YAML file and override as it is merged,
and its errors name the key. `load_config(overrides)` then freezes the composed
config into the dataclasses and checks what spans keys (a grid's devices must
exist, a prompt must fit the cache). Every error is a `ConfigError` that names the
key and says what is allowed; `python -m sweep` prints it and exits 2.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from pathlib import Path
from typing import Any

from workers.compile.iree import COMPILE_MODES
from workers.core.devices import DeviceSpec
from workers.core.kinds import Attention, Layout, Runtime, Weights
from workers.formats.variant import LAYOUTS, Variant
from workers.tasks import RUNTIMES, SWITCHES, DecodeSteps, LlamaCppSettings, ModelSource

ATTENTION: tuple[Attention, ...] = tuple(Attention)

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
SCHEMA_NAME = "sweep_schema"
# Keys that moved, and where to: a user's old override gets told, not just refused.
MOVED_KEYS = {"grid.group_size": "the variant: e.g. variants.int4.group_size=128"}


class ConfigError(ValueError):
    """A config or input error found before any work: the sweep exits with code 2."""


@dataclasses.dataclass(frozen=True)
class FlagSet:
    """Named IREE flags (`conf/flags/<name>.yaml`, or `+grid.flag_sets.NAME=[--flag]`)."""

    flags: tuple[str, ...] = ()
    devices: tuple[str, ...] | None = None  # None: applies to every device

    def __post_init__(self) -> None:
        bad = [f for f in self.flags if not (isinstance(f, str) and f.startswith("-"))]
        if bad:
            raise ValueError(f"{bad} are not flags (they must start with '-')")

    def applies_to(self, device: str) -> bool:
        return self.devices is None or device in self.devices


@dataclasses.dataclass(frozen=True)
class GridConfig:
    name: str
    variants: tuple[str, ...]  # names in `variants`
    devices: tuple[str, ...]  # names in `devices`
    prompt_lengths: tuple[int, ...]
    max_seq: int  # KV-cache capacity
    # A flag set is {flags, devices} or a bare list of flags, so the schema takes any value.
    flag_sets: dict[str, FlagSet] = dataclasses.field(metadata={"schema": dict[str, Any]})
    runtimes: tuple[str, ...] = (Runtime.IREE,)
    layouts: tuple[str, ...] = (Layout.IN_MAJOR,)  # how weight matrices reach the graphs
    # How IREE's graphs hold the weights: arguments of every call, or parameters loaded
    # (and, with data tiling, packed) once with the module (workers.model.parameters)
    weights: tuple[str, ...] = (Weights.ARGUMENTS,)
    batch_sizes: tuple[int, ...] = (1,)  # sequences decoded together
    depths: tuple[int, ...] = (0,)  # context tokens beyond the prompt when decode starts
    # What decode attends over: "full" (every cache slot, as the seed: depth costs
    # nothing) or "filled" (a power-of-two bucket of the filled slots: depth costs).
    attention: tuple[str, ...] = (Attention.FULL,)
    # Threads a point runs on: IREE's local-task workers, the actor pinned to that many
    # cores (`workers.core.threads`). 0: what runs without the axis, every CPU the actor may use.
    threads: tuple[int, ...] = (0,)


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    warmup_steps: int
    decode_steps: int
    prefill_runs: int
    compile_timeout_s: float
    point_timeout_s: float
    max_retries: int
    # iree-compile's processes together, resident: past it the compile is killed and its
    # points are compile_error rows that say so (workers/compile/bounded.py). GB = 1e9 bytes.
    compile_max_memory_gb: float = 12.0
    steps_per_call: int = 1  # greedy decode steps per call: a loop in the decode graph
    profile_calls: int = 10  # with profile=true: decode calls in each point's profile
    prompt: str | None = None  # a text prompt (a checkpoint's tokenizer.json); else seeded ids
    # The quality columns (sweep.plan.eval_text, workers.measure.perplexity): a plain-text
    # file (None: the Python Language Reference), cut into eval_chunks windows of eval_ctx tokens.
    eval_text: str | None = None
    eval_ctx: int = 512
    eval_chunks: int = 3  # 0: no quality columns
    # The niceness benchmark workers measure at (llama-bench's --prio): 0 is normal; below
    # 0 is higher and needs CAP_SYS_NICE or `ulimit -e` on the host, else the point runs
    # at the niceness it has and its row says which (workers.core.host).
    priority: int = 0
    # Every point measured this many times, the grid's points interleaved (A B C A B C),
    # one row per repeat; readers take the median of the repeats' medians.
    repeats: int = 1
    # GPU points a host times at once, each on its own GPU and its own share of the host's
    # cores (sweep.execute.scheduler): 0, one per GPU as far as the cores allow; 1, one
    # timed point per host, GPU or CPU (the rule before); N, at most N. CPU points always
    # run alone on their host.
    gpu_concurrency: int = 0

    @property
    def steps(self) -> DecodeSteps:
        return DecodeSteps(
            self.warmup_steps, self.decode_steps, self.prefill_runs, self.steps_per_call
        )


@dataclasses.dataclass(frozen=True)
class RayConfig:
    address: str = ""  # empty: start a local Ray; "auto" or host:port joins a cluster
    num_cpus: int | None = None  # CPUs of the local Ray (None: all)


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One axis of a search space: named choices, each a list of IREE flags; the first
    choice is the default. `switch: [flags]` is short for `choices: {off: [], on: [flags]}`."""

    choices: dict[str, tuple[str, ...]] = dataclasses.field(
        default_factory=dict, metadata={"schema": dict[str, Any]}
    )
    switch: tuple[str, ...] | None = None
    devices: tuple[str, ...] | None = None  # None: every device
    # Known compile failures a non-default choice causes: a signature (a piece of
    # iree-compile's message) -> the graph it breaks, in words. A trial that fails with
    # one teaches its study not to propose that choice again (see `sweep.search.study`).
    breaks: dict[str, str] = dataclasses.field(
        default_factory=dict, metadata={"schema": dict[str, Any]}
    )

    def __post_init__(self) -> None:
        if self.switch is not None:
            if self.choices:
                raise ValueError("give either choices or switch, not both")
            object.__setattr__(self, "choices", {"off": (), "on": tuple(self.switch)})
            object.__setattr__(self, "switch", None)
        if not self.choices:
            raise ValueError("no choices: give choices {name: [flags]} or switch: [flags]")
        for flags in self.choices.values():
            FlagSet(tuple(flags))  # every flag starts with '-'

    def applies_to(self, device: str) -> bool:
        return self.devices is None or device in self.devices

    @property
    def default(self) -> str:
        return next(iter(self.choices))


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """A search space (`conf/search/<name>.yaml`) and its budget: see `sweep.search`."""

    name: str
    # IREE flag dimensions, in the order flags are given; any value in the schema, so
    # `+search.dimensions.NAME={switch: [--flag]}` can add one (checked when frozen)
    dimensions: dict[str, Dimension] = dataclasses.field(metadata={"schema": dict[str, Any]})
    layouts: tuple[str, ...] = ()  # the layout axis; empty: grid.layouts
    weights: tuple[str, ...] = ()  # the weights axis (arguments, parameters); empty: grid.weights
    # the format axis: a grid variant -> the variants that may stand for it; absent: itself
    formats: dict[str, tuple[str, ...]] = dataclasses.field(
        default_factory=dict, metadata={"schema": dict[str, Any]}
    )
    trials: int = 32  # distinct configurations per study
    parallel: int = 4  # trials in flight per study: compiles overlap measurements
    seed: int = 0  # the sampler's seed
    startup_trials: int = 8  # random trials before the TPE model proposes
    ablation_tolerance: float = 0.03  # a flag the winner keeps must be worth more than this
    xla_baseline: bool = True  # also measure the XLA baseline of each study
    # and llama.cpp's (`skipped` where llama-cpp-python is not installed)
    llamacpp_baseline: bool = False
    # Quality bounds: a trial whose row is outside them is infeasible (sweep.quality_bound)
    max_kld: float | None = None  # kld_mean from fp32 at most this
    min_top1: float | None = None  # top1_agree with fp32 at least this


@dataclasses.dataclass(frozen=True)
class LlamaCppConfig:
    """llama.cpp's own switches (`workers.tasks.LlamaCppSettings`): `extra_bufts` is an
    axis of the llama.cpp points, the others hold for all of them."""

    # auto: off on a CPU with AMX (its AMX path crashes in llama-cpp-python 0.3.36), on
    # elsewhere; on, off: as said. [auto, off] measures with and without repacking.
    extra_bufts: tuple[str, ...] = ("auto",)
    flash_attn: str = "auto"  # auto (llama.cpp decides), on, off
    n_ubatch: int = 512  # a prefill's micro-batch (llama.cpp's -ub)

    def settings(self) -> list[LlamaCppSettings]:
        return [LlamaCppSettings(x, self.flash_attn, self.n_ubatch) for x in self.extra_bufts]


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    model: ModelSource
    devices: dict[str, DeviceSpec]  # every known device; grid.devices picks among them
    variants: dict[str, Variant]  # every known variant; grid.variants picks among them
    grid: GridConfig
    bench: BenchConfig
    results_dir: str
    cache_dir: str
    rerun: bool
    dry_run: bool
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)
    profile: bool = False  # IREE's per-dispatch profile of every ok point, after its timing
    search: SearchConfig | None = None  # `+search=flags`: search the space instead of the grid
    compile: str = "auto"  # auto: compile what the cache lacks; cache_only: never compile
    llamacpp: LlamaCppConfig = dataclasses.field(default_factory=LlamaCppConfig)


def load_config(overrides: list[str]) -> tuple[SweepConfig, dict[str, Any]]:
    """Composes conf/ with Hydra overrides; returns the checked config and the resolved dict."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    _register_schema()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            composed = compose(config_name="config", overrides=list(overrides))
        raw = OmegaConf.to_container(composed, resolve=True, throw_on_missing=True)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(_hydra_message(e)) from None
    assert isinstance(raw, dict)
    cfg = _freeze(SweepConfig, raw, "")
    check(cfg)
    return cfg, raw


def check(cfg: SweepConfig) -> None:
    """What spans keys: names that must exist, values that must fit together."""
    g, b = cfg.grid, cfg.bench
    for key, values, allowed in (
        ("grid.variants", g.variants, tuple(cfg.variants)),
        ("grid.devices", g.devices, tuple(cfg.devices)),
        ("grid.runtimes", g.runtimes, RUNTIMES),
        ("grid.layouts", g.layouts, LAYOUTS),
        ("grid.weights", g.weights, tuple(Weights)),
        ("grid.attention", g.attention, ATTENTION),
        ("grid.batch_sizes", g.batch_sizes, None),
        ("grid.depths", g.depths, None),
        ("grid.prompt_lengths", g.prompt_lengths, None),
        ("grid.threads", g.threads, None),
        ("compile", (cfg.compile,), COMPILE_MODES),
        ("llamacpp.extra_bufts", cfg.llamacpp.extra_bufts, SWITCHES),
        ("llamacpp.flash_attn", (cfg.llamacpp.flash_attn,), SWITCHES),
    ):
        if not values:
            raise ConfigError(f"{key} is empty: list at least one")
        unknown = [v for v in values if allowed is not None and v not in allowed]
        if unknown:
            raise ConfigError(f"{key}: unknown {unknown}; allowed: {list(allowed or ())}")
        if len(set(values)) != len(values):
            raise ConfigError(f"{key}: {list(values)} has duplicates")
    if not g.flag_sets:
        raise ConfigError("grid.flag_sets is empty: define at least one (e.g. default: [])")
    for name, flag_set in g.flag_sets.items():
        unknown = [d for d in flag_set.devices or () if d not in cfg.devices]
        if unknown:
            raise ConfigError(
                f"grid.flag_sets.{name}.devices: unknown {unknown}; allowed: {list(cfg.devices)}"
            )
    for key, value, low in (
        ("grid.max_seq", g.max_seq, 1),
        ("bench.warmup_steps", b.warmup_steps, 0),
        ("bench.decode_steps", b.decode_steps, 1),
        ("bench.prefill_runs", b.prefill_runs, 1),
        ("bench.compile_timeout_s", b.compile_timeout_s, 1e-9),
        ("bench.compile_max_memory_gb", b.compile_max_memory_gb, 1e-9),
        ("bench.point_timeout_s", b.point_timeout_s, 1e-9),
        ("bench.max_retries", b.max_retries, 0),
        ("bench.steps_per_call", b.steps_per_call, 1),
        ("bench.profile_calls", b.profile_calls, 1),
        ("bench.eval_ctx", b.eval_ctx, 4),
        ("bench.eval_chunks", b.eval_chunks, 0),
        ("bench.repeats", b.repeats, 1),
        ("bench.gpu_concurrency", b.gpu_concurrency, 0),
        ("llamacpp.n_ubatch", cfg.llamacpp.n_ubatch, 1),
    ):
        if value < low:
            raise ConfigError(f"{key}={value}: must be at least {low}")
    if cfg.search is not None:
        _check_search(cfg)
    if b.decode_steps % b.steps_per_call:
        raise ConfigError(
            f"bench.steps_per_call={b.steps_per_call} must divide bench.decode_steps="
            f"{b.decode_steps}: timed steps are whole calls"
        )
    if not -20 <= b.priority <= 0:
        raise ConfigError(
            f"bench.priority={b.priority}: a niceness from -20 (highest) to 0 (normal); "
            "a benchmark never measures below normal priority"
        )
    for key, values, low in (
        ("grid.batch_sizes", g.batch_sizes, 1),
        ("grid.depths", g.depths, 0),
        ("grid.threads", g.threads, 0),
    ):
        if min(values) < low:
            raise ConfigError(f"{key}: {list(values)} must all be at least {low}")
    steps = b.steps.num_tokens - 1
    for length in g.prompt_lengths:
        context = length + max(g.depths)
        if length < 1 or context + steps > g.max_seq:
            raise ConfigError(
                f"grid.prompt_lengths: {length} does not fit the cache: prompt_length + "
                f"max(grid.depths) + bench.warmup_steps + bench.decode_steps ({length} + "
                f"{max(g.depths)} + {steps}) must be at most grid.max_seq={g.max_seq}; "
                "raise grid.max_seq or shorten the prompt"
            )


SEARCH_AXES = ("layout", "format", "weights")  # the search's own axes besides the flags


def _check_search(cfg: SweepConfig) -> None:
    s = cfg.search
    assert s is not None
    for key, value, low in (
        ("search.trials", s.trials, 1),
        ("search.parallel", s.parallel, 1),
        ("search.startup_trials", s.startup_trials, 0),
    ):
        if value < low:
            raise ConfigError(f"{key}={value}: must be at least {low}")
    if s.max_kld is not None and s.max_kld < 0:
        raise ConfigError(f"search.max_kld={s.max_kld}: a KL divergence bound is at least 0")
    if s.min_top1 is not None and not 0 <= s.min_top1 <= 1:
        raise ConfigError(f"search.min_top1={s.min_top1}: a share, in [0, 1]")
    if not 0 <= s.ablation_tolerance < 1:
        raise ConfigError(f"search.ablation_tolerance={s.ablation_tolerance}: must be in [0, 1)")
    clash = [name for name in s.dimensions if name in SEARCH_AXES]
    if clash:
        raise ConfigError(f"search.dimensions: {clash} are reserved for the search's own axes")
    for name, dim in s.dimensions.items():
        unknown = [d for d in dim.devices or () if d not in cfg.devices]
        if unknown:
            raise ConfigError(
                f"search.dimensions.{name}.devices: unknown {unknown}; allowed: {list(cfg.devices)}"
            )
    unknown = [layout for layout in s.layouts if layout not in LAYOUTS]
    if unknown:
        raise ConfigError(f"search.layouts: unknown {unknown}; allowed: {list(LAYOUTS)}")
    unknown = [w for w in s.weights if w not in tuple(Weights)]
    if unknown:
        raise ConfigError(f"search.weights: unknown {unknown}; allowed: {list(Weights)}")
    for variant, formats in s.formats.items():
        unknown = [f for f in formats if f not in cfg.variants]
        if unknown or not formats:
            raise ConfigError(
                f"search.formats.{variant}: {list(formats)} must name variants; "
                f"allowed: {list(cfg.variants)}"
            )


def _hydra_message(error: Exception) -> str:
    """Hydra's message, with OmegaConf's cause (which names the key and the expected type)."""
    lines = [str(error).strip()]
    cause = error.__cause__ or error.__context__
    if cause is not None and str(cause).strip() not in lines[0]:
        lines.append(str(cause).strip().splitlines()[0])
    text = "\n  ".join(lines)
    for key, where in MOVED_KEYS.items():
        if f"'{key}'" in text or f" {key}=" in text:
            text += f"\n  {key} has moved to {where}"
    return f"bad config or override: {text}"


# --- the schema for Hydra, and back to frozen dataclasses --------------------------------


@functools.cache
def _register_schema() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=_twin(SweepConfig))


@functools.cache
def _twin(cls: type) -> type:
    """A mutable twin of frozen dataclass `cls` for OmegaConf; nested dataclasses get twins.

    Required fields default to OmegaConf's MISSING, so a config that leaves one unset
    fails with the key's name. A field may give its own schema type in its metadata.
    """
    from omegaconf import MISSING

    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        hint = f.metadata.get("schema") or _twin_type(hints[f.name])
        if f.default is not dataclasses.MISSING:
            fields.append((f.name, hint, dataclasses.field(default=f.default)))
        elif f.default_factory is not dataclasses.MISSING:
            factory = (
                _twin(f.default_factory) if dataclasses.is_dataclass(f.default_factory) else None
            )
            default = factory or f.default_factory
            fields.append((f.name, hint, dataclasses.field(default_factory=default)))
        else:
            fields.append((f.name, hint, dataclasses.field(default=MISSING)))
    return dataclasses.make_dataclass(cls.__name__, fields)


def _twin_type(hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in args if a is not type(None)]
        return typing.Optional[_twin_type(inner)]  # noqa: UP045 - OmegaConf needs Optional
    if origin is dict:
        return dict[args[0], _twin_type(args[1])]
    if dataclasses.is_dataclass(hint):
        return _twin(hint)
    return hint


def _freeze(cls: type, raw: Any, key: str) -> Any:
    """The composed config as frozen dataclasses; a validation error names its key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{key or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(raw) - set(hints))
    if unknown:  # a `+key=value` override adds keys the schema does not check
        where = f"in {key}" if key else "at the top level"
        raise ConfigError(f"unknown key(s) {unknown} {where}; allowed: {sorted(hints)}")
    values = {name: _frozen(hints[name], raw[name], _join(key, name)) for name in raw}
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{key or 'config'}: {e}") from None


def _frozen(hint: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if value is None:
        return None
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in args if a is not type(None)]
        return _frozen(inner, value, key)
    if hint is FlagSet and isinstance(value, list):
        value = {"flags": value}  # `+grid.flag_sets.mine=[--flag]`
    if dataclasses.is_dataclass(hint):
        return _freeze(hint, value, key)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_frozen(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        return {str(k): _frozen(args[1], v, _join(key, str(k))) for k, v in value.items()}
    return value


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name
