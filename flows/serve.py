"""`vaeflow serve`: the vae-nightly deployment served from this process, scheduled as in prefect.yaml."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.schedules import Cron
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.local import build
from flows.nightly import nightly_flow
from vae_core.errors import ConfigError

PREFECT_FILE = Path(__file__).resolve().parent.parent / "deploy" / "prefect.yaml"
NIGHTLY_ENTRYPOINT = "flows/nightly.py:nightly_flow"


def nightly_spec(prefect_file: str | Path = PREFECT_FILE) -> dict[str, Any]:
    """The nightly deployment's entry in prefect.yaml (the one whose entrypoint is the nightly flow)."""
    try:
        spec = yaml.safe_load(Path(prefect_file).read_text())
    except OSError as e:
        raise ConfigError(f"{prefect_file}: cannot read the deployment file ({e.strerror or e})") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{prefect_file}: not YAML ({' '.join(str(e).split())})") from e
    for deployment in (spec or {}).get("deployments", []):
        if deployment.get("entrypoint") == NIGHTLY_ENTRYPOINT:
            return deployment
    raise ConfigError(f"{prefect_file}: no deployment with entrypoint {NIGHTLY_ENTRYPOINT}")


def schedules(spec: dict[str, Any]) -> list[Cron]:
    return [
        Cron(s["cron"], timezone=s.get("timezone"), active=s.get("active", True))
        for s in spec.get("schedules", [])
    ]


def concurrency(spec: dict[str, Any]) -> ConcurrencyLimitConfig | None:
    limit = spec.get("concurrency_limit")
    if limit is None:
        return None
    if isinstance(limit, int):
        return ConcurrencyLimitConfig(limit=limit)
    strategy = ConcurrencyLimitStrategy(limit.get("collision_strategy", "ENQUEUE"))
    return ConcurrencyLimitConfig(limit=limit["limit"], collision_strategy=strategy)


@contextmanager
def prefect_server(port: int, timeout: float = 120) -> Iterator[str]:
    """A `prefect server start` child process on 127.0.0.1 (PREFECT_HOME from the environment) until
    the block exits. Needed for schedules: Prefect's ephemeral API does not run the scheduler."""
    log_path = Path(os.environ.get("PREFECT_HOME", ".")) / "server.log"
    url = f"http://127.0.0.1:{port}/api"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"prefect server exited with {proc.returncode}; see {log_path}")
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=2):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"prefect server not up after {timeout:.0f}s; see {log_path}"
                        ) from None
                    time.sleep(0.5)
            print(f"Prefect server (UI and API) at http://127.0.0.1:{port}, log {log_path}", flush=True)
            yield url
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)


def serve(
    root: str, prefect_file: str | None, config_file: str | None, overrides: list[str], port: int = 4200
) -> int:
    """Serve vae-nightly against PREFECT_API_URL, or against a local server started for the purpose."""
    if os.environ.get("PREFECT_API_URL"):
        _serve(root, prefect_file, config_file, overrides)
        return 0
    with prefect_server(port) as url, temporary_settings(updates={PREFECT_API_URL: url}):
        _serve(root, prefect_file, config_file, overrides)
    return 0


def _serve(root: str, prefect_file: str | None, config_file: str | None, overrides: list[str]) -> None:
    spec = nightly_spec(prefect_file or PREFECT_FILE)
    config, pipeline = build(root, None, config_file, overrides)
    nightly_flow.serve(
        name=spec["name"],
        schedules=schedules(spec),
        global_limit=concurrency(spec),
        limit=1,  # this process runs one flow run at a time as well
        parameters={"config": config.model_dump(mode="json"), "pipeline": pipeline.model_dump(mode="json")},
        description=spec.get("description"),
        tags=spec.get("tags"),
    )
