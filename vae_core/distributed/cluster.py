"""Connecting to Ray: an existing cluster (RAY_ADDRESS) or a quiet local one sized so jobs cannot starve.

Seen with Ray 2.60 on 2 CPUs: 2 training workers reserving 1 CPU each leave Ray Data no CPU to read
with, and the job hangs silently. So a local cluster gets enough *logical* CPUs for the workers plus
a data budget (`compute.data_cpus`), and on any cluster the plan is checked up front: a job that
could not be scheduled fails with a message instead of waiting forever.

A local cluster runs with token auth (vae_core.distributed.use_token_auth): Ray's servers listen on
all interfaces, and a caller without the token is refused.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from typing import Any

import ray

from vae_core.config import ComputeConfig

from . import use_token_auth

log = logging.getLogger(__name__)


_OWN_CLUSTER: list[str] = []  # the GCS address of the local cluster start_local_ray started here


class ClusterResourceError(RuntimeError):
    """The cluster cannot fit the training workers plus the data budget."""


def required_cpus(compute: ComputeConfig) -> float:
    return compute.num_workers * compute.cpus_per_worker + compute.data_cpus


# Driver-side Ray Data lines that repeat what vaeflow's own progress says (one "Dataset ... execution
# finished" per job, "Progress bars disabled" once): quiet on our drivers, whatever the cluster.
QUIET_LOGGERS = {
    "ray.data._internal.progress": logging.ERROR,
    "ray.data._internal.execution.streaming_executor": logging.WARNING,
}


def ensure_ray(compute: ComputeConfig) -> None:
    """Connect to RAY_ADDRESS if set, else start a local cluster big enough for `compute`."""
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    num_cpus = max(os.cpu_count() or 1, math.ceil(required_cpus(compute)))
    start_local_ray(num_cpus, num_gpus=None if compute.use_gpu else 0)


def start_local_ray(num_cpus: int, num_gpus: int | None = 0) -> str:
    """Start a quiet local cluster of our own (no dashboard, temp dir VAEFLOW_RAY_TMPDIR if set) with
    token auth. Returns its GCS address: a driver in a subprocess connects with RAY_ADDRESS=<it> and
    this process's environment, which holds the token.

    Workers' stdout and stderr stay in the cluster's log files (`<temp dir>/session_latest/logs`)
    instead of the driver's terminal (Ray Train's TrainingReport dumps, Ray Data's deprecation
    warnings): what vaeflow reports reaches the driver through its own channels, and a worker's error
    comes back with its traceback in the exception. VAEFLOW_RAY_WORKER_LOGS=1 forwards them again."""
    use_token_auth()
    # Ray starts workers at nice 15, below its own raylet, GCS and agents and the driver (nice 0): on a
    # node shared with other work that keeps the node responsive. On a cluster of our own the workers
    # are the job, and on 2 cores a nice-15 training worker lost its time slices to every background
    # wakeup of those processes. The user's own setting wins.
    os.environ.setdefault("RAY_worker_niceness", "0")
    if os.environ["RAY_AUTH_MODE"].lower() != "token":
        log.warning(
            "RAY_AUTH_MODE=%s: the local Ray cluster listens on all interfaces without authentication",
            os.environ["RAY_AUTH_MODE"],
        )
    _reload_ray_auth_settings()
    with _without_autoscaler_monitor():
        ray.init(
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=os.environ.get("VAEFLOW_RAY_WORKER_LOGS") == "1",
            _temp_dir=os.environ.get("VAEFLOW_RAY_TMPDIR"),
        )
    address = ray.get_runtime_context().gcs_address
    _OWN_CLUSTER[:] = [address]
    return address


def cluster_set_up() -> bool:
    """Whether a Ray cluster is already there for this process: connected, or named by RAY_ADDRESS
    (otherwise ensure_ray would start a local one)."""
    return ray.is_initialized() or bool(os.environ.get("RAY_ADDRESS"))


def is_own_local_cluster() -> bool:
    """Whether this process is connected to the local cluster it started itself (start_local_ray):
    one node, no dashboard, nobody else's jobs."""
    return ray.is_initialized() and _OWN_CLUSTER == [ray.get_runtime_context().gcs_address]


@contextlib.contextmanager
def _without_autoscaler_monitor() -> Iterator[None]:
    """Start the head without Ray's autoscaler monitor (`ray start --no-monitor`).

    Ray turns a loopback node address into the machine's external one, so every process of a local
    cluster listens beyond 127.0.0.1. Token auth guards the gRPC servers, but the monitor also serves
    Prometheus metrics over plain HTTP on 0.0.0.0:44217, answering anyone (seen with Ray 2.60). A
    fixed local cluster has nothing to autoscale; ray.init has no option for this, so the head's
    parameters get `no_monitor` for the duration of this call (a private Ray API).
    """
    from ray._private import parameter

    original = parameter.RayParams.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.no_monitor = True

    parameter.RayParams.__init__ = init  # type: ignore[method-assign]
    try:
        yield
    finally:
        parameter.RayParams.__init__ = original  # type: ignore[method-assign]


def _reload_ray_auth_settings() -> None:
    # Ray caches RAY_AUTH_MODE and the token when ray is first imported. Importing vae_core.distributed
    # sets them before that; should ray have been imported earlier, re-read them from the environment
    # as ray.init does itself when it turns token auth on (a private API, as in Ray's own tests).
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def check_resources(compute: ComputeConfig) -> None:
    """Fail fast when workers + data budget exceed the cluster (or a worker fits on no node)."""
    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    need = required_cpus(compute)
    if need > cpus + 1e-9:
        raise ClusterResourceError(
            f"the cluster has {cpus:g} CPUs but {compute.num_workers} workers x "
            f"{compute.cpus_per_worker:g} CPU + {compute.data_cpus:g} CPU for Ray Data need {need:g}; "
            "the job would hang waiting for resources. Lower compute.num_workers or "
            "compute.cpus_per_worker (fractions are fine), or add nodes."
        )
    if compute.use_gpu and gpus < compute.num_workers:
        raise ClusterResourceError(
            f"compute.use_gpu needs {compute.num_workers} GPUs, the cluster has {gpus:g}"
        )
    biggest = max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"]), default=0.0)
    if compute.cpus_per_worker > biggest + 1e-9:
        raise ClusterResourceError(
            f"a worker asks for {compute.cpus_per_worker:g} CPUs but the largest node has {biggest:g}"
        )
