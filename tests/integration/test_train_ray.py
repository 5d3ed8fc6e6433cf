"""Ray Train on a real local cluster with checkpoints in S3 (moto server): training, failures, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
import s3fs
import torch

from tests.integration.conftest import make_bucket
from vae_core.config import VaeflowConfig
from vae_core.dataset import iter_batches, open_dataset, vector_features
from vae_core.distributed.cluster import ClusterResourceError, check_resources
from vae_core.distributed.trainer import train
from vae_core.evaluate import evaluate
from vae_core.families import DataShape, build_model

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]


def mnist_config(data_uri: str, runs_uri: str, **train_kw) -> VaeflowConfig:
    return VaeflowConfig.model_validate(
        {
            "name": "mnist-vae",
            "data": {"uri": data_uri, "vector_column": "image", "image_shape": [1, 28, 28], "scale": 255},
            "model": {"family": "vae", "hidden": [400], "latent_dim": 20},
            "train": {"epochs": 2, "batch_size": 128, "runs_uri": runs_uri, **train_kw},
            "compute": {"num_workers": 2, "cpus_per_worker": 1, "data_cpus": 1},
        }
    )


def _test_batches(cfg: VaeflowConfig) -> list[torch.Tensor]:
    shards, _, spec = open_dataset(cfg.data, "test")
    return [torch.from_numpy(vector_features(b, spec, s)) for s, b in iter_batches(shards, ["image"], 2000)]


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _exists(uri: str) -> bool:
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    return fs.exists(uri)


def _registered(run_uri: str, epoch: int) -> bool:
    """Ray Train has registered checkpoint `epoch` (not merely uploaded it): it is in the controller's
    checkpoint-manager snapshot, so a restart or relaunch resumes from it. A checkpoint uploaded but
    not yet registered when a worker dies is not resumable (Ray polls workers every ~2 s)."""
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    snapshot = f"{run_uri}/checkpoint_manager_snapshot.json"
    return fs.exists(snapshot) and f"epoch_{epoch:04d}" in fs.cat(snapshot).decode()


def test_two_workers_two_epochs_checkpoint_to_s3_and_beat_the_untrained_model(ray_local, mnist_s3):
    runs = f"{make_bucket()}/runs"
    cfg = mnist_config(mnist_s3, runs)
    result = train(cfg, run_name="s3-run")
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert result.checkpoint.meta["world_size"] == 2
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    for epoch in (1, 2):
        files = set(fs.ls(f"{runs}/s3-run/epoch_{epoch:04d}"))
        names = {f.rsplit("/", 1)[1] for f in files}
        assert {"model.safetensors", "optimizer.safetensors", "config.json", "meta.json"} <= names
    assert result.checkpoint_uri == f"{runs}/s3-run/epoch_0002"
    # Independent check on the driver: the trained model against an untrained one, same test rows.
    batches = _test_batches(cfg)
    trained = evaluate(result.model, batches).elbo
    torch.manual_seed(cfg.train.seed)
    untrained = evaluate(build_model(cfg.model, DataShape(784, (1, 28, 28))), batches).elbo
    assert trained > untrained + 100, (trained, untrained)
    assert result.history[-1]["val_elbo"] > result.checkpoint.meta["val_elbo_init"]


def _train_worker_pids() -> list[int]:
    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"] and p.info["cmdline"][0].startswith("ray::RayTrainWorker")
    ]


def test_a_killed_worker_restarts_the_group_from_the_last_checkpoint(ray_local, mnist_s3):
    runs = f"{make_bucket()}/runs"
    cfg = mnist_config(mnist_s3, runs, epochs=3, max_failures=1)
    killed: dict[str, float] = {}

    def killer() -> None:
        _wait_for(lambda: _registered(f"{runs}/kill-run", 1), 240, "checkpoint 1")
        pids = _train_worker_pids()
        assert pids, "no Ray Train worker process found"
        killed["at"] = time.time()
        os.kill(pids[-1], signal.SIGKILL)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    result = train(cfg, run_name="kill-run")
    thread.join(timeout=5)
    assert "at" in killed
    history = result.history
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[0]["finished_at"] < killed["at"] < history[1]["finished_at"]  # epoch 1 not re-run
    restarts = result.checkpoint.meta["restarts"]
    assert [r["from_epoch"] for r in restarts] == [1]
    assert result.checkpoint.meta["epoch"] == 3 and result.checkpoint_uri.endswith("epoch_0003")
    # keep_checkpoints=2 by validation ELBO: the worst (epoch 1) is gone, the best two remain.
    kept = [e for e in (1, 2, 3) if _exists(f"{runs}/kill-run/epoch_{e:04d}/meta.json")]
    assert kept == [2, 3] and result.best_checkpoint_uri.endswith("epoch_0003")


DRIVER = """
import json, sys
from vae_core.config import VaeflowConfig
from vae_core.distributed.trainer import train
result = train(VaeflowConfig.from_file(sys.argv[1]), run_name="driver-run")
print("RESULT_META", json.dumps(result.checkpoint.meta))
"""


def _launch_driver(config_file, address: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_ADDRESS": address}
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(config_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def test_a_killed_driver_is_resumed_by_relaunching_with_the_same_run_name(ray_local, mnist_s3, tmp_path):
    runs = f"{make_bucket()}/runs"
    config_file = tmp_path / "config.json"
    config_file.write_text(mnist_config(mnist_s3, runs, epochs=3).to_json())
    first = _launch_driver(config_file, ray_local)
    try:
        _wait_for(lambda: _registered(f"{runs}/driver-run", 1), 240, "checkpoint 1")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    assert not _exists(f"{runs}/driver-run/epoch_0003/meta.json")
    second = _launch_driver(config_file, ray_local)
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out[-3000:]
    meta = json.loads(out.split("RESULT_META", 1)[1].strip().splitlines()[0])
    assert meta["epoch"] == 3
    assert [h["epoch"] for h in meta["history"]] == [1, 2, 3]
    assert meta["restarts"][0]["from_epoch"] in (1, 2)  # resumed from the last checkpoint, not from 0
    assert "epoch 1/3" not in out  # the relaunch never trained epoch 1 again


def test_ddp_two_workers_of_64_match_one_worker_of_128(ray_local, mnist_s3):
    runs = f"{make_bucket()}/runs"
    two = mnist_config(mnist_s3, runs, epochs=1, batch_size=64)
    one = mnist_config(mnist_s3, runs, epochs=1, batch_size=128).with_overrides(["compute.num_workers=1"])
    elbo_two = train(two, run_name="ddp-2x64").history[-1]["val_elbo"]
    elbo_one = train(one, run_name="ddp-1x128").history[-1]["val_elbo"]
    assert abs(elbo_two - elbo_one) / abs(elbo_one) < 0.01, (elbo_two, elbo_one)


def test_a_plan_bigger_than_the_cluster_fails_fast_instead_of_hanging(ray_local):
    cfg = VaeflowConfig().with_overrides(["compute.num_workers=4", "compute.cpus_per_worker=1"])
    with pytest.raises(ClusterResourceError, match="would hang"):
        check_resources(cfg.compute)
