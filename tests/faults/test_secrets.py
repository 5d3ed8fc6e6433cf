"""Fake AWS keys never written anywhere (scenario 12): one whole nightly, then a grep of everything.

`vaeflow run` (the Prefect flow vae-nightly with its ephemeral API, its own token-auth Ray cluster)
trains, evaluates, registers, promotes, embeds and generates against S3 (through the proxy), with
tests.servers' fake keys in both places a user puts them: the AWS environment and the config's
`data.storage_options`. Runs last in the tier (see conftest), then greps for both strings in:
the run's output (logs), every file under this session's pytest temp root (Prefect's database with
flow parameters, artifacts and logs; local checkpoints and configs of every scenario), every Ray
session dir of the tier's clusters and of the run's own, and every object on the S3 server
(checkpoints, run records, registry, tables, drift, reports of every scenario).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.faults._helpers import ROOT, finish, write_dataset
from tests.faults.conftest import RAY_DIRS, S3, Outcome
from tests.servers import TEST_KEY_ID, TEST_SECRET

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(420, method="signal")]

SECRETS = (TEST_KEY_ID.encode(), TEST_SECRET.encode())


def _leaks_in_files(root: Path, skip: set[Path]) -> tuple[int, list[str]]:
    scanned, leaks = 0, []
    for path in root.rglob("*"):
        if path in skip or not path.is_file() or path.is_symlink() or path.is_socket():
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        scanned += 1
        leaks += [f"{path}: {s.decode()}" for s in SECRETS if s in data]
    return scanned, leaks


def _leaks_in_s3(s3: S3) -> tuple[int, list[str]]:
    client, scanned, leaks = s3.client(), 0, []
    for bucket in client.list_buckets()["Buckets"]:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket["Name"]):
            for obj in page.get("Contents", []):
                data = client.get_object(Bucket=bucket["Name"], Key=obj["Key"])["Body"].read()
                scanned += 1
                leaks += [f"s3://{bucket['Name']}/{obj['Key']}: {s.decode()}" for s in SECRETS if s in data]
    return scanned, leaks


@pytest.mark.scenario(12, "fake AWS keys never in logs, Ray session dirs, checkpoints, registry, Prefect")
def test_fake_aws_keys_appear_in_no_log_file_or_object(
    s3: S3, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, _ray_dirs: None, scenario: Outcome
) -> None:
    bucket = s3.bucket()
    write_dataset(s3.fs(), f"{bucket.removeprefix('s3://')}/data", train_rows=1200, test_rows=300, shards=2)
    options = {
        "key": TEST_KEY_ID,
        "secret": TEST_SECRET,
        "client_kwargs": {"endpoint_url": s3.endpoint, "region_name": "us-east-1"},
    }
    config = {
        "name": "secrets",
        "data": {"uri": f"{bucket}/data", "vector_column": "x", "storage_options": options},
        "model": {"family": "vae", "hidden": [32], "latent_dim": 4},
        "train": {"epochs": 1, "batch_size": 64, "runs_uri": f"{bucket}/runs"},
        "compute": {"num_workers": 1, "cpus_per_worker": 1, "data_cpus": 1, "torch_threads": 1},
    }
    config_file = tmp_path / "secrets.json"  # the test's own input: the one file allowed to hold them
    config_file.write_text(json.dumps(config))
    root = tmp_path / "root"
    ray_dir = Path(tempfile.mkdtemp(prefix="vf-secrets-", dir="/tmp"))
    RAY_DIRS.append(ray_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PREFECT_"))}
    env.update(VAEFLOW_RAY_TMPDIR=str(ray_dir), PYTHONPATH=str(ROOT))  # AWS_*: the fake keys, the proxy
    overrides = [
        f"pipeline.root={bucket}/root",
        "pipeline.iwae_k=10",
        "pipeline.max_eval_rows=200",
        "generate.rows=100",
        'pipeline.embed_splits=["test"]',
    ]
    exe = Path(sys.executable).with_name("vaeflow")
    cmd = [str(exe), "run", "--root", str(root), "--config", str(config_file), "--date", "2026-03-02"]
    proc = subprocess.Popen(
        [*cmd, *overrides], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env
    )
    rc, output = finish(proc, 360)
    assert rc == 0, f"the nightly did not complete (rc {rc}):\n{output[-4000:]}"
    assert s3.fs().exists(f"{bucket}/root/embeddings/secrets/test/_delta_log"), output[-3000:]

    # The scan sees what Prefect stored: its database holds the run's parameters (the bucket is in them).
    stored = [p.read_bytes() for p in (root / "prefect").glob("prefect.db*")]
    assert any(bucket.removeprefix("s3://").encode() in data for data in stored), "no Prefect database"

    leaks = [f"run output: {s.decode()}" for s in SECRETS if s.decode() in output]
    scanned_tmp, found = _leaks_in_files(tmp_path_factory.getbasetemp(), skip={config_file})
    leaks += found
    scanned_ray = 0
    for d in RAY_DIRS:
        n, found = _leaks_in_files(d, skip=set())
        scanned_ray += n
        leaks += found
    scanned_s3, found = _leaks_in_s3(s3)
    leaks += found
    scenario.detail = (
        f"grepped the run's output, {scanned_tmp} files under the pytest temp root (Prefect DB included), "
        f"{scanned_ray} files in {len(RAY_DIRS)} Ray session dirs, {scanned_s3} S3 objects: "
        f"{len(leaks)} leaks"
    )
    assert not leaks, "fake AWS keys found:\n" + "\n".join(leaks[:50])
