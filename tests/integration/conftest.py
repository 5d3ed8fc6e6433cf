"""Real local services for integration tests: a moto S3 server on 127.0.0.1 (session-wide)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pytest

# Distinctive fake credentials, so tests can assert they never show up in output.
TEST_KEY_ID, TEST_SECRET = "AKIAVAEFLOWTEST", "vaeflow-test-secret-9f3c"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Start moto in server mode and point the standard AWS environment at it."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": TEST_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": TEST_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in [*env, "AWS_PROFILE", "AWS_SESSION_TOKEN"]}
    os.environ.update(env)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(k, None)
    try:
        yield endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def make_bucket() -> str:
    import s3fs

    name = f"vaeflow-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(name)
    return f"s3://{name}"


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
