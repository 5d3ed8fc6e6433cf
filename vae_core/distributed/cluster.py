"""Connecting to Ray: an existing cluster (RAY_ADDRESS) or a quiet local one sized so jobs cannot starve.

Training workers that reserve every CPU leave Ray Data none to read with, and the job hangs silently
(Ray 2.60). So a local cluster gets enough *logical* CPUs for the workers plus a data budget
(`compute.data_cpus`), and on any cluster the plan is checked up front: a job that could not be
scheduled fails with a message instead of waiting forever.

A local cluster runs with token auth (`use_token_auth`): Ray's servers listen on
all interfaces, and a caller without the token is refused.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import socket

import ray

from vae_core.config import ComputeConfig
from vae_core.errors import ClusterResourceError, ConfigError, UserError

from . import ray_internals

log = logging.getLogger(__name__)


def use_token_auth() -> None:
    """Token auth for a local cluster: RAY_AUTH_MODE=token and a fresh random RAY_AUTH_TOKEN.

    Why: Ray 2.60's gRPC servers (GCS, raylet, workers) bind 0.0.0.0 even with a loopback node IP,
    and it has no loopback-only option, so with auth disabled anyone who can reach this machine can
    run code on the cluster. With a token, a caller without it is refused. Child processes (Ray's
    own, drivers started with RAY_ADDRESS) inherit the variables and so the token.

    Left alone: a cluster named by RAY_ADDRESS (its token is the user's, e.g. ~/.ray/auth_token), a
    RAY_AUTH_MODE the user set (including "disabled"), a RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH the
    user set. The token is never printed or logged.
    """
    if os.environ.get("RAY_ADDRESS") or "RAY_AUTH_MODE" in os.environ:
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    if "RAY_AUTH_TOKEN" not in os.environ and "RAY_AUTH_TOKEN_PATH" not in os.environ:
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


_USER_ERRORS_REPORTED = ray_internals.WithoutReported(UserError)  # one instance: added once
_OWN_CLUSTER: list[str] = []  # the GCS address of the local cluster start_local_ray started here


def required_cpus(compute: ComputeConfig) -> float:
    return compute.num_workers * compute.cpus_per_worker + compute.data_cpus


def ensure_ray(compute: ComputeConfig) -> None:
    """Connect to RAY_ADDRESS if set, else start a local cluster big enough for `compute`."""
    for name, level in ray_internals.QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    for name in ray_internals.TASK_ERROR_LOGGERS:
        logging.getLogger(name).addFilter(_USER_ERRORS_REPORTED)
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        check_reachable(address)
        ray.init(address=address, log_to_driver=True)
        ray_internals.drop_forwarded_lines()
        return
    if compute.use_gpu:  # a local cluster has this machine's GPUs: no need to start one to count them
        import torch

        if (gpus := torch.cuda.device_count()) < compute.num_workers:
            raise ClusterResourceError(
                f"compute.use_gpu needs {compute.num_workers} GPUs, this machine has "
                f"{gpus} (no RAY_ADDRESS: the local cluster would have them); drop "
                "--gpu, or set RAY_ADDRESS to a cluster with GPUs"
            )
    num_cpus = max(os.cpu_count() or 1, math.ceil(required_cpus(compute)))
    start_local_ray(num_cpus, num_gpus=None if compute.use_gpu else 0)


CONNECT_TIMEOUT_S = 15.0  # for RAY_ADDRESS to accept a connection; Ray itself would retry for ever


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """A ConfigError naming RAY_ADDRESS when nothing accepts a TCP connection at its host:port (the
    GCS; ray:// client addresses are tried at their port too). "auto" and "local" are Ray's own."""
    if address in ("auto", "local"):
        return
    hostport = address.removeprefix("ray://").split("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"RAY_ADDRESS={address!r}: expected host:port (or ray://host:port, auto, local)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConfigError(
            f"RAY_ADDRESS={address}: no Ray cluster answers there ({e.strerror or e}); start one, fix the "
            "address, or unset RAY_ADDRESS to run on a local cluster of vaeflow's own"
        ) from e


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
    # are the job, and on a machine with few cores a nice-15 training worker loses its time slices to
    # every background wakeup of those processes. The user's own setting wins.
    os.environ.setdefault("RAY_worker_niceness", "0")
    if os.environ["RAY_AUTH_MODE"].lower() != "token":
        log.warning(
            "RAY_AUTH_MODE=%s: the local Ray cluster listens on all interfaces without authentication",
            os.environ["RAY_AUTH_MODE"],
        )
    ray_internals.reload_auth_settings()  # should ray have been imported before the variables were set
    with ray_internals.without_autoscaler_monitor():
        ray.init(
            # "local": a new cluster even where `ray start` left one on this machine (ray.init with
            # no address would join that one, and refuse num_cpus for it).
            address="local",
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=os.environ.get("VAEFLOW_RAY_WORKER_LOGS") == "1",
            _temp_dir=os.environ.get("VAEFLOW_RAY_TMPDIR"),
        )
    ray_internals.drop_forwarded_lines()  # with VAEFLOW_RAY_WORKER_LOGS=1
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


def stop_own_cluster() -> None:
    """Shut down the local cluster this process started (start_local_ray), if it runs; a cluster it
    joined stays. A failed command leaves nothing of its own running."""
    if is_own_local_cluster():
        ray.shutdown()


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
