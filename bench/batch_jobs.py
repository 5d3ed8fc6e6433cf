"""Embed and generate, S3 -> S3: the Ray Data jobs (1 and 2 workers) against a plain single-process
pipeline over the same shards (pyarrow read -> torch forward -> pyarrow write), measured in one run.

Writes bench/results/embed_throughput.json, embed_memory.json, generate_throughput.json and
generate_memory.json. Throughput is end-to-end rows/s of the job call (actor start and model load
included, `ray.init` excluded). Memory is the peak of the summed RSS of the driver and every process
it started (Ray's GCS, raylet, workers), sampled every 0.2 s; the S3 server runs as a separate
process and is not counted. Memory is measured with 2 workers at 1M and at 5M rows.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from bench._results import write_result
from vae_core.config import ComputeConfig, EmbedConfig, GenerateConfig, VaeflowConfig
from vae_core.data.codecs.vector import VectorCodec
from vae_core.data.dataset import encode_schema, list_shards
from vae_core.data.importers import ShardWriter
from vae_core.data.packaged import mnist_table
from vae_core.data.storage import arrow_filesystem
from vae_core.distributed.cluster import ensure_ray
from vae_core.distributed.embed import embed_corpus
from vae_core.distributed.generate import block_seed, generate_rows
from vae_core.models.families import DataShape, build_model
from vae_core.progress import quiet
from vae_core.testing import local_s3_server, make_bucket
from vae_core.training.checkpoints import CheckpointMeta, load_checkpoint, save_checkpoint

# VAEFLOW_BENCH_SCALE=0.01 gives a quick smoke run of the same code at 10k / 50k rows.
SCALE = float(os.environ.get("VAEFLOW_BENCH_SCALE", "1"))
ROWS, BIG_ROWS = int(1_000_000 * SCALE), int(5_000_000 * SCALE)
SHARD_ROWS, CHUNK = 50_000, 4096
THREADS = 2  # the machine's cores: the plain pipeline and each Ray configuration get both


class PeakRSS:
    """Peak of the summed RSS of this process and its descendants (minus `exclude`)."""

    def __init__(self, exclude: set[int]) -> None:
        self.exclude, self.peak, self._stop = exclude, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _total(self) -> int:
        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            if p.pid in self.exclude:
                continue
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._total())
            self._stop.wait(0.2)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def write_corpus(root: str) -> pa.Schema:
    """ROWS MNIST-like rows under root/rows/a and BIG_ROWS - ROWS more under root/rows/b."""
    base = mnist_table("train")
    written = 0
    for part, target in (("a", ROWS), ("b", BIG_ROWS)):
        writer = ShardWriter(f"{root}/rows/{part}", rows_per_shard=SHARD_ROWS)
        while written < target:
            n = min(base.num_rows, target - written)
            ids = pa.array(np.arange(written, written + n, dtype=np.int64))
            writer.add(base.slice(0, n).set_column(0, "id", ids))
            written += n
        writer.close()
    return base.schema


def save_model(uri: str, schema: pa.Schema) -> VaeflowConfig:
    cfg = VaeflowConfig.model_validate(
        {
            "name": "bench-mnist",
            "data": {"uri": "unused", "vector_column": "image", "image_shape": [1, 28, 28], "scale": 255},
            "model": {"family": "vae", "hidden": [400], "latent_dim": 20},
        }
    )
    codec = VectorCodec("image", 784, str(schema.field("image").type.value_type), 255.0, (1, 28, 28))
    torch.manual_seed(0)
    model = build_model(cfg.model, DataShape.of(codec))
    save_checkpoint(uri, model, cfg, codec, meta=CheckpointMeta(data_schema=encode_schema(schema)))
    return cfg


def _write(table: pa.Table, uri: str) -> None:
    fs, path = arrow_filesystem(uri)
    pq.write_table(table, path, filesystem=fs)


def plain_embed(model_uri: str, input_uri: str, out: str, moto_pid: int) -> dict:
    """One process: pyarrow read -> torch encode (2 threads) -> pyarrow write, shard by shard."""
    torch.set_num_threads(THREADS)
    ckpt = load_checkpoint(model_uri)
    model = ckpt.model.eval()
    shards = list_shards(input_uri)
    times = {"read": 0.0, "compute": 0.0, "write": 0.0}
    rows = 0
    with PeakRSS({moto_pid}) as mem:
        t0 = time.perf_counter()
        for i, shard in enumerate(shards):
            t = time.perf_counter()
            fs, path = arrow_filesystem(shard)
            table = pq.read_table(path, filesystem=fs, columns=["id", "image"])
            x = torch.from_numpy(ckpt.codec.encode(table, shard))
            times["read"] += time.perf_counter() - t
            t = time.perf_counter()
            with torch.no_grad():
                mu = torch.cat([model.encode(x[j : j + CHUNK]).mean for j in range(0, len(x), CHUNK)])
            times["compute"] += time.perf_counter() - t
            t = time.perf_counter()
            z = pa.FixedSizeListArray.from_arrays(pa.array(mu.numpy().reshape(-1)), mu.shape[1])
            _write(pa.table({"id": table.column("id"), "z_mean": z}), f"{out}/part-{i:05d}.parquet")
            times["write"] += time.perf_counter() - t
            rows += table.num_rows
        wall = time.perf_counter() - t0
    return {
        "rows": rows,
        "seconds": wall,
        "rows_per_s": rows / wall,
        "stage_seconds": times,
        "peak_rss_mb": mem.peak / 2**20,
    }


def plain_generate(model_uri: str, rows: int, out: str, moto_pid: int) -> dict:
    """One process: for each 10,000-row block, z ~ N(0, I) -> decode -> uint8 pixels -> pyarrow write."""
    torch.set_num_threads(THREADS)
    model = load_checkpoint(model_uri).model.eval()
    times = {"compute": 0.0, "write": 0.0}
    block_rows = 10_000
    with PeakRSS({moto_pid}) as mem:
        t0 = time.perf_counter()
        for b, start in enumerate(range(0, rows, block_rows)):
            t = time.perf_counter()
            n = min(block_rows, rows - start)
            gen = torch.Generator().manual_seed(block_seed(0, b))
            with torch.no_grad():
                x = torch.cat(
                    [
                        model.likelihood.mean(
                            model.decode(torch.randn((min(CHUNK, n - j), 20), generator=gen))
                        )
                        for j in range(0, n, CHUNK)
                    ]
                )
            pixels = np.clip(np.rint(x.numpy() * 255), 0, 255).astype(np.uint8)
            times["compute"] += time.perf_counter() - t
            t = time.perf_counter()
            image = pa.FixedSizeListArray.from_arrays(pa.array(pixels.reshape(-1)), 784)
            ids = pa.array(np.arange(start, start + n, dtype=np.int64))
            _write(pa.table({"id": ids, "image": image}), f"{out}/part-{b:06d}.parquet")
            times["write"] += time.perf_counter() - t
        wall = time.perf_counter() - t0
    return {
        "rows": rows,
        "seconds": wall,
        "rows_per_s": rows / wall,
        "stage_seconds": times,
        "peak_rss_mb": mem.peak / 2**20,
    }


def ray_job(kind: str, workers: int, model_uri: str, source: str | int, out: str, moto_pid: int) -> dict:
    """One job on a fresh local cluster: 1 worker x 2 threads, or 2 workers x 1 thread."""
    if ray.is_initialized():
        ray.shutdown()
    compute = ComputeConfig(num_workers=workers, cpus_per_worker=THREADS // workers)
    ensure_ray(compute)
    with PeakRSS({moto_pid}) as mem:
        t0 = time.perf_counter()
        if kind == "embed":
            published = embed_corpus(model_uri, str(source), out, EmbedConfig(), compute, progress=quiet)
        else:
            job = GenerateConfig(rows=int(source))
            published = generate_rows(model_uri, out, job, compute, progress=quiet)
        wall = time.perf_counter() - t0
    ray.shutdown()
    return {
        "rows": published.rows,
        "seconds": wall,
        "rows_per_s": published.rows / wall,
        "workers": workers,
        "peak_rss_mb": mem.peak / 2**20,
    }


def _report(kind: str, plain: dict, one: dict, two: dict, big: dict, setting: dict) -> None:
    print(
        f"  {kind}: plain {plain['rows_per_s']:,.0f} rows/s; ray 1 worker {one['rows_per_s']:,.0f} "
        f"({one['rows_per_s'] / plain['rows_per_s']:.2f}x); 2 workers {two['rows_per_s']:,.0f} "
        f"({two['rows_per_s'] / plain['rows_per_s']:.2f}x); peak RSS {two['peak_rss_mb']:,.0f} MB at "
        f"{two['rows']:,} rows, {big['peak_rss_mb']:,.0f} MB at {big['rows']:,}",
        flush=True,
    )
    write_result(
        f"{kind}_throughput",
        value=two["rows_per_s"] / plain["rows_per_s"],
        unit=f"ratio: Ray Data {kind} rows/s with 2 workers / plain single-process pipeline rows/s",
        target=1.0,
        better="higher",
        baseline=plain["rows_per_s"],
        setting=setting,
        ratio_1_worker=one["rows_per_s"] / plain["rows_per_s"],
        target_1_worker=0.8,
        plain=plain,
        ray_1_worker=one,
        ray_2_workers=two,
    )
    write_result(
        f"{kind}_memory",
        value=big["peak_rss_mb"] / two["peak_rss_mb"],
        unit=f"ratio: peak RSS of the {kind} job (2 workers), {big['rows']:,} rows / {two['rows']:,} rows",
        target=1.25,
        better="lower",
        baseline=two["peak_rss_mb"],
        setting=setting,
        peak_rss_mb={str(two["rows"]): two["peak_rss_mb"], str(big["rows"]): big["peak_rss_mb"]},
        seconds={str(two["rows"]): two["seconds"], str(big["rows"]): big["seconds"]},
    )


def main() -> None:
    with local_s3_server(separate_process=True):
        moto_pid = next((c.pid for c in psutil.Process().children() if "moto" in " ".join(c.cmdline())), -1)
        root = make_bucket("bench")
        t0 = time.perf_counter()
        schema = write_corpus(root)
        print(f"  wrote {BIG_ROWS:,} rows to S3 in {time.perf_counter() - t0:.0f}s", flush=True)
        model_uri = f"{root}/model"
        save_model(model_uri, schema)
        small, big = f"{root}/rows/a", f"{root}/rows"
        setting = {
            "rows": ROWS,
            "big_rows": BIG_ROWS,
            "shard_rows": SHARD_ROWS,
            "model": "vae mlp 784-400-20",
            "data": "MNIST train images repeated, id + label + 784 x uint8",
            "storage": "S3 (moto_server process on 127.0.0.1)",
            "workers": [1, 2],
            "threads": "plain: 2; ray: 1 worker x 2 threads, 2 workers x 1 thread",
            "machine": f"{os.cpu_count()} cores",
        }

        plain = plain_embed(model_uri, small, f"{root}/out/plain-embed", moto_pid)
        one = ray_job("embed", 1, model_uri, small, f"{root}/out/embed-1w", moto_pid)
        two = ray_job("embed", 2, model_uri, small, f"{root}/out/embed-2w", moto_pid)
        large = ray_job("embed", 2, model_uri, big, f"{root}/out/embed-big", moto_pid)
        _report("embed", plain, one, two, large, setting)

        plain = plain_generate(model_uri, ROWS, f"{root}/out/plain-gen", moto_pid)
        one = ray_job("generate", 1, model_uri, ROWS, f"{root}/out/gen-1w", moto_pid)
        two = ray_job("generate", 2, model_uri, ROWS, f"{root}/out/gen-2w", moto_pid)
        large = ray_job("generate", 2, model_uri, BIG_ROWS, f"{root}/out/gen-big", moto_pid)
        _report("generate", plain, one, two, large, setting)


if __name__ == "__main__":
    main()
