"""Training throughput: Ray Train (1 and 2 workers) fed >= 200k MNIST rows from S3 (moto on
127.0.0.1) against a plain PyTorch loop over the same rows in memory, measured in the same run.

Steady state = median samples/s of the epochs after the first (inside the training loop, validation
excluded). Epoch 1 streams the shards from S3 through Ray Data (its rate is recorded as
first_epoch_samples_per_s); with the default train.cache_mb each worker keeps its decoded rows, so
the steady epochs read memory (`data_from` says which, per epoch). Start-up = wall time of
train_on_ray() minus the time spent in epochs and validation, including starting the local Ray
cluster (each configuration gets a fresh one). The training loop also records how long it waited
for the next batch, which shows where the time goes.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from bench._results import write_result
from tests.servers import local_s3_server, make_bucket
from vae_core.config import VaeflowConfig
from vae_core.data.importers import ShardWriter, import_mnist
from vae_core.data.packaged import mnist_table
from vae_core.data.storage import arrow_filesystem
from vae_core.distributed.trainer import train_on_ray
from vae_core.models.families import DataShape, build_model
from vae_core.training.loop import fit

COPIES, EPOCHS, GLOBAL_BATCH = 4, 5, 128  # 4 x 60,000 = 240,000 training rows
ROUNDS = 3  # Ray runs per configuration, interleaved with the plain loop


def write_rows(root: str) -> int:
    base = mnist_table("train")
    writer = ShardWriter(f"{root}/train", rows_per_shard=10_000)
    for c in range(COPIES):
        ids = pa.array(np.arange(c * base.num_rows, (c + 1) * base.num_rows, dtype=np.int64))
        writer.add(base.set_column(0, "id", ids))
    writer.close()
    import_mnist(f"{root}/val", progress=lambda m: None)  # only its test/ split is used
    return COPIES * base.num_rows


def plain_loop(root: str, rows: int) -> dict:
    fs, path = arrow_filesystem(f"{root}/train")
    t0 = time.perf_counter()
    table = pq.read_table(path, filesystem=fs, columns=["image"])
    x = (
        torch.from_numpy(table.column("image").combine_chunks().flatten().to_numpy().reshape(-1, 784)).float()
        / 255
    )
    load_s = time.perf_counter() - t0
    torch.manual_seed(0)
    model = build_model(VaeflowConfig().model, DataShape(784))
    history = fit(
        model, lambda e: (x[i : i + GLOBAL_BATCH] for i in range(0, rows, GLOBAL_BATCH)), epochs=EPOCHS
    )
    rates = [h.samples_per_s for h in history[1:]]
    return {"samples_per_s": statistics.median(rates), "load_seconds": load_s, "epoch_rates": rates}


def ray_run(
    root: str, workers: int, shared_memory_allreduce: bool = True, tag: str = "", cache_mb: int | None = None
) -> dict:
    train = {} if cache_mb is None else {"cache_mb": cache_mb}  # None: the default cache
    cfg = VaeflowConfig.model_validate(
        {
            "name": f"throughput-{workers}w{tag}" + ("" if shared_memory_allreduce else "-gloo"),
            "data": {"uri": root, "vector_column": "image", "scale": 255},
            "train": {
                "epochs": EPOCHS,
                "batch_size": GLOBAL_BATCH // workers,
                "runs_uri": f"{root}/runs",
                "val_split": "val/test",
                **train,
            },
            # Both paths get the machine's 2 cores for compute: 1 worker x 2 threads, or 2 x 1.
            "compute": {
                "num_workers": workers,
                "cpus_per_worker": 1,
                "data_cpus": 1,
                "torch_threads": 2 // workers,
                "shared_memory_allreduce": shared_memory_allreduce,
            },
        }
    )
    t0 = time.perf_counter()
    result = train_on_ray(cfg, progress=lambda m: None)  # starts a local cluster sized for this plan
    wall = time.perf_counter() - t0
    ray.shutdown()
    h = result.history
    in_epochs = sum(r.seconds + (r.val_seconds or 0.0) for r in h)
    rates = [r.samples_per_s for r in h[1:]]
    return {
        "samples_per_s": statistics.median(rates),
        "epoch_rates": rates,
        "first_epoch_samples_per_s": h[0].samples_per_s,  # streamed from S3 (and decoded) by Ray Data
        "data_from": [r.data_from for r in h],
        "startup_seconds": wall - in_epochs,
        "wall_seconds": wall,
        "data_wait_share": statistics.median(r.wait_seconds / r.seconds for r in h[1:]),
        "val_seconds": statistics.median(r.val_seconds or 0.0 for r in h),
    }


def _pooled(runs: list[dict]) -> dict:
    """Runs of one configuration as one: the median over all their steady epochs, each run kept."""
    rates = [r for run in runs for r in run["epoch_rates"]]
    return {"samples_per_s": statistics.median(rates), "epoch_rates": rates, "runs": runs}


def main() -> None:
    with local_s3_server(separate_process=True):
        root = f"{make_bucket('bench')}/throughput"
        rows = write_rows(root)
        # This machine's speed drifts by 20-30% over minutes, so the configurations take turns: the
        # plain loop before, between and after ROUNDS rounds of Ray 1 worker and Ray 2 workers, and
        # each value is the median over all steady epochs of its configuration.
        plains, ones, twos = [plain_loop(root, rows)], [], []
        for r in range(ROUNDS):
            ones.append(ray_run(root, 1, tag=f"r{r}"))
            print(f"  ray 1 worker: {ones[-1]['samples_per_s']:,.0f} samples/s", flush=True)
            plains.append(plain_loop(root, rows))
            twos.append(ray_run(root, 2, tag=f"r{r}"))
            print(f"  ray 2 workers: {twos[-1]['samples_per_s']:,.0f} samples/s", flush=True)
            plains.append(plain_loop(root, rows))
        gloo = ray_run(root, 2, shared_memory_allreduce=False)  # the DDP attempt before allreduce.py
        print(f"  ray 2 workers, gloo all-reduce: {gloo['samples_per_s']:,.0f} samples/s", flush=True)
    plain, one, two = _pooled(plains), _pooled(ones), _pooled(twos)
    epochs = len(plain["epoch_rates"])
    print(f"  plain loop: {plain['samples_per_s']:,.0f} samples/s (median of {epochs} epochs)")
    setting = {
        "rows": rows,
        "epochs": EPOCHS,
        "global_batch": GLOBAL_BATCH,
        "model": "vae mlp 784-400-20",
        "storage": "S3 (moto server process on 127.0.0.1)",
        "steady": "median samples/s of epochs 2..N (validation excluded) over all runs of a "
        f"configuration: {ROUNDS} Ray runs each, interleaved with {2 * ROUNDS + 1} plain runs",
        "cache_mb": VaeflowConfig().train.cache_mb,
    }
    for name, run, workers, target in (
        ("train_throughput", one, 1, 0.9),
        ("train_throughput_ddp", two, 2, 0.8),
    ):
        write_result(
            name,
            value=run["samples_per_s"] / plain["samples_per_s"],
            unit=f"ratio: Ray Train {workers} worker(s) steady samples/s / plain in-memory loop samples/s",
            target=target,
            better="higher",
            baseline=plain["samples_per_s"],
            setting={**setting, "workers": workers},
            plain=plain,
            ray=run,
            **(
                {"ray_gloo_allreduce": gloo, "gloo_ratio": gloo["samples_per_s"] / plain["samples_per_s"]}
                if workers == 2
                else {}
            ),
        )


if __name__ == "__main__":
    main()
