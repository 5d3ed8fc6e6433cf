"""Connecting to Ray: an existing cluster (RAY_ADDRESS) or a quiet local one sized so jobs cannot starve.

Seen with Ray 2.60 on 2 CPUs: 2 training workers reserving 1 CPU each leave Ray Data no CPU to read
with, and the job hangs silently. So a local cluster gets enough *logical* CPUs for the workers plus
a data budget (`compute.data_cpus`), and on any cluster the plan is checked up front: a job that
could not be scheduled fails with a message instead of waiting forever.
"""

from __future__ import annotations

import logging
import math
import os

import ray

from vae_core.config import ComputeConfig

log = logging.getLogger(__name__)


class ClusterResourceError(RuntimeError):
    """The cluster cannot fit the training workers plus the data budget."""


def required_cpus(compute: ComputeConfig) -> float:
    return compute.num_workers * compute.cpus_per_worker + compute.data_cpus


def ensure_ray(compute: ComputeConfig) -> None:
    """Connect to RAY_ADDRESS if set, else start a local cluster big enough for `compute`."""
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    # A local test/dev cluster of our own: no token file in ~/.ray, no dashboard noise.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    num_cpus = max(os.cpu_count() or 1, math.ceil(required_cpus(compute)))
    ray.init(
        num_cpus=num_cpus,
        num_gpus=None if compute.use_gpu else 0,
        include_dashboard=False,
        logging_level=logging.WARNING,
        _temp_dir=os.environ.get("VAEFLOW_RAY_TMPDIR"),
    )


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
