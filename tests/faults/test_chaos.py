"""The chaos night (scenario 23): one whole nightly on S3 while a seeded schedule hurts it, then reruns.

`vaeflow run` (train -> evaluate -> promote -> embed -> generate) runs as a user runs it, on the
module's Ray cluster (RAY_ADDRESS) with S3 through the fault proxy. A seeded schedule kills a Ray
Train worker mid-training, resets the open S3 connections, kills an embed map actor mid-job and
finally SIGKILLs the driver itself at a stage the seed picks; the night is then rerun, as an operator
or Prefect's retry would, until it completes. Afterwards, read directly from moto: every input id is
in each embeddings table exactly once, the samples' ids are unique and as many as asked for, the
champion moved once, and no multipart upload was left open.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from tests.faults._helpers import ROOT, Lines, descendants, tail, wait_for, write_dataset
from tests.faults.conftest import S3, Outcome, RayCluster

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(900, method="signal")]

SEED = 23  # the schedule: where the driver dies and how long each fault waits after its trigger
NAME, NIGHT = "chaos", "2026-12-06"
TRAIN_ROWS, TEST_ROWS, SAMPLES = 3000, 600, 1500
ATTEMPTS = 4  # the first, hurt, and reruns until one completes


@dataclass
class Fault:
    what: str
    trigger: str  # a line of the driver's output that must have appeared (the stage is running)
    act: Callable[[], str]  # does it; returns what it hit
    delay: float = 0.0  # seconds after the trigger (from the seed)
    done: str = ""


@dataclass
class Schedule:
    faults: list[Fault]
    log: list[str] = field(default_factory=list)
    orphans: list[psutil.Process] = field(default_factory=list)  # what the killed driver left running

    def end_orphans(self) -> None:
        for process in self.orphans:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


def _kill(name: str) -> Callable[[], str]:
    def act() -> str:
        found = wait_for(lambda: descendants(name), 60, f"a {name} process")
        found[0].send_signal(signal.SIGKILL)
        return f"pid {found[0].pid}"

    return act


def _schedule(s3: S3, driver: subprocess.Popen) -> Schedule:
    rng = random.Random(SEED)
    resets = rng.randint(2, 4)
    schedule = Schedule([])

    def reset() -> str:
        s3.proxy.reset_open()
        s3.proxy.reset(n=resets)
        return f"open connections reset, the next {resets} too"

    def kill_driver() -> str:
        # Its children outlive it (the ephemeral Prefect API server): the test ends them afterwards.
        schedule.orphans += psutil.Process(driver.pid).children(recursive=True)
        driver.send_signal(signal.SIGKILL)
        return f"pid {driver.pid}"

    # The driver dies once, after the other faults, at a stage the seed picks: mid-embed or mid-generate.
    stage = rng.choice(["embed:", "generate:"])
    faults = [
        Fault("kill a training worker", "epoch 1/", _kill("ray::RayTrainWorker"), rng.uniform(0.5, 2)),
        Fault("reset S3 connections", "epoch 2/", reset, rng.uniform(0, 1)),
        Fault("kill an embed actor", "embed:", _kill("ray::MapWorker"), rng.uniform(0, 1)),
        Fault(f"kill the driver (at '{stage}')", stage, kill_driver, rng.uniform(0.5, 1.5)),
    ]
    # In output order: the driver's kill comes after every fault whose trigger precedes its stage.
    order = ["epoch 1/", "epoch 2/", "embed:", "generate:"]
    faults.sort(key=lambda f: (order.index(f.trigger), f.what.startswith("kill the driver")))
    schedule.faults = faults
    return schedule


def _config(tmp: Path, bucket: str) -> Path:
    config = {
        "name": NAME,
        "data": {"uri": f"{bucket}/data", "vector_column": "x"},
        "model": {"family": "vae", "hidden": [64], "latent_dim": 4},
        # cache_mb 0: every epoch streams from S3, so the worker kill and the resets land in reads.
        "train": {
            "epochs": 3,
            "batch_size": 32,
            "runs_uri": f"{bucket}/runs",
            "cache_mb": 0,
            "max_failures": 2,
        },
        "compute": {"num_workers": 2, "cpus_per_worker": 1, "data_cpus": 1, "torch_threads": 1},
        "embed": {"rows_per_file": 250, "chunk_rows": 250},
        "generate": {"rows": SAMPLES, "rows_per_file": 250},
    }
    path = tmp / "chaos.json"
    path.write_text(json.dumps(config))
    return path


def _launch(cluster: RayCluster, tmp: Path, bucket: str, config: Path) -> subprocess.Popen:
    env = {**cluster.env, "PREFECT_HOME": str(tmp / "prefect"), "PYTHONPATH": str(ROOT)}
    overrides = ["pipeline.iwae_k=10", "pipeline.max_eval_rows=200", "embed.passthrough=[]"]
    exe = str(Path(sys.executable).with_name("vaeflow"))
    return subprocess.Popen(
        [exe, "run", "--root", f"{bucket}/root", "--config", str(config), "--date", NIGHT, *overrides],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env,
    )  # fmt: skip


def _hurt(lines: Lines, schedule: Schedule) -> None:
    """Each fault once its trigger line has appeared (and its seeded delay passed), in order."""
    import time

    for fault in schedule.faults:
        seen = lambda f=fault: f.trigger in lines.text() or lines.proc.poll() is not None  # noqa: E731
        wait_for(seen, 400, fault.trigger)
        if lines.proc.poll() is not None:
            schedule.log.append(f"{fault.what}: not done, the night had ended")
            return
        time.sleep(fault.delay)
        fault.done = fault.act()
        schedule.log.append(f"{fault.what}: {fault.done}")


@pytest.mark.scenario(
    23, "chaos night: worker, embed actor and driver killed, S3 resets -> reruns complete, every id once"
)
def test_a_chaos_night_completes_on_rerun_with_every_id_once(
    s3: S3, ray_cluster: RayCluster, tmp_path: Path, scenario: Outcome
) -> None:
    from deltalake import DeltaTable

    bucket = s3.bucket()
    name = bucket.removeprefix("s3://")
    write_dataset(s3.fs(), f"{name}/data", train_rows=TRAIN_ROWS, test_rows=TEST_ROWS, shards=6)
    config = _config(tmp_path, bucket)
    first = Lines(_launch(ray_cluster, tmp_path, bucket, config))
    schedule = _schedule(s3, first.proc)
    try:
        _hurt(first, schedule)
    finally:
        code, out = first.finish(400)
        s3.proxy.clear()
        schedule.end_orphans()
    codes, last = [code], out
    while codes[-1] != 0 and len(codes) < ATTEMPTS:
        rc, last = Lines(_launch(ray_cluster, tmp_path, bucket, config)).finish(600)
        codes.append(rc)
    scenario.detail = f"seed {SEED}: {'; '.join(schedule.log)}; return codes {codes}"
    assert all(f.done for f in schedule.faults), f"faults missed: {schedule.log}\n{tail(code, out)}"
    assert codes[0] != 0, "the driver's kill did not end the first attempt"
    assert codes[-1] == 0, f"no rerun completed the night: {codes}\n{tail(codes[-1], last)}"

    options = {
        "AWS_ENDPOINT_URL": s3.direct, "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"],
    }  # fmt: skip
    expected = {"train": set(range(TRAIN_ROWS)), "test": set(range(10**6, 10**6 + TEST_ROWS))}
    listing = sorted(s3.fs().find(f"{name}/root"))
    for split, want in expected.items():
        uri = f"{bucket}/root/embeddings/{NAME}/{split}"
        assert s3.fs().exists(f"{uri}/_delta_log"), f"no table {uri}: {listing}\n{tail(0, last)}"
        table = DeltaTable(uri, storage_options=options)
        ids = table.to_pyarrow_table(columns=["id"]).column("id").to_pylist()
        scenario.rows_lost += len(want - set(ids))
        scenario.rows_duplicated += len(ids) - len(set(ids))
        assert set(ids) == want and len(ids) == len(want), f"{split}: {len(ids)} rows, {len(set(ids))} ids"
    samples = DeltaTable(f"{bucket}/root/samples/{NAME}", storage_options=options)
    ids = samples.to_pyarrow_table(columns=["id"]).column("id").to_pylist()
    scenario.rows_duplicated += len(ids) - len(set(ids))
    assert len(ids) == len(set(ids)) == SAMPLES, f"samples: {len(ids)} rows, {len(set(ids))} ids"
    champions = s3.fs().ls(f"{name}/root/models/{NAME}/champion")
    assert len(champions) == 1, f"the champion moved {len(champions)} times: {champions}"
    uploads = s3.client().list_multipart_uploads(Bucket=name).get("Uploads", [])
    assert not uploads, f"orphaned multipart uploads: {[u['Key'] for u in uploads]}"
