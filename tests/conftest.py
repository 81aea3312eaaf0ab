"""Shared fixtures. One Ray cluster for the whole session: starting Ray costs seconds.

The cluster has two nodes (`ray.cluster_utils.Cluster`), each advertising one CPU
benchmark slot, so the multi-node behaviour (actors on both nodes, compiles shared
between them) is exercised by every sweep test, as it would be on two hosts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ROOT, save_tiny_llama


def _has_cuda_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    return smi is not None and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests run only where a CUDA GPU is present."""
    if _has_cuda_gpu():
        return
    skip = pytest.mark.skip(reason="no GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_cluster():
    import ray
    from ray.cluster_utils import Cluster

    from workers.core.devices import CPU_BENCH_RESOURCE

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "resources": {CPU_BENCH_RESOURCE: 1}},
    )
    cluster.add_node(num_cpus=1, resources={CPU_BENCH_RESOURCE: 1})
    cluster.wait_for_nodes()
    ray.init(
        address=cluster.address,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
        log_to_driver=False,
    )
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """A compile and reference cache shared by the sweep tests (the tiny graphs compile once)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-llama")
    save_tiny_llama(directory)
    return directory
