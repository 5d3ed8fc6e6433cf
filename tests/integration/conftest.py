"""Real local services for integration tests: a moto S3 server on 127.0.0.1 (session-wide)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from vae_core.testing import TEST_KEY_ID, TEST_SECRET, local_s3_server, make_bucket

__all__ = ["TEST_KEY_ID", "TEST_SECRET", "make_bucket"]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 for the whole session, with the AWS environment pointed at it.

    Its own process: delta-rs holds the GIL while it waits on S3, so a server thread inside the test
    process would never answer it (seen: write_delta timed out after 180 s).
    """
    with local_s3_server(separate_process=True) as endpoint:
        yield endpoint


@pytest.fixture
def bucket(s3_server: str) -> str:
    """A fresh, empty bucket per test: s3://<name>."""
    return make_bucket()


@pytest.fixture(scope="module")
def ray_local(s3_server: str) -> Iterator[str]:
    """A local Ray cluster per test module (started after the S3 env is set, so workers inherit it).

    4 logical CPUs: 2 training workers x 1 CPU + 1 CPU for Ray Data, with room to spare.
    Yields the GCS address, for drivers started in subprocesses (RAY_ADDRESS).
    """
    import logging

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=4, num_gpus=0, include_dashboard=False, logging_level=logging.WARNING)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def mnist_s3(s3_server: str) -> str:
    """MNIST imported once per module into a fresh bucket: the dataset root URI."""
    from vae_core.importers import import_mnist

    root = f"{make_bucket()}/mnist"
    import_mnist(root, rows_per_shard=7_500, progress=lambda m: None)
    return root
