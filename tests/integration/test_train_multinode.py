"""Ray Train across two Ray nodes on this machine (ray.cluster_utils.Cluster), checkpoints in S3."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from ray.cluster_utils import Cluster

from tests.integration.conftest import make_bucket
from tests.integration.test_train_ray import mnist_config
from vae_core.distributed.launch import new_events
from vae_core.distributed.trainer import train_on_ray

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(420)]


@pytest.fixture(scope="module")
def cluster(s3_server: str) -> Iterator[Cluster]:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0})
    cluster.add_node(num_cpus=2, num_gpus=0)
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def two_nodes(cluster: Cluster) -> list[str]:
    import ray

    return [n["NodeID"] for n in ray.nodes() if n["Alive"]]


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


def test_the_drivers_events_actors_outlive_a_node_the_driver_does_not_run_on(cluster, two_nodes):
    """The driver's link to rank 0 stays on the driver's node. With both 2-CPU nodes taken, Ray left to
    itself puts most 0-CPU actors on a third, idle node, and the launch would die with that node (as
    a RayJob did with a Prefect worker's node killed just before it); pinned, all six outlive it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=2)
    class Hog:
        def ready(self) -> bool:
            return True

    extra = cluster.add_node(num_cpus=1, num_gpus=0)
    cluster.wait_for_nodes()
    on = lambda node: NodeAffinitySchedulingStrategy(node, soft=False)  # noqa: E731
    hogs = [Hog.options(scheduling_strategy=on(n)).remote() for n in two_nodes]
    try:
        ray.get([h.ready.remote() for h in hogs], timeout=60)
        actors = [new_events() for _ in range(6)]
        ray.get([a.take.remote() for a in actors], timeout=60)
        cluster.remove_node(extra)
        assert extra.node_id not in [n["NodeID"] for n in ray.nodes() if n["Alive"]]
        assert ray.get([a.take.remote() for a in actors], timeout=60) == [[]] * 6
    finally:
        for h in hogs:
            ray.kill(h)
