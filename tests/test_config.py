"""The typed config: Hydra composes conf/, the schema checks it, errors name the key.

In-process and fast: `load_config` is what `python -m sweep` calls before anything
else; `tests/test_sweep.py` checks the same errors through the command line (exit 2,
no Ray started).
"""

from __future__ import annotations

import pytest

from sweep.plan.config import CONF_DIR, ConfigError, FlagSet, SweepConfig, load_config
from workers.core.devices import DeviceSpec
from workers.formats.variant import Variant


def config(*overrides: str) -> SweepConfig:
    return load_config(list(overrides))[0]


GRIDS = sorted(path.stem for path in (CONF_DIR / "grid").glob("*.yaml"))


@pytest.mark.parametrize("grid", GRIDS)
def test_every_grid_in_conf_composes(grid: str):
    cfg = config(f"+grid={grid}")
    assert cfg.grid.name == grid
    assert set(cfg.grid.variants) <= set(cfg.variants)
    assert set(cfg.grid.devices) <= set(cfg.devices)
    assert "default" in cfg.grid.flag_sets


def test_devices_and_variants_are_typed_values_from_yaml():
    cfg = config()
    cpu, cuda = cfg.devices["cpu"], cfg.devices["cuda"]
    assert isinstance(cpu, DeviceSpec) and cpu.driver == "local-task" and cpu.runs_on_host_cpu
    assert "--iree-llvmcpu-target-cpu=host" in cpu.target_flags
    assert cuda.needs_gpu and not cpu.needs_gpu
    int4, bf16, fp32 = (cfg.variants[n] for n in ("int4", "bf16", "fp32"))
    assert isinstance(int4, Variant) and (int4.bits, int4.group_size) == (4, 64)
    assert int4.storage == "uint32" and int4.scale_dtype == "float32"
    assert bf16.dtype == "bfloat16" and bf16.min_tokens_matched(19) == 1
    assert fp32.min_tokens_matched(19) == 19 and fp32.group_size is None


def test_the_phase2b_grid_is_the_seed_experiment():
    cfg = config("+grid=phase2b")
    assert cfg.model.preset == "llama-3.2-1b"
    # the seed's int4 and fp32, and the answer to its question: the fused int4 format
    assert cfg.grid.variants == ("int4", "int4-fac-g64", "fp32")
    assert cfg.grid.devices == ("cuda", "cpu")
    assert cfg.grid.prompt_lengths == (32, 128) and cfg.grid.max_seq == 256


def test_the_decode_protocol_default_is_the_configs():
    """DecodeSteps' prefill_runs default (direct callers) is what a sweep gets from
    conf/config.yaml, so a test or benchmark measures the protocol users run."""
    from workers.tasks import DecodeSteps

    default = DecodeSteps.__dataclass_fields__["prefill_runs"].default
    assert config().bench.prefill_runs == default, (
        "bench.prefill_runs in conf/config.yaml and DecodeSteps.prefill_runs disagree"
    )


def test_overrides_are_typed():
    cfg = config("+grid=smoke", "bench.decode_steps=7", "grid.prompt_lengths=[4,8]")
    assert cfg.bench.decode_steps == 7 and cfg.grid.prompt_lengths == (4, 8)
    assert cfg.bench.steps.num_tokens == 1 + cfg.bench.warmup_steps + 7
    assert isinstance(cfg.bench.compile_timeout_s, float)
    assert config("bench.compile_max_memory_gb=0.5").bench.compile_max_memory_gb == 0.5


def test_a_flag_set_from_the_command_line():
    cfg = config("+grid=smoke", "+grid.flag_sets.mine=['--iree-opt-level=O2']")
    assert cfg.grid.flag_sets["mine"] == FlagSet(flags=("--iree-opt-level=O2",))
    assert cfg.grid.flag_sets["O3"] == FlagSet(flags=("--iree-opt-level=O3",))
    limited = config("+grid=flags").grid.flag_sets["sm80"]
    assert limited.devices == ("cuda",) and not limited.applies_to("cpu")


def test_a_new_variant_is_a_config_entry():
    cfg = config(
        "+variant@variants.int4-g32=int4",
        "variants.int4-g32.name=int4-g32",
        "variants.int4-g32.group_size=32",
        "grid.variants=[int4-g32]",
    )
    assert cfg.variants["int4-g32"] == Variant("int4-g32", bits=4, group_size=32)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["grid.varients=[fp32]"], "grid.varients"),
        (["grid.prompt_lengths=[200]"], "grid.prompt_lengths"),
        (["grid.devices=[tpu]"], "grid.devices"),
        (["grid.variants=[int3]"], "grid.variants"),
        (["bench.decode_steps=many"], "bench.decode_steps"),
        (["bench.decode_steps=0"], "bench.decode_steps"),
        (["bench.compile_max_memory_gb=0"], "bench.compile_max_memory_gb"),
        (["+grid.foo=1"], "foo"),
        (["grid.variants=[]"], "grid.variants"),
        (["grid.variants=[fp32,fp32]"], "duplicates"),
        (["+grid.flag_sets.mine=[O3]"], "grid.flag_sets.mine"),
        (["variants.int4.bits=3"], "variants.int4"),
        (["variants.int4.group_size=12"], "group_size"),
        (["devices.cpu.target_flags=[O3]"], "devices.cpu"),
        (["grid.group_size=32"], "variants.int4.group_size"),
        (["+grid.flag_sets.mine={flags:[--x],devices:[tpu]}"], "grid.flag_sets.mine.devices"),
    ],
)
def test_errors_name_the_key(overrides: list[str], named: str):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.").replace("[", r"\[")):
        config("+grid=smoke", *overrides)


def test_a_prompt_must_fit_the_cache():
    with pytest.raises(ConfigError) as e:
        config("+grid=smoke", "grid.max_seq=32", "grid.prompt_lengths=[16]")
    assert "grid.max_seq=32" in str(e.value) and "16 + 0 + 18" in str(e.value)
