"""Embed and generate, S3 -> S3: the Ray Data jobs (1 and 2 workers) against a plain single-process
pipeline over the same shards (pyarrow read -> torch forward -> pyarrow write), measured in one run.

Writes bench/results/{embed,generate}_throughput.json (2 workers), ..._throughput_1w.json (1 worker)
and ..._memory.json. Throughput is end-to-end rows/s of the job call (actor start and model load
included, `ray.init` excluded), the median of 3 rounds of plain / 1 worker / 2 workers, interleaved.
Memory is measured in separate runs of the command a user runs (`vaeflow embed|generate --workers 2`
in its own process, 1M and 5M rows): the peak of the summed PSS of that process and every process it
started (Ray's GCS, raylet, workers; a page shared by n processes counts 1/n in each) plus the growth
of /dev/shm's used bytes (Ray's object store), sampled every 0.5 s; RSS and USS sums are recorded
beside it. The S3 server runs as a separate process, not counted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from bench._results import write_result
from tests.servers import local_s3_server, make_bucket
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
from vae_core.training.checkpoints import CheckpointMeta, load_checkpoint, save_checkpoint

# VAEFLOW_BENCH_SCALE=0.01 gives a quick smoke run of the same code at 10k / 50k rows.
SCALE = float(os.environ.get("VAEFLOW_BENCH_SCALE", "1"))
ROWS, BIG_ROWS = int(1_000_000 * SCALE), int(5_000_000 * SCALE)
SHARD_ROWS, CHUNK = 50_000, 4096
REPEATS = 3  # rounds of plain / 1 worker / 2 workers
THREADS = 2  # the machine's cores: the plain pipeline and each Ray configuration get both


class PeakMemory:
    """Peaks of the memory of process `root` (default: this one) and its descendants (minus `exclude`),
    sampled every 0.5 s:
    summed RSS (counts shared pages once per process that maps them: Ray's object store, torch's
    libraries), summed PSS (each shared page split among the processes mapping it) and USS (pages of
    one process only), and the growth of /dev/shm's used bytes since the start (Ray's object store
    lives there)."""

    def __init__(self, exclude: set[int], root: int | None = None) -> None:
        self.exclude, self.root, self._stop = exclude, root, threading.Event()
        self.peak = {"rss": 0, "pss": 0, "uss": 0, "shm": 0, "pss_plus_shm": 0, "uss_plus_shm": 0}
        self._shm0 = self._shm_used()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _shm_used() -> int:
        st = os.statvfs("/dev/shm")
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def _sample(self) -> dict[str, int]:
        try:
            me = psutil.Process(self.root)
        except psutil.Error:  # the measured process has exited
            return {k: 0 for k in self.peak}
        total = {"rss": 0, "pss": 0, "uss": 0}
        for p in [me, *me.children(recursive=True)]:
            if p.pid in self.exclude:
                continue
            try:
                m = p.memory_full_info()
            except psutil.Error:
                continue
            total["rss"], total["pss"], total["uss"] = (
                total["rss"] + m.rss,
                total["pss"] + m.pss,
                total["uss"] + m.uss,
            )
        shm = max(0, self._shm_used() - self._shm0)
        return {**total, "shm": shm, "pss_plus_shm": total["pss"] + shm, "uss_plus_shm": total["uss"] + shm}

    def _run(self) -> None:
        while not self._stop.is_set():
            for k, v in self._sample().items():
                self.peak[k] = max(self.peak[k], v)
            self._stop.wait(0.5)

    def mb(self) -> dict[str, float]:
        return {k: v / 2**20 for k, v in self.peak.items()}

    def __enter__(self) -> PeakMemory:
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
    with PeakMemory({moto_pid}) as mem:
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
    return _plain_result(rows, wall, times, mem.mb())


def _plain_result(rows: int, wall: float, times: dict[str, float], peak_mb: dict[str, float]) -> dict:
    return {
        "rows": rows,
        "seconds": wall,
        "rows_per_s": rows / wall,
        "stage_seconds": times,
        "peak_memory_mb": peak_mb,
    }


def plain_generate(model_uri: str, rows: int, out: str, moto_pid: int) -> dict:
    """One process: for each 10,000-row block, z ~ N(0, I) -> decode -> uint8 pixels -> pyarrow write."""
    torch.set_num_threads(THREADS)
    model = load_checkpoint(model_uri).model.eval()
    times = {"compute": 0.0, "write": 0.0}
    block_rows = 10_000
    with PeakMemory({moto_pid}) as mem:
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
    return _plain_result(rows, wall, times, mem.mb())


def ray_job(kind: str, workers: int, model_uri: str, source: str | int, out: str) -> dict:
    """One job on a fresh local cluster: 1 worker x 2 threads, or 2 workers x 1 thread."""
    if ray.is_initialized():
        ray.shutdown()
    compute = ComputeConfig(num_workers=workers, cpus_per_worker=THREADS // workers)
    ensure_ray(compute)
    t0 = time.perf_counter()
    if kind == "embed":
        published = embed_corpus(model_uri, str(source), out, EmbedConfig(), compute, progress=quiet)
    else:
        job = GenerateConfig(rows=int(source))
        published = generate_rows(model_uri, out, job, compute, progress=quiet)
    wall = time.perf_counter() - t0
    ray.shutdown()
    return {"rows": published.rows, "seconds": wall, "rows_per_s": published.rows / wall, "workers": workers}


def cli_memory(kind: str, model_uri: str, source: str | int, rows: int, out: str, moto_pid: int) -> dict:
    """The job as a user runs it, `vaeflow embed|generate --workers 2`, in its own process (which
    starts its own cluster): the peak memory of that process and every process it started. (This
    process holds the benchmark's own data and is not counted.)"""
    where = ["--input", str(source)] if kind == "embed" else ["--rows", str(source)]
    command = [str(Path(sys.executable).with_name("vaeflow")), kind, "--model", model_uri, *where]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [*command, "--output", out, "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    with PeakMemory({moto_pid}, root=proc.pid) as mem:
        output = proc.communicate()[0].decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"vaeflow {kind} exited {proc.returncode}:\n{output[-3000:]}")
    return {"rows": rows, "seconds": time.perf_counter() - t0, "peak_memory_mb": mem.mb()}


def _median(runs: list[dict]) -> dict:
    """The run with the median rate, with every run's rate beside it."""
    ranked = sorted(runs, key=lambda r: r["rows_per_s"])
    return {**ranked[len(ranked) // 2], "runs_rows_per_s": [r["rows_per_s"] for r in runs]}


def _throughput(kind: str, root: str, model_uri: str, source: str | int, moto_pid: int) -> dict[str, dict]:
    """REPEATS rounds of plain, Ray 1 worker and Ray 2 workers, interleaved (the machine's speed drifts),
    each configuration's median run."""
    plain_run = plain_embed if kind == "embed" else plain_generate
    runs: dict[str, list[dict]] = {"plain": [], "one": [], "two": []}
    for r in range(REPEATS):
        runs["plain"].append(plain_run(model_uri, source, f"{root}/out/plain-{kind}-{r}", moto_pid))
        runs["one"].append(ray_job(kind, 1, model_uri, source, f"{root}/out/{kind}-1w-{r}"))
        runs["two"].append(ray_job(kind, 2, model_uri, source, f"{root}/out/{kind}-2w-{r}"))
    return {k: _median(v) for k, v in runs.items()}


def _report(kind: str, runs: dict[str, dict], small: dict, big: dict, setting: dict) -> None:
    plain, one, two = runs["plain"], runs["one"], runs["two"]
    small_mb, big_mb = small["peak_memory_mb"], big["peak_memory_mb"]
    print(
        f"  {kind}: plain {plain['rows_per_s']:,.0f} rows/s; ray 1 worker {one['rows_per_s']:,.0f} "
        f"({one['rows_per_s'] / plain['rows_per_s']:.2f}x); 2 workers {two['rows_per_s']:,.0f} "
        f"({two['rows_per_s'] / plain['rows_per_s']:.2f}x); peak PSS + object store "
        f"{small_mb['pss_plus_shm']:,.0f} MB at {small['rows']:,} rows, {big_mb['pss_plus_shm']:,.0f} MB "
        f"at {big['rows']:,}",
        flush=True,
    )
    common = {"setting": setting, "baseline": plain["rows_per_s"], "plain": plain}
    # 2 workers against the 1.0; 1 worker against 0.9 for embed (issue 14), 0.8 for generate.
    for suffix, workers, ray_run, target in [
        ("", 2, two, 1.0),
        ("_1w", 1, one, 0.9 if kind == "embed" else 0.8),
    ]:
        write_result(
            f"{kind}_throughput{suffix}",
            value=ray_run["rows_per_s"] / plain["rows_per_s"],
            unit=f"ratio: Ray Data {kind} rows/s with {workers} worker{'s' * (workers > 1)} / plain "
            f"single-process pipeline rows/s (medians of {REPEATS} interleaved runs)",
            target=target,
            better="higher",
            **common,
            ray_1_worker=one,
            **({"ray_2_workers": two} if workers == 2 else {}),
        )
    peak_gib = big_mb["pss_plus_shm"] / 1024
    write_result(
        f"{kind}_memory",
        value=big_mb["pss_plus_shm"] / small_mb["pss_plus_shm"],
        unit=f"ratio: peak memory of `vaeflow {kind} --workers 2` (summed PSS of its processes plus "
        f"object-store pages in /dev/shm), {big['rows']:,} rows / {small['rows']:,} rows",
        target=1.25,
        better="lower",
        setting=setting,
        baseline=small_mb["pss_plus_shm"],
        peak_gib=peak_gib,
        target_peak_gib=2.5,
        peak_met=peak_gib <= 2.5,
        peak_memory_mb={str(small["rows"]): small_mb, str(big["rows"]): big_mb},
        seconds={str(small["rows"]): small["seconds"], str(big["rows"]): big["seconds"]},
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

        for kind, source, large in (("embed", small, big), ("generate", ROWS, BIG_ROWS)):
            runs = _throughput(kind, root, model_uri, source, moto_pid)
            mem_small = cli_memory(kind, model_uri, source, ROWS, f"{root}/out/{kind}-mem-small", moto_pid)
            mem_big = cli_memory(kind, model_uri, large, BIG_ROWS, f"{root}/out/{kind}-mem-big", moto_pid)
            _report(kind, runs, mem_small, mem_big, setting)


if __name__ == "__main__":
    main()
