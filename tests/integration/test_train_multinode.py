"""Ray Train across two Ray nodes on this machine (ray.cluster_utils.Cluster), checkpoints in S3."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.integration.conftest import make_bucket
from tests.integration.test_train_ray import mnist_config
from vae_core.distributed.trainer import train_on_ray

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]


@pytest.fixture(scope="module")
def two_nodes(s3_server: str) -> Iterator[list[str]]:
    import ray
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0})
    cluster.add_node(num_cpus=2, num_gpus=0)
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    try:
        yield [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_one_worker_per_node_with_storage_on_s3(two_nodes, mnist_sample):
    assert len(two_nodes) == 2
    runs = f"{make_bucket()}/runs"
    result = train_on_ray(mnist_config(mnist_sample, runs, epochs=1), run_name="two-nodes")
    placed = result.checkpoint.meta.worker_nodes
    assert sorted(placed) == sorted(two_nodes)  # SPREAD: one worker on each node
    assert result.checkpoint_uri == f"{runs}/two-nodes/epoch_0001"
    assert result.history[0].val_elbo > result.checkpoint.meta.val_elbo_init + 100


def test_a_local_run_starts_its_own_cluster_beside_one_that_ray_start_left(two_nodes):
    # Ray's own ray.init() with no address joins the newest `ray start` cluster on this machine (here
    # the module's two-node cluster) and refuses num_cpus for it; with no RAY_ADDRESS vaeflow starts
    # its own, as documented.
    import ray

    script = (
        "from vae_core.distributed.cluster import start_local_ray\n"
        "import ray\n"
        "print(start_local_ray(num_cpus=1), len(ray.nodes()))\n"
        "ray.shutdown()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, "-c", script]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    address, nodes = done.stdout.split()[-2:]
    assert address != ray.get_runtime_context().gcs_address and nodes == "1"
