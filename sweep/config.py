"""The typed sweep configuration: Hydra composes it, this module checks it, workers get dataclasses.

Only `sweep/` touches Hydra. `load_config(overrides)` composes `conf/` with the
user's overrides, and `parse_config` turns the plain container into frozen
dataclasses, checking every key, type and value before any work starts. Every
error is a `ConfigError` that names the key and says what is allowed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

from workers.devices import DeviceSpec
from workers.llama_config import PRESETS
from workers.quant import VARIANTS

RUNTIMES: tuple[str, ...] = ("iree", "xla")
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


class ConfigError(ValueError):
    """A config or input error found before any work: the sweep exits with code 2."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str
    preset: str | None = None
    path: str | None = None
    seed: int = 0

    def check(self, key: str) -> None:
        if self.path is None and self.preset is None:
            raise ConfigError(
                f"{key}: set model.preset (one of {sorted(PRESETS)}) or model.path=DIR"
            )
        if self.path is None and self.preset not in PRESETS:
            raise ConfigError(
                f"{key}.preset={self.preset!r}: allowed presets are {sorted(PRESETS)}"
            )


@dataclasses.dataclass(frozen=True)
class FlagSet:
    flags: tuple[str, ...] = ()
    devices: tuple[str, ...] | None = None  # None: applies to every device

    def applies_to(self, device: str) -> bool:
        return self.devices is None or device in self.devices


@dataclasses.dataclass(frozen=True)
class GridConfig:
    name: str
    variants: tuple[str, ...]
    devices: tuple[str, ...]
    prompt_lengths: tuple[int, ...]
    max_seq: int
    group_size: int
    flag_sets: dict[str, FlagSet]
    runtimes: tuple[str, ...] = ("iree",)


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    warmup_steps: int
    decode_steps: int
    prefill_runs: int
    compile_timeout_s: float
    point_timeout_s: float
    max_retries: int


@dataclasses.dataclass(frozen=True)
class RayConfig:
    address: str = ""
    num_cpus: int | None = None


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    model: ModelConfig
    devices: dict[str, DeviceSpec]
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

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            composed = compose(config_name="config", overrides=list(overrides))
        raw = OmegaConf.to_container(composed, resolve=True)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(f"bad config or override: {e}") from None
    assert isinstance(raw, dict)
    return parse_config(raw), raw


def parse_config(raw: dict[str, Any]) -> SweepConfig:
    raw = dict(raw)
    raw["grid"] = _normalise_flag_sets(raw.get("grid"))
    cfg = _build(SweepConfig, raw, "")
    _check(cfg)
    return cfg


def _normalise_flag_sets(grid: Any) -> Any:
    """`+grid.flag_sets.mine=[--flag]` gives a bare list; conf/flags files give {flags, devices}."""
    if not isinstance(grid, dict) or not isinstance(grid.get("flag_sets"), dict):
        return grid
    sets = {
        name: {"flags": value} if isinstance(value, list) else value
        for name, value in grid["flag_sets"].items()
    }
    return {**grid, "flag_sets": sets}


def _check(cfg: SweepConfig) -> None:
    g, b = cfg.grid, cfg.bench
    cfg.model.check("model")
    _check_members("grid.variants", g.variants, VARIANTS)
    _check_members("grid.devices", g.devices, tuple(cfg.devices))
    _check_members("grid.runtimes", g.runtimes, RUNTIMES)
    for key, values in (
        ("grid.variants", g.variants),
        ("grid.devices", g.devices),
        ("grid.prompt_lengths", g.prompt_lengths),
        ("grid.runtimes", g.runtimes),
    ):
        if not values:
            raise ConfigError(f"{key} is empty: list at least one")
    if not g.flag_sets:
        raise ConfigError("grid.flag_sets is empty: define at least one (e.g. default: [])")
    for name, flag_set in g.flag_sets.items():
        if flag_set.devices is not None:
            _check_members(f"grid.flag_sets.{name}.devices", flag_set.devices, tuple(cfg.devices))
        bad = [f for f in flag_set.flags if not f.startswith("-")]
        if bad:
            raise ConfigError(
                f"grid.flag_sets.{name}: {bad} are not flags (they must start with '-')"
            )
    for key, value, low in (
        ("grid.max_seq", g.max_seq, 1),
        ("grid.group_size", g.group_size, 1),
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


def _check_members(key: str, values: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ConfigError(f"{key}: unknown {unknown}; allowed: {list(allowed)}")
    if len(set(values)) != len(values):
        raise ConfigError(f"{key}: {list(values)} has duplicates")


# --- a small typed builder: plain dict -> frozen dataclass, naming the key on any error -----


def _build(cls: type, raw: Any, key: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{key or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        where = key or "the top level"
        raise ConfigError(f"unknown key(s) {unknown} in {where}; allowed: {sorted(fields)}")
    values = {}
    for name, field in fields.items():
        sub = f"{key}.{name}" if key else name
        if name not in raw:
            if field.default is dataclasses.MISSING:
                raise ConfigError(f"{sub} is missing")
            continue
        values[name] = _coerce(hints[name], raw[name], sub)
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, key)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    return _scalar(hint, value, key)


def _scalar(hint: Any, value: Any, key: str) -> Any:
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    ok = isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    if not ok:
        raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r}")
    return value
