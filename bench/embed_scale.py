"""Embed a corpus of 50M rows, S3 -> S3: the driver does not grow with rows, the job stays in memory.

The corpus: BIG_ROWS narrow rows (an id and 16 float32 features), SHARD_ROWS per Parquet shard, made
here on a moto S3 server in its own process; a small VAE (16-64-8). Measured in one run:
  - throughput: `vaeflow embed --workers 2` (the command a user runs, its own process and local Ray
    cluster) over all BIG_ROWS rows, end to end, against the plain single-process pipeline over the
    same shards (pyarrow read -> torch forward, 2 threads -> pyarrow write), ROUNDS runs each taking
    turns; value: the ratio of the median rows/s, target >= 1.0;
  - the driver: the peak USS of the `vaeflow embed` process alone (not its Ray processes) at
    BIG_ROWS and at SMALL_ROWS (the first shards), target ratio <= 1.1: nothing on the driver grows
    with the rows (the ids are checked on the cluster: distributed/ids.py);
  - the whole job: the peak of the summed PSS of that process and everything it started plus the
    object store's pages in /dev/shm (bench.batch_jobs.PeakMemory), target <= 2.5 GiB.
VAEFLOW_BENCH_SCALE scales the rows (0.01: a smoke run).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from bench._results import write_result
from bench.batch_jobs import PeakMemory
from tests.servers import local_s3_server, make_bucket
from vae_core.config import VaeflowConfig
from vae_core.data.codecs.vector import VectorCodec
from vae_core.data.dataset import list_shards
from vae_core.data.storage import arrow_filesystem
from vae_core.models.families import DataShape, build_model
from vae_core.training.checkpoints import CheckpointMeta, load_checkpoint, save_checkpoint

SCALE = float(os.environ.get("VAEFLOW_BENCH_SCALE", "1"))
BIG_ROWS, SMALL_ROWS = int(50_000_000 * SCALE), int(5_000_000 * SCALE)
SHARD_ROWS, FEATURES, CHUNK, THREADS = max(10_000, int(1_000_000 * SCALE)), 16, 4096, 2
VAEFLOW = str(Path(sys.executable).with_name("vaeflow"))
ROUNDS = 3  # runs of the plain pipeline and of `vaeflow embed` over the big corpus, taking turns


def write_corpus(folder: str) -> None:
    """BIG_ROWS rows in shards of SHARD_ROWS: ids 0.. in order, features from one seeded block."""
    block = np.random.default_rng(0).normal(size=SHARD_ROWS * FEATURES).astype(np.float32)
    x = pa.FixedSizeListArray.from_arrays(pa.array(block), FEATURES)
    for k in range(BIG_ROWS // SHARD_ROWS):
        ids = pa.array(np.arange(k * SHARD_ROWS, (k + 1) * SHARD_ROWS, dtype=np.int64))
        fs, path = arrow_filesystem(f"{folder}/part-{k:05d}.parquet")
        pq.write_table(pa.table({"id": ids, "x": x}), path, filesystem=fs)


def save_model(uri: str) -> None:
    cfg = VaeflowConfig.model_validate(
        {"name": "scale", "data": {"uri": "unused", "vector_column": "x"},
         "model": {"family": "vae", "hidden": [64], "latent_dim": 8}}
    )  # fmt: skip
    codec = VectorCodec("x", FEATURES, "float32")
    torch.manual_seed(0)
    save_checkpoint(
        uri, build_model(cfg.model, DataShape.of(codec)), cfg, codec, meta=CheckpointMeta(epoch=1)
    )


def plain_embed(model_uri: str, shards: list[str], out: str) -> dict:
    """One process, shard by shard: pyarrow read -> torch encode (2 threads) -> pyarrow write."""
    torch.set_num_threads(THREADS)
    ckpt = load_checkpoint(model_uri)
    model, rows = ckpt.model.eval(), 0
    t0 = time.perf_counter()
    for i, shard in enumerate(shards):
        fs, path = arrow_filesystem(shard)
        table = pq.read_table(path, filesystem=fs)
        x = torch.from_numpy(ckpt.codec.encode(table, shard))
        with torch.no_grad():
            mu = torch.cat([model.encode(x[j : j + CHUNK]).mean for j in range(0, len(x), CHUNK)])
        z = pa.FixedSizeListArray.from_arrays(pa.array(mu.numpy().reshape(-1)), mu.shape[1])
        fs, path = arrow_filesystem(f"{out}/part-{i:05d}.parquet")
        pq.write_table(pa.table({"id": table.column("id"), "z_mean": z}), path, filesystem=fs)
        rows += table.num_rows
    seconds = time.perf_counter() - t0
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}


class DriverUss:
    """Peak USS of one process alone, sampled every 0.5 s."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, psutil.Process(self.pid).memory_full_info().uss)
            except psutil.Error:
                return
            self._stop.wait(0.5)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**20


