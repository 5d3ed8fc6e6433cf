"""Servers for tests and benchmarks: a real S3 API on loopback (moto server mode; a dev dependency),
free ports, and waiting for a local server to answer."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Distinctive fake credentials, so tests can assert they never show up in output.
TEST_KEY_ID, TEST_SECRET = "AKIAVAEFLOWTEST", "vaeflow-test-secret-9f3c"


def wait_healthy(url: str, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    """Wait until GET `url` answers 200 (a server's health endpoint); an AssertionError when `proc`
    exits first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{what} at {url} not healthy after {timeout}s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_s3_server(separate_process: bool = False) -> Iterator[str]:
    """Start moto's S3 server on 127.0.0.1 and point the standard AWS environment at it.

    Set before ray.init() so that Ray workers inherit the endpoint. Yields the endpoint URL.
    `separate_process` runs the server as its own process (benchmarks: the objects it stores in
    memory and the CPU it uses stay out of the measured process).
    """
    from s3fs import S3FileSystem

    port = free_port()
    if separate_process:
        server = _MotoProcess(port)
    else:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per S3 request otherwise
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
    # s3fs caches filesystem instances per process, endpoint included: drop any from an earlier server.
    S3FileSystem.clear_instance_cache()
    os.environ.update(env)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(k, None)
    try:
        yield endpoint
    finally:
        server.stop()
        S3FileSystem.clear_instance_cache()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def s3_server_checking_keys() -> Iterator[str]:
    """A second moto server, on 127.0.0.1, that checks the access key of every request as AWS does
    (moto's INITIAL_NO_AUTH_ACTION_COUNT=0): every key is unknown to it, so each request is refused
    with InvalidAccessKeyId (a HEAD with a bare 403). Yields its endpoint; the environment is left
    alone."""
    server = _MotoProcess(free_port(), env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


@contextmanager
def s3_server_shedding_load() -> Iterator[str]:
    """An S3 endpoint on 127.0.0.1 that answers every request as a store shedding load does: 503 with
    S3's SlowDown error (a HEAD: a bare 503). Yields its endpoint; the environment is left alone."""
    import http.server
    import threading

    body = (
        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
        b"<Message>Please reduce your request rate.</Message></Error>"
    )

    class SlowDown(http.server.BaseHTTPRequestHandler):
        def answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowDown)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _MotoProcess:
    """`moto_server` as a child process, with ThreadedMotoServer's start/stop."""

    def __init__(self, port: int, env: dict[str, str] | None = None) -> None:
        self.port, self.proc, self.env = port, None, env
        self.pid: int | None = None

    def start(self) -> None:
        exe = Path(sys.executable).with_name("moto_server")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
        self.proc = subprocess.Popen(
            [*cmd, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=None if self.env is None else {**os.environ, **self.env},
        )
        self.pid = self.proc.pid
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto_server did not listen on 127.0.0.1:{self.port} within 30 s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@contextmanager
def own_ray_cluster(num_cpus: int = 4) -> Iterator[str]:
    """A local Ray cluster started as vaeflow starts its own (token auth), shut down afterwards; yields
    its GCS address, for drivers in subprocesses (RAY_ADDRESS plus this process's environment, which
    holds the token)."""
    import ray

    from vae_core.distributed.cluster import start_local_ray

    address = start_local_ray(num_cpus=num_cpus)
    try:
        yield address
    finally:
        ray.shutdown()


def make_bucket(prefix: str = "vaeflow") -> str:
    """Create a uniquely named bucket on the current S3 endpoint; returns s3://<name>."""
    import s3fs

    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(name)
    return f"s3://{name}"
