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

from workers.devices import DeviceSpec
from workers.point import RUNTIMES, ModelSource
from workers.runtime import DecodeSteps
from workers.variant import LAYOUTS, Variant

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
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
    runtimes: tuple[str, ...] = ("iree",)
    layouts: tuple[str, ...] = ("in_major",)  # how weight matrices reach the graphs


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    warmup_steps: int
    decode_steps: int
    prefill_runs: int
    compile_timeout_s: float
    point_timeout_s: float
    max_retries: int

    @property
    def steps(self) -> DecodeSteps:
        return DecodeSteps(self.warmup_steps, self.decode_steps, self.prefill_runs)


@dataclasses.dataclass(frozen=True)
class RayConfig:
    address: str = ""
    num_cpus: int | None = None


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    model: ModelSource
    devices: dict[str, DeviceSpec]  # every known device; grid.devices picks among them
    variants: dict[str, Variant]  # every known variant; grid.variants picks among them
    grid: GridConfig
    bench: BenchConfig
    ray: RayConfig
    results_dir: str
    cache_dir: str
    rerun: bool
    dry_run: bool


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
        ("grid.prompt_lengths", g.prompt_lengths, None),
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
        ("bench.point_timeout_s", b.point_timeout_s, 1e-9),
        ("bench.max_retries", b.max_retries, 0),
    ):
        if value < low:
            raise ConfigError(f"{key}={value}: must be at least {low}")
    steps = b.warmup_steps + b.decode_steps
    for length in g.prompt_lengths:
        if length < 1 or length + steps > g.max_seq:
            raise ConfigError(
                f"grid.prompt_lengths: {length} does not fit the cache: prompt_length + "
                f"bench.warmup_steps + bench.decode_steps ({length} + {steps}) must be at most "
                f"grid.max_seq={g.max_seq}; raise grid.max_seq or shorten the prompt"
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
            fields.append((f.name, hint, dataclasses.field(default_factory=f.default_factory)))
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
