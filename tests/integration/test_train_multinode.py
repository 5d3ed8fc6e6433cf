"""Ray Train across two Ray nodes on this machine (ray.cluster_utils.Cluster), checkpoints in S3."""

from __future__ import annotations

import os
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


def test_one_worker_per_node_with_storage_on_s3(two_nodes, mnist_s3):
    assert len(two_nodes) == 2
    runs = f"{make_bucket()}/runs"
    result = train_on_ray(mnist_config(mnist_s3, runs, epochs=1), run_name="two-nodes")
    placed = result.checkpoint.meta.worker_nodes
    assert sorted(placed) == sorted(two_nodes)  # SPREAD: one worker on each node
    assert result.checkpoint_uri == f"{runs}/two-nodes/epoch_0001"
    assert result.history[0].val_elbo > result.checkpoint.meta.val_elbo_init + 100
