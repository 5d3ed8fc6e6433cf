"""Credentials given only as storage_options (none in the environment) carry a whole run against the
moto S3 server: train -> embed -> generate -> report, and the secret lands in no file written.

The run is a subprocess whose environment holds no AWS variable at all (no keys, no endpoint, no
profile, HOME without ~/.aws) and which starts its own Ray cluster, so Ray workers and actors can
reach S3 only through the options the job passes them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs

from tests.integration.conftest import make_bucket

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(420)]

KEY, SECRET = "AKIAOPTIONSONLY", "options-only-secret-7d1e2c"
DIM = 16

RUN = """
import json, sys
from vae_core.config import GenerateConfig, VaeflowConfig
from vae_core.distributed.embed import embed_corpus
from vae_core.distributed.generate import generate_rows
from vae_core.distributed.trainer import train_on_ray
from vae_core.reports.report import write_report

bucket, endpoint, key, secret = sys.argv[1:5]
client = {"endpoint_url": endpoint, "region_name": "us-east-1"}
options = {"key": key, "secret": secret, "client_kwargs": client}
cfg = VaeflowConfig.model_validate({
    "name": "opts",
    "data": {"uri": f"{bucket}/data", "vector_column": "x", "storage_options": options},
    "model": {"family": "vae", "hidden": [32], "latent_dim": 4, "likelihood": "bernoulli"},
    "train": {"epochs": 1, "batch_size": 64, "runs_uri": f"{bucket}/runs"},
    "compute": {"num_workers": 1, "cpus_per_worker": 1, "data_cpus": 1, "torch_threads": 1},
})
result = train_on_ray(cfg, run_name="opts")
model = result.best_checkpoint_uri
emb = embed_corpus(model, f"{bucket}/data/test", f"{bucket}/emb", storage_options=options)
gen = generate_rows(model, f"{bucket}/samples", GenerateConfig(rows=500), storage_options=options)
rep = write_report(model, f"{bucket}/report", f"{bucket}/data", iwae_k=10, max_eval_rows=200,
                   storage_options=options)
print("RESULT", json.dumps({"model": model, "embedded": emb.rows, "generated": gen.rows,
                            "report": rep.html_uri}), flush=True)
"""


def _rows(n: int, start: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = (rng.random((n, DIM)) < 0.3).astype(np.float32)
    return pa.table(
        {
            "id": pa.array(np.arange(start, start + n), pa.int64()),
            "x": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), DIM),
        }
    )


def test_credentials_only_in_storage_options_carry_a_whole_run_and_are_never_written(s3_server, tmp_path):
    bucket = make_bucket()
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    for split, table in (("train", _rows(1_000, 0, 0)), ("test", _rows(300, 10_000, 1))):
        with fs.open(f"{bucket}/data/{split}/part-0.parquet", "wb") as f:
            pq.write_table(table, f)

    ray_dir = Path(tempfile.mkdtemp(prefix="vf-opts-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}
    env.update(HOME=str(tmp_path), AWS_EC2_METADATA_DISABLED="true", VAEFLOW_RAY_TMPDIR=str(ray_dir))
    proc = subprocess.run(
        [sys.executable, "-c", RUN, bucket, s3_server, KEY, SECRET],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    assert '"embedded": 300' in output and '"generated": 500' in output

    # The secret and the key id: in no object the run wrote, in no Ray session file, in no output.
    fs.invalidate_cache()
    written = [p for p in fs.find(bucket) if "/data/" not in p]
    assert any(p.endswith("config.json") for p in written) and any("_delta_log" in p for p in written)
    leaks = [p for p in written if SECRET.encode() in fs.cat_file(p) or KEY.encode() in fs.cat_file(p)]
    assert not leaks, f"credentials written into {leaks}"
    for path in ray_dir.rglob("*"):
        if path.is_file() and not path.is_socket():
            data = path.read_bytes()
            assert SECRET.encode() not in data and KEY.encode() not in data, f"credentials in {path}"
    assert SECRET not in output and KEY not in output