def cli_embed(model_uri: str, corpus: str, out: str, moto_pid: int) -> dict:
    """`vaeflow embed --workers 2` in its own process: rows/s, its driver's peak USS, the job's peak."""
    argv = [VAEFLOW, "embed", "--model", model_uri, "--input", corpus, "--output", out, "--workers", "2"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    driver = DriverUss(proc.pid)
    with PeakMemory({moto_pid}, root=proc.pid) as job:
        output = proc.communicate()[0].decode(errors="replace")
    seconds = time.perf_counter() - t0
    driver_mb = driver.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"vaeflow embed exited {proc.returncode}:\n{output[-3000:]}")
    print(f"    {output.strip().splitlines()[-1]}", flush=True)
    rows = int(out.rsplit("-", 1)[-1])
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "driver_uss_mb": driver_mb,
            "job_peak_mb": job.mb()}  # fmt: skip


def main() -> None:
    with local_s3_server(separate_process=True):
        moto_pid = next((c.pid for c in psutil.Process().children() if "moto" in " ".join(c.cmdline())), -1)
        root = make_bucket("scale")
        t0 = time.perf_counter()
        write_corpus(f"{root}/big")
        shards = list_shards(f"{root}/big")
        for shard in shards[: SMALL_ROWS // SHARD_ROWS]:  # the small corpus: its first shards
            fs, _ = arrow_filesystem(shard)
            fs.copy_file(shard.removeprefix("s3://"), shard.replace("/big/", "/small/").removeprefix("s3://"))
        print(f"  wrote {BIG_ROWS:,} rows to S3 in {time.perf_counter() - t0:.0f}s", flush=True)
        model = f"{root}/model"
        save_model(model)
        small = cli_embed(model, f"{root}/small", f"{root}/out/small-{SMALL_ROWS}", moto_pid)
        plains, bigs = [], []
        for r in range(ROUNDS):  # interleaved: this machine's speed drifts over minutes
            plains.append(plain_embed(model, shards, f"{root}/out/plain-{r}"))
            print(f"  plain: {plains[-1]['rows_per_s']:,.0f} rows/s", flush=True)
            bigs.append(cli_embed(model, f"{root}/big", f"{root}/out/big-{r}-{BIG_ROWS}", moto_pid))
            print(f"  vaeflow embed --workers 2: {bigs[-1]['rows_per_s']:,.0f} rows/s", flush=True)
            fs, path = arrow_filesystem(f"{root}/out")  # this benchmark's outputs: moto holds them in memory
            fs.delete_dir_contents(path)
    plain = {"rows_per_s": statistics.median(p["rows_per_s"] for p in plains), "runs": plains}
    big = {"rows_per_s": statistics.median(b["rows_per_s"] for b in bigs), "runs": bigs}
    ratio = big["rows_per_s"] / plain["rows_per_s"]
    # Memory: the largest of the big runs against the small run.
    driver_ratio = max(b["driver_uss_mb"] for b in bigs) / small["driver_uss_mb"]
    peak_gib = max(b["job_peak_mb"]["pss_plus_shm"] for b in bigs) / 1024
    checks = {"rows_per_s_at_least_plain": ratio >= 1.0, "driver_uss_ratio_at_most_1.1": driver_ratio <= 1.1,
              "job_pss_at_most_2.5_gib": peak_gib <= 2.5}  # fmt: skip
    write_result(
        "embed_scale",
        ratio,
        f"ratio: `vaeflow embed --workers 2` rows/s over {BIG_ROWS:,} rows S3 -> S3 / the plain "
        "single-process pipeline's rows/s",
        1.0,
        "higher",
        {"rows": BIG_ROWS, "small_rows": SMALL_ROWS, "shard_rows": SHARD_ROWS, "features": FEATURES,
         "model": "vae mlp 16-64-8", "workers": 2, "store": "moto S3 (own process)",
         "rounds": f"median of {ROUNDS} runs each, plain and vaeflow taking turns"},
        baseline=plain["rows_per_s"],
        checks=checks,
        all_met=all(checks.values()),
        driver_uss_ratio=driver_ratio,
        job_peak_gib=peak_gib,
        plain=plain,
        vaeflow={"big": big, "small": small},
    )  # fmt: skip


if __name__ == "__main__":
    main()
