"""Benchmark devices: how to compile for a device, how to run on it, where it lives.

A sweep point names a device ("cpu", "cuda"); three layers need to know what that
means. `iree-compile` needs target flags, the IREE runtime needs a driver name, and
the scheduler needs a resource so the benchmark actor lands on a node that has the
device. Keeping the three in one frozen dataclass means they cannot drift apart.
The devices themselves are data: `conf/device/<name>.yaml`, read by `sweep.plan.config`
(tests and benchmarks load them from there too), so a new device is a YAML file.

The target flags are part of the compile cache key (see `workers/compile/iree.py`), so
two specs that compile differently must differ in `target_flags`, not only in name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CPU_BENCH_RESOURCE = "sweep_cpu_bench"  # each node advertises one: one CPU benchmark per node
GPU_RESOURCE = "GPU"


@dataclass(frozen=True)
class DeviceSpec:
    """One device as the compiler, the runtime and the scheduler each see it."""

    name: str  # "cpu", "cuda", ...: the conf/device option and the results column
    driver: str  # IREE runtime driver: "local-task", "cuda", ...
    target_flags: tuple[str, ...]  # iree-compile flags that select the target
    # "GPU": the actor asks Ray for num_gpus; anything else is a custom resource that
    # the cluster advertises on the nodes allowed to run benchmarks for this device.
    ray_resource: str
    ray_resource_amount: float = 1.0  # how much of ray_resource one benchmark actor holds
    # Memory bandwidth (read plus write, GB/s) for the roofline; None: measured by a copy
    # benchmark on the device itself.
    peak_gbps: float | None = None

    def __post_init__(self) -> None:
        for field in ("name", "driver", "ray_resource"):
            if not getattr(self, field):
                raise ValueError(f"{field} must be a non-empty string")
        bad = [f for f in self.target_flags if not f.startswith("--")]
        if bad:
            raise ValueError(f"target_flags entries must start with '--', got {bad}")
        if self.ray_resource_amount <= 0:
            raise ValueError(f"ray_resource_amount must be > 0, got {self.ray_resource_amount}")

    @property
    def needs_gpu(self) -> bool:
        """True when the benchmark actor must be placed on a node with a Ray GPU."""
        return self.ray_resource == GPU_RESOURCE

    @property
    def runs_on_host_cpu(self) -> bool:
        """True for IREE's CPU drivers, whose device buffers are host memory."""
        return self.driver.startswith("local-")


def cpu_has_amx() -> bool:
    """Whether this host's CPU has AMX tiles (`amx_tile` in /proc/cpuinfo's flags)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return "amx_tile" in flags.split()
