"""Killed writers and S3 multipart uploads (scenario 14): none may be left behind, incomplete.

An incomplete multipart upload is invisible to listings but keeps its parts (and their cost) until
someone aborts it. Each of the project's S3 writers runs in a subprocess; the proxy holds every
request carrying "uploadId=" (UploadPart, CompleteMultipartUpload), so a writer that started a
multipart upload is stopped inside it, deterministically; then it is SIGKILLed and the write is run
again to completion, as an operator or a retry would. Measured with pyarrow 26 / s3fs 2026.9:
pyarrow's native S3 output stream (FileSystem.from_uri, which vae_core.data.storage.arrow_filesystem
returns for reading s3:// without storage_options) opens a multipart upload as soon as a file is
opened, whatever its size; plain s3fs writes files of 50 MiB and more (open/write) or 100 MiB and
more (pipe_file) in parts. The Ray Train writer takes its filesystem from the trainer's own
RunConfig storage (`launch.storage_settings`), so the test follows what the trainer actually hands Ray Train.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from tests.faults._helpers import finish, python, wait_for
from tests.faults.conftest import S3, Outcome

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(600, method="signal")]

# Each writer is one project code path, given a target prefix (argv[1]) and a scratch dir (argv[2]).
WRITERS: dict[str, str] = {
    # What ray.train.report(checkpoint=...) does with the trainer's storage filesystem
    # (ray/train/v2/_internal/execution/storage.py: _upload_to_fs_path -> pyarrow.fs.copy_files).
    "Ray Train checkpoint upload (trainer storage_filesystem, pyarrow copy_files)": """
import sys, pyarrow.fs as pafs, torch
from vae_core.training.checkpoints import CheckpointMeta, save_checkpoint
from vae_core.config import VaeflowConfig
from vae_core.data.codecs.vector import VectorCodec
from vae_core.models.families import DataShape, build_model
from vae_core.distributed.launch import storage_settings
cfg = VaeflowConfig.model_validate({"model": {"hidden": [64], "latent_dim": 4}})
local, codec = sys.argv[2] + "/ckpt", VectorCodec("x", 32, "float32")
save_checkpoint(local, build_model(cfg.model, DataShape.of(codec)), cfg, codec, meta=CheckpointMeta(epoch=1))
storage = storage_settings(sys.argv[1], {})  # the RunConfig storage the trainer gives Ray Train
fs, path = storage["storage_filesystem"], storage["storage_path"]
pafs.copy_files(local, path + "/epoch_0001", destination_filesystem=fs)
print("WROTE", flush=True)
""",
    "data import (vae_core.data.importers.import_files -> pyarrow.parquet.write_table)": """
import sys, numpy as np, pyarrow as pa, pyarrow.parquet as pq
from vae_core.data.importers import import_files
src = sys.argv[2] + "/rows.parquet"
pq.write_table(pa.table({"a": np.arange(1000.0), "b": np.ones(1000)}), src)
import_files("parquet", [src], sys.argv[1], progress=lambda m: None)
print("WROTE", flush=True)
""",
    "save_checkpoint of a 64 MiB model (s3fs open/write)": """
import sys
from vae_core.training.checkpoints import CheckpointMeta, save_checkpoint
from vae_core.config import VaeflowConfig
from vae_core.data.codecs.vector import VectorCodec
from vae_core.models.families import DataShape, build_model
cfg = VaeflowConfig.model_validate({"model": {"hidden": [4096], "latent_dim": 4}})
codec = VectorCodec("x", 2048, "float32")  # 2 x 2048 x 4096 weights: about 64 MiB of float32
model = build_model(cfg.model, DataShape.of(codec))
save_checkpoint(sys.argv[1] + "/big", model, cfg, codec, meta=CheckpointMeta(epoch=1))
print("WROTE", flush=True)
""",
}


def _uploads(s3: S3, bucket: str) -> list[dict[str, Any]]:
    return s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])


@pytest.mark.scenario(14, "after a killed multipart write, no incomplete multipart upload is left behind")
def test_a_writer_killed_inside_a_multipart_upload_leaves_no_incomplete_upload(
    s3: S3, tmp_path: Path, scenario: Outcome
) -> None:
    import os

    env = dict(os.environ)  # AWS_ENDPOINT_URL: the proxy
    findings, left = [], {}
    for i, (writer, code) in enumerate(WRITERS.items()):
        bucket = s3.bucket()
        name = bucket.removeprefix("s3://")
        scratch = tmp_path / f"w{i}"
        scratch.mkdir()
        s3.proxy.hold_matching("uploadId=")
        proc = python(code, f"{bucket}/out", str(scratch), env=env)
        try:
            started = wait_for(
                lambda proc=proc, name=name: _uploads(s3, name) or proc.poll() is not None,
                60,
                f"{writer}: a multipart upload or the end of the write",
            )
            multipart = isinstance(started, list)
            if multipart:
                proc.send_signal(signal.SIGKILL)
        finally:
            rc, out = finish(proc, 30)
            s3.proxy.clear()
        if not multipart:
            assert rc == 0, f"{writer} failed:\n{out[-2000:]}"
            findings.append(f"{writer}: single PUT, no multipart upload")
            continue
        keys = sorted({u["Key"] for u in _uploads(s3, name)})
        # Recovery as an operator would do it: the same write again, to completion.
        rc, out = finish(python(code, f"{bucket}/out", str(scratch), env=env), 90)
        assert rc == 0 and "WROTE" in out, f"{writer}: the rerun failed:\n{out[-2000:]}"
        remaining = sorted({u["Key"] for u in _uploads(s3, name)})
        findings.append(
            f"{writer}: multipart upload open when killed ({', '.join(keys)}); after a rerun "
            f"{len(remaining)} incomplete upload(s) remain"
        )
        if remaining:
            left[writer] = remaining
    scenario.detail = "; ".join(findings)
    assert not left, "incomplete multipart uploads left behind by killed writers:\n" + "\n".join(
        f"  {w}: {keys}" for w, keys in left.items()
    )
