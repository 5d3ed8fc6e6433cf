"""deploy/prefect.yaml against a real `prefect server` on 127.0.0.1: `prefect deploy --all` registers
every flow with the nightly schedule and concurrency limit, a process worker runs a triggered
nightly to Completed, and a second trigger waits for the first instead of overlapping it.

In the deployment tier (no image needed): the scheduling and concurrency settings that the pods'
test (test_deploy.py) takes as given, checked on one host with a local Ray cluster."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.datasets import write_mnist_sample
from tests.servers import free_port, own_ray_cluster, wait_healthy
from vae_core.operations.registry import champion_record

pytestmark = [pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).parent / "prefect")
POOL = "vaeflow-process"


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the process group we started (`prefect worker` ignored SIGTERM here)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("prefect-home")
    root = tmp_path_factory.mktemp("store")
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "VAEFLOW_ROOT": str(root),
        "RAY_AUTH_MODE": "disabled",
        # A run waiting for the deployment's slot is retried after this (default 30 s), and the
        # worker polls every 2 s (default 10 s): less idle time in the test.
        "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "5",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
    }
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture(scope="module")
def ray_local() -> Iterator[str]:
    """A local Ray cluster of our own for the flow runs to join: its GCS address."""
    with own_ray_cluster(num_cpus=4) as address:
        yield address


@pytest.fixture(scope="module")
def server(env: dict[str, str], tmp_path_factory) -> Iterator[str]:
    port = free_port()
    log = open(tmp_path_factory.mktemp("logs") / "server.log", "wb")
    proc = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_healthy(f"{url}/health", proc, "prefect server")
        env["PREFECT_API_URL"] = url
        yield url
    finally:
        _kill(proc)
        log.close()


def _prefect(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([PREFECT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _client_call(url: str, fn):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def call():
        async with get_client() as client:
            return await fn(client)

    with temporary_settings(updates={PREFECT_API_URL: url}):
        return asyncio.run(call())


def test_deploy_all_registers_the_flows_with_schedule_and_concurrency_limit(server, env):
    _prefect(env, "work-pool", "create", POOL, "--type", "process")
    _prefect(env, "--no-prompt", "deploy", "--all", "--prefect-file", "deploy/prefect.yaml")

    async def read(client):
        return {
            f"{(await client.read_flow(d.flow_id)).name}/{d.name}": d for d in await client.read_deployments()
        }

    deployments = _client_call(server, read)
    assert set(deployments) == {
        "vae-nightly/nightly", "vae-train/manual", "vae-evaluate/manual", "vae-embed/manual",
        "vae-generate/manual",
    }  # fmt: skip
    nightly = deployments["vae-nightly/nightly"]
    [schedule] = nightly.schedules
    assert schedule.schedule.cron == "30 2 * * *" and schedule.schedule.timezone == "Europe/Berlin"
    assert schedule.active
    assert nightly.global_concurrency_limit.limit == 1
    assert nightly.concurrency_options.collision_strategy == "ENQUEUE"
    assert nightly.work_pool_name == POOL and nightly.entrypoint == "flows/nightly.py:nightly_flow"
    assert nightly.parameters["pipeline"]["root"] == env["VAEFLOW_ROOT"]  # {{ $VAEFLOW_ROOT }} filled in


def test_a_triggered_nightly_completes_and_a_second_trigger_waits_for_it(
    server, env, ray_local, tmp_path_factory
):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root = env["VAEFLOW_ROOT"]
    data = write_mnist_sample(f"{root}/datasets/mnist", 1_000, 300)
    params = {
        "config": {
            "name": "tiny-vae",
            "data": {"uri": data, "vector_column": "image", "image_shape": [1, 28, 28], "scale": 255},
            "model": {"family": "vae", "hidden": [64], "latent_dim": 4},
            "train": {"epochs": 1, "batch_size": 100, "runs_uri": f"{root}/runs"},
            "compute": {"num_workers": 1, "cpus_per_worker": 1, "data_cpus": 1},
            "generate": {"rows": 50},
        },
        "pipeline": {
            "root": root,
            "embed_splits": ["test"],
            "iwae_k": 5,
            "max_eval_rows": 100,
        },
    }
    log = open(tmp_path_factory.mktemp("logs") / "worker.log", "wb")
    # Flow runs join this module's Ray cluster instead of starting (and leaving behind) their own,
    # and authenticate to it with its token (the cluster runs with Ray token auth).
    auth = {k: v for k, v in os.environ.items() if k.startswith("RAY_AUTH_")}
    worker_env = {**env, **auth, "RAY_ADDRESS": ray_local}
    worker = subprocess.Popen(
        [PREFECT, "worker", "start", "--pool", POOL, "--prefetch-seconds", "5"],
        env=worker_env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        with temporary_settings(updates={PREFECT_API_URL: server}):
            # The second night reads a dataset that is not there: once it has the slot it fails within
            # seconds, which is all this needs of it (that it waited), and saves a second night's work.
            gone = {**params["config"], "data": {**params["config"]["data"], "uri": f"{root}/datasets/gone"}}
            runs = [
                run_deployment("vae-nightly/nightly", parameters=p, timeout=0)
                for p in (
                    {**params, "run_date": "2026-01-01"},
                    {**params, "config": gone, "run_date": "2026-01-02"},
                )
            ]
        ids = [r.id for r in runs]
        deadline = time.monotonic() + 420
        while True:
            states = _client_call(server, lambda c: asyncio.gather(*(c.read_flow_run(i) for i in ids)))
            if all(r.state.is_final() for r in states):
                break
            assert worker.poll() is None, "the worker died"
            assert time.monotonic() < deadline, [r.state for r in states]
            time.sleep(2)
    finally:
        _kill(worker)
        log.close()
    night, gone_night = states  # in the order triggered; the worker may start either first
    assert night.state.is_completed(), night.state
    assert gone_night.state.is_failed() and "datasets/gone" in str(gone_night.state.message), gone_night.state
    first, second = sorted(states, key=lambda r: r.start_time)
    assert second.start_time >= first.end_time  # never both running
    history = _client_call(server, lambda c: c.read_flow_run_states(second.id))
    assert "AwaitingConcurrencySlot" in {s.name for s in history}  # the one started second waited
    assert champion_record(root, "tiny-vae").version is not None
