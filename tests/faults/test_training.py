"""Training under faults (scenarios 1-4): killed workers and drivers, a lost checkpoint, S3 outages.

Training runs in a driver subprocess against the module's Ray cluster (RAY_ADDRESS), so that a kill
or a hang hits that driver, never pytest; the tests watch S3 through the direct endpoint.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import fsspec
import psutil
import pytest

from tests.faults._helpers import (
    DriverRun,
    descendants,
    finish,
    launch_training,
    run_training,
    train_config,
    wait_for,
    write_dataset,
)
from tests.faults.conftest import S3, Outcome, RayCluster
from vae_core.training.checkpoints import load_checkpoint

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(600, method="signal")]

SNAPSHOT = "checkpoint_manager_snapshot.json"


@pytest.fixture(scope="module")
def data_s3(s3: S3) -> str:
    root = f"{s3.bucket()}/vectors"
    # 16,384 rows: an epoch lasts several seconds on 2 cores, so a kill sent once checkpoint 1 is
    # registered lands while epoch 2 trains. On a faster machine epoch 2 can end sooner than the
    # controller registers checkpoint 1; the tests hold checkpoint 2's upload (_hold_checkpoint), so
    # the kill still lands before epoch 2 is complete.
    write_dataset(s3.fs(), root, train_rows=16384, test_rows=512)
    return root


@pytest.fixture
def env(ray_cluster: RayCluster) -> dict[str, str]:
    return ray_cluster.env


def _snapshot(s3: S3, run_uri: str) -> str:
    fs = s3.fs()
    path = f"{run_uri}/{SNAPSHOT}"
    return fs.cat(path).decode() if fs.exists(path) else ""


def _registered(s3: S3, run_uri: str, epoch: int) -> bool:
    """Ray Train has registered checkpoint `epoch` (in the controller's snapshot), so a restart or a
    relaunch resumes from it; an upload alone is not enough."""
    return f"epoch_{epoch:04d}" in _snapshot(s3, run_uri)


def _complete(s3: S3, run_uri: str, epoch: int) -> bool:
    return s3.fs().exists(f"{run_uri}/epoch_{epoch:04d}/meta.json")


def _hold_checkpoint(s3: S3, run_uri: str, epoch: int) -> None:
    """Hold every request for checkpoint `epoch` at the proxy, so that a kill sent once the previous
    checkpoint is registered lands before this one can be written, however fast the machine trains
    (the controller registers a checkpoint on its next poll of the workers, up to 2 s after the
    report: on a fast machine that is longer than an epoch of the test data)."""
    s3.proxy.hold_matching(f"/{run_uri.removeprefix('s3://')}/epoch_{epoch:04d}/")


def _release_when_gone(s3: S3, procs: list[psutil.Process], what: str) -> None:
    """Lift the hold once `procs` have exited: a held upload then fails with its process, instead of
    completing late from a worker that Ray Train is still shutting down."""
    _, alive = psutil.wait_procs(procs, timeout=60)
    assert not alive, f"{what} still running 60 s after the kill: {[p.pid for p in alive]}"
    s3.proxy.clear()


def _printed_epochs(out: str, total: int) -> list[int]:
    """Epochs the driver reported as finished ('epoch k/total  loss ...', relayed from rank 0), in order."""
    return [
        int(line.split("epoch ", 1)[1].split("/")[0])
        for line in out.splitlines()
        if line.startswith("epoch ") and f"/{total} " in line
    ]


@pytest.mark.scenario(
    1, "worker SIGKILL mid-epoch -> resumes from the last checkpoint, finished epochs not re-run"
)
def test_a_worker_killed_mid_epoch_resumes_from_the_last_checkpoint(
    s3: S3, data_s3: str, env: dict[str, str], tmp_path: Path, scenario: Outcome
) -> None:
    runs = f"{s3.bucket()}/runs"
    cfg = train_config(data_s3, runs, epochs=2, max_failures=1)
    _hold_checkpoint(s3, f"{runs}/worker-kill", 2)
    driver = launch_training(cfg, "worker-kill", env, tmp_path)
    try:
        wait_for(lambda: _registered(s3, f"{runs}/worker-kill", 1), 180, "checkpoint 1 registered")
        workers = wait_for(lambda: descendants("ray::RayTrainWorker"), 30, "a Ray Train worker")
        held = s3.proxy.stats()["blackholed"]
        killed_at = time.time()
        workers[-1].send_signal(signal.SIGKILL)
        scenario.detail = f"SIGKILLed worker pid {workers[-1].pid} after checkpoint 1, " + (
            "during checkpoint 2's held upload" if held else "while it trained epoch 2"
        )
        _release_when_gone(s3, workers, "the failed worker group")
    finally:
        run = DriverRun(*finish(driver, 240))
    assert run.returncode == 0, run.tail
    history = run.meta["history"]
    assert run.epochs == [1, 2], run.tail
    # Killed inside epoch 2 (training, or writing its held checkpoint): epoch 1 had finished, 2 had not.
    assert history[0]["finished_at"] < killed_at < history[1]["finished_at"], (killed_at, history)
    assert [r["from_epoch"] for r in run.meta["restarts"]] == [1], run.meta["restarts"]
    assert _printed_epochs(run.output, 2).count(1) == 1, "epoch 1 was trained again"
    assert run.meta["epoch"] == 2 and _complete(s3, f"{runs}/worker-kill", 2)


def _one_worker(cfg):
    return cfg.with_overrides(["compute.num_workers=1"])


@pytest.mark.scenario(
    2, "driver SIGKILL, relaunch with the same name -> resumes; a new name starts at epoch 1"
)
def test_a_killed_driver_resumes_under_its_name_and_a_new_name_starts_fresh(
    s3: S3, data_s3: str, env: dict[str, str], tmp_path: Path, scenario: Outcome
) -> None:
    runs = f"{s3.bucket()}/runs"
    cfg = _one_worker(train_config(data_s3, runs, epochs=2))
    _hold_checkpoint(s3, f"{runs}/driver-kill", 2)
    first = launch_training(cfg, "driver-kill", env, tmp_path)
    try:
        wait_for(lambda: _registered(s3, f"{runs}/driver-kill", 1), 180, "checkpoint 1 registered")
        workers = wait_for(lambda: descendants("ray::RayTrainWorker"), 30, "the run's Ray Train worker")
    finally:
        first.send_signal(signal.SIGKILL)  # the driver only: its Ray job (controller, workers) dies with it
        first.communicate(timeout=30)
    _release_when_gone(s3, workers, "the killed driver's worker")
    assert not _complete(s3, f"{runs}/driver-kill", 2), "checkpoint 2 was written despite the hold"

    resumed = run_training(cfg, "driver-kill", env, tmp_path, resume=True, timeout=240)
    assert resumed.returncode == 0, resumed.tail
    assert resumed.epochs == [1, 2]
    assert [r["from_epoch"] for r in resumed.meta["restarts"]] == [1], resumed.meta["restarts"]
    assert 1 not in _printed_epochs(resumed.output, 2), "the relaunch trained epoch 1 again"

    # Same config and runs_uri, another name: a fresh run, nothing taken from "driver-kill".
    fresh = launch_training(cfg, "driver-kill-2", env, tmp_path)
    try:
        wait_for(lambda: _complete(s3, f"{runs}/driver-kill-2", 1), 180, "the new run's checkpoint 1")
    finally:
        fresh.send_signal(signal.SIGKILL)
        out, _ = fresh.communicate(timeout=30)
    meta = json.loads(s3.fs().cat(f"{runs}/driver-kill-2/epoch_0001/meta.json"))
    assert [h["epoch"] for h in meta["history"]] == [1] and meta["restarts"] == [], meta
    assert "untrained val ELBO" in out
    scenario.detail = "relaunch resumed from epoch 1; a new name trained epoch 1 from scratch"


@pytest.mark.scenario(
    3, "latest checkpoint deleted -> resumes from the previous one or fails naming the path; no hang"
)
def test_a_deleted_latest_checkpoint_resumes_from_the_previous_or_fails_naming_it(
    s3: S3, data_s3: str, env: dict[str, str], tmp_path: Path, scenario: Outcome
) -> None:
    runs = f"{s3.bucket()}/runs"
    run_uri = f"{runs}/lost-latest"
    cfg = _one_worker(train_config(data_s3, runs, epochs=2))
    base = run_training(cfg, "lost-latest", env, tmp_path)
    assert base.returncode == 0 and base.epochs == [1, 2], base.tail
    s3.fs().rm(f"{run_uri}/epoch_0002", recursive=True)
    lost = f"{run_uri.removeprefix('s3://')}/epoch_0002"

    again = run_training(cfg, "lost-latest", env, tmp_path, resume=True, timeout=150)
    scenario.detail = f"relaunch rc={again.returncode}"
    assert again.returncode is not None, f"the relaunch hung (killed after 150 s):\n{again.tail}"
    if again.returncode == 0:
        restarts = again.meta["restarts"]
        assert restarts, f"silent fresh start: the relaunch trained from scratch:\n{again.tail}"
        assert restarts[-1]["from_epoch"] == 1, restarts
        assert again.epochs == [1, 2] and 1 not in _printed_epochs(again.output, 2), again.tail
        assert _complete(s3, run_uri, 2)
    else:
        named = [ln.strip() for ln in again.output.splitlines() if lost in ln]
        scenario.detail += f"; error naming the path: {named[-1][:300] if named else None}"
        assert named, f"the error does not name {lost}:\n{again.tail}"
        assert 1 not in _printed_epochs(again.output, 2), (
            f"it trained from scratch before failing:\n{again.tail}"
        )


def _latest(s3: S3, run_uri: str) -> str | None:
    text = _snapshot(s3, run_uri)
    if not text:
        return None
    latest = json.loads(text).get("latest_checkpoint_result") or {}
    return latest.get("checkpoint_dir_name")


@pytest.mark.scenario(4, "checkpoint upload fails (S3 black-holed) -> the previous checkpoint stays latest")
def test_an_s3_outage_during_a_checkpoint_upload_keeps_the_previous_checkpoint_latest(
    s3: S3, env: dict[str, str], tmp_path: Path, scenario: Outcome
) -> None:
    data = tmp_path / "data"  # local data: the outage hits checkpoint traffic only
    write_dataset(fsspec.filesystem("file"), str(data), train_rows=1024, test_rows=256)
    runs = f"{s3.bucket()}/runs"
    run_uri = f"{runs}/outage"
    cfg = _one_worker(train_config(str(data), runs, epochs=3, max_failures=3))
    driver = launch_training(cfg, "outage", env, tmp_path)
    seen: list[Any] = []
    try:
        wait_for(lambda: _registered(s3, run_uri, 1), 180, "checkpoint 1 registered")
        before = _latest(s3, run_uri)
        # S3 goes dark until the run tries to use it (the epoch 2 upload), then stays dark a while.
        s3.proxy.blackhole()
        wait_for(lambda: s3.proxy.stats()["blackholed"] > 0, 120, "S3 traffic into the outage")
        deadline = time.monotonic() + OUTAGE_S
        while time.monotonic() < deadline:
            seen.append(_latest(s3, run_uri))
            time.sleep(0.5)
        stats = s3.proxy.clear()
    finally:
        s3.proxy.clear()
        run = DriverRun(*finish(driver, 240))
    scenario.detail = (
        f"latest before the outage {before}, during it {sorted(set(map(str, seen)))}; "
        f"{stats['blackholed']} connections black-holed; rc={run.returncode}"
    )
    assert set(seen) == {before}, f"the latest checkpoint moved during the outage: {seen}"
    assert run.returncode is not None, f"the run hung after the outage:\n{run.tail}"
    latest = _latest(s3, run_uri)
    assert latest is not None and _complete(s3, run_uri, int(latest.split("_")[1])), latest
    load_checkpoint(f"{run_uri}/{latest}")  # the latest is a whole, loadable checkpoint
    if run.returncode == 0:
        assert run.epochs == [1, 2, 3], run.tail
        scenario.detail += f"; completed, restarts {[r['from_epoch'] for r in run.meta['restarts']]}"
    else:
        assert "TrainingError" in run.output and "outage" in run.output, run.tail


OUTAGE_S = 15.0
