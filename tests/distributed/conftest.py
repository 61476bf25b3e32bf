"""A real Ray cluster on this machine, started once per session: a head that runs no tasks and two
one-CPU worker nodes, with this test process connected as the driver. Timings: docs/notes-ray.md."""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from typing import Any

import pytest

# Token authentication (Ray's default for a new cluster) with a token held in the environment: without
# one, Ray writes a token to ~/.ray/auth_token, outside tmp_path. Set before ray is imported, which
# reads RAY_AUTH_MODE once; the cluster's processes inherit both.
AUTH_TOKEN = secrets.token_hex(32)  # Ray's own format (authentication_token_generator.py)
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN"] = AUTH_TOKEN
os.environ.pop("RAY_ADDRESS", None)  # ray.init() would join that cluster instead of the tests' own
# Ray would replace builtins.print in this process (the driver), changing what later tests pickle
os.environ["RAY_TQDM_PATCH_PRINT"] = "0"


WORKER_NODES = 2
CPUS_PER_WORKER = 1  # two cores here: one task at a time per worker node keeps both busy, no more
# The GCS declares a silent node dead after failure_threshold missed checks, period_ms apart: Ray's
# defaults (3000 ms x 5) took 16 s to start the retry of a task from a removed node here; these take 6 s.
FAST_NODE_DEATH = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}


@dataclass(frozen=True)
class RayTestCluster:
    address: str  # the GCS host:port, what --ray-address takes
    head_node_id: str  # runs the GCS and no tasks (num_cpus=0)
    worker_node_ids: tuple[str, ...]
    auth_token: str  # a subprocess that joins needs RAY_AUTH_MODE=token and this RAY_AUTH_TOKEN
    # ray.cluster_utils.Cluster, for a test that adds and removes a node of its own; leave the session's
    cluster: Any


@pytest.fixture(scope="session")
def ray_cluster():
    """The session's Ray cluster; the test process is its driver (ray.is_initialized() is True)."""
    # here, not at the top: a skip raised while pytest loads a conftest named on its command line is a crash
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    head = {"num_cpus": 0, "include_dashboard": False, "_system_config": FAST_NODE_DEATH}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        workers = [cluster.add_node(num_cpus=CPUS_PER_WORKER) for _ in range(WORKER_NODES)]
        cluster.wait_for_nodes(timeout=60)
        # log_to_driver=False: the tasks' stdout and stderr stay in the session's log folder; the
        # tests see what a task did through its return value, its exception or its files.
        ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.WARNING)
        yield RayTestCluster(
            address=cluster.address,
            head_node_id=cluster.head_node.node_id,
            worker_node_ids=tuple(worker.node_id for worker in workers),
            auth_token=AUTH_TOKEN,
            cluster=cluster,
        )
    finally:
        ray.shutdown()
        cluster.shutdown()
