"""Benchmark devices: how to compile for a device, how to run on it, where Ray places it.

A sweep point names a device ("cpu", "cuda"); three different layers need to know
what that means. `iree-compile` needs target flags, the IREE runtime needs a driver
name, and Ray needs a resource so the benchmark actor lands on a node that has the
device. Keeping the three in one frozen dataclass means they cannot drift apart.

The target flags are part of the compile cache key (see `workers/compile.py`), so
two specs that compile differently must differ in `target_flags`, not only in name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The llvm-cpu flags; `--iree-llvmcpu-target-cpu` takes "host", "generic" or a
# clang CPU name ("znver3", "sapphirerapids", ...). "host" code may crash on a
# different CPU, which is why the compile cache keys host builds by CPU model.
_CPU_TARGET_DEVICE_FLAGS: tuple[str, ...] = (
    "--iree-hal-target-device=local",
    "--iree-hal-local-target-device-backends=llvm-cpu",
)
CPU_BENCH_RESOURCE = "sweep_cpu_bench"


@dataclass(frozen=True)
class DeviceSpec:
    """One device as the compiler, the runtime and the Ray scheduler each see it."""

    name: str  # "cpu", "cuda", ...: the conf/device option and the results column
    driver: str  # IREE runtime driver: "local-task", "cuda", ...
    target_flags: tuple[str, ...]  # iree-compile flags that select the target
    # "GPU" asks Ray for num_gpus=1; anything else is a custom resource that the
    # cluster advertises on the nodes allowed to run benchmarks for this device.
    ray_resource: str
    ray_resource_amount: float = 1.0  # how much of ray_resource one benchmark actor holds
    # Memory bandwidth (read plus write, GB/s) for the roofline; None: measured by a copy
    # benchmark on the device itself.
    peak_gbps: float | None = None
    description: str = ""

    def __post_init__(self) -> None:
        for field in ("name", "driver", "ray_resource"):
            if not getattr(self, field):
                raise ValueError(f"DeviceSpec.{field} must be a non-empty string")
        if not isinstance(self.target_flags, tuple):
            raise ValueError(
                f"DeviceSpec.target_flags must be a tuple of iree-compile flags, "
                f"got {type(self.target_flags).__name__}"
            )
        bad = [f for f in self.target_flags if not f.startswith("--")]
        if bad:
            raise ValueError(f"DeviceSpec.target_flags entries must start with '--', got {bad}")
        if self.ray_resource_amount <= 0:
            raise ValueError("DeviceSpec.ray_resource_amount must be > 0")

    @property
    def needs_gpu(self) -> bool:
        """True when the benchmark actor must be placed on a node with a Ray GPU."""
        return self.ray_resource == "GPU"

    def ray_actor_options(self) -> dict[str, Any]:
        """The `.options(...)` keyword arguments that place a benchmark actor for this device."""
        if self.needs_gpu:
            return {"num_gpus": self.ray_resource_amount}
        return {"resources": {self.ray_resource: self.ray_resource_amount}}


def cpu_device(target_cpu: str = "host", name: str = "cpu") -> DeviceSpec:
    """The llvm-cpu device for `target_cpu` ("host", "generic" or a clang CPU name).

    Naming a CPU instead of "host" makes the vmfb portable to every machine of that
    CPU family, so one compile can serve a cluster of identical nodes.
    """
    return DeviceSpec(
        name=name,
        driver="local-task",
        target_flags=(*_CPU_TARGET_DEVICE_FLAGS, f"--iree-llvmcpu-target-cpu={target_cpu}"),
        ray_resource=CPU_BENCH_RESOURCE,
        description=f"IREE llvm-cpu, target cpu {target_cpu}, local-task driver",
    )


def cuda_device(cuda_target: str | None = None, name: str = "cuda") -> DeviceSpec:
    """The CUDA device; with no `cuda_target` IREE emits its default sm_60 PTX.

    The default PTX is JIT-compiled by the driver on any newer GPU, and IREE 3.13
    rejects `--iree-cuda-target=sm_90`/`sm_100` as unknown (iree issue 22147), so
    leaving the target out is what lets one vmfb run on an H100 or H200.
    """
    flags: tuple[str, ...] = ("--iree-hal-target-device=cuda",)
    if cuda_target is not None:
        flags = (*flags, f"--iree-cuda-target={cuda_target}")
    return DeviceSpec(
        name=name,
        driver="cuda",
        target_flags=flags,
        ray_resource="GPU",
        description=f"IREE cuda, target {cuda_target or 'default (sm_60 PTX)'}",
    )


BUILTIN_DEVICES: dict[str, DeviceSpec] = {
    "cpu": cpu_device("host"),
    "cuda": cuda_device(),
}
