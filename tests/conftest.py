"""Shared fixtures. One Ray cluster for the whole session: starting Ray costs seconds.

The cluster has two nodes (`ray.cluster_utils.Cluster`), each advertising one CPU
benchmark slot, so the multi-node behaviour (actors on both nodes, compiles shared
between them) is exercised by every sweep test, as it would be on two hosts.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def ray_cluster():
    import ray
    from ray.cluster_utils import Cluster

    from workers.devices import CPU_BENCH_RESOURCE

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "resources": {CPU_BENCH_RESOURCE: 1}},
    )
    cluster.add_node(num_cpus=1, resources={CPU_BENCH_RESOURCE: 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
             log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """A compile and reference cache shared by the sweep tests (the tiny graphs compile once)."""
    return tmp_path_factory.mktemp("cache")
