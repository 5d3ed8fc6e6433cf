"""Real local services for integration tests: a moto S3 server on 127.0.0.1 (session-wide)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.datasets import write_mnist_sample
from tests.servers import TEST_KEY_ID, TEST_SECRET, local_s3_server, make_bucket, own_ray_cluster

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

    4 logical CPUs: 2 training workers x 1 CPU + 1 CPU for Ray Data, with room to spare. Yields the GCS
    address (tests.servers.own_ray_cluster).
    """
    with own_ray_cluster(num_cpus=4) as address:
        yield address


@pytest.fixture(scope="module")
def mnist_s3(s3_server: str) -> str:
    """MNIST imported once per module into a fresh bucket: the dataset root URI."""
    from vae_core.data.importers import import_mnist

    root = f"{make_bucket()}/mnist"
    import_mnist(root, rows_per_shard=7_500, progress=lambda m: None)
    return root


# The MNIST sample that the Ray Train tests train on: a few seconds an epoch on 2 cores.
SAMPLE_TRAIN, SAMPLE_TEST = 6_000, 1_000


@pytest.fixture(scope="module")
def mnist_sample(s3_server: str) -> str:
    """MNIST's first 6,000 training and 1,000 test rows, in shards of 1,000, in a fresh bucket."""
    return write_mnist_sample(f"{make_bucket()}/mnist", SAMPLE_TRAIN, SAMPLE_TEST)
