"""The training data path without a model: rows/s that Ray delivers as torch tensors to a training
worker (Ray Data read from S3 -> the codec in the collate step -> (B, 784) float32 batches), against a
single process reading the same files with pyarrow into tensors, measured in the same run.

Both stream every pass from S3 (moto on 127.0.0.1, its own process); rates are medians of 3 passes
after a warm-up pass. The Ray side is `vae_core.distributed.trainer.feed_rate`: a Ray Train run with
the product's datasets and collate step whose workers only count what they receive.
"""

from __future__ import annotations

import statistics
import time

import pyarrow.parquet as pq
import ray
import torch

from bench._results import write_result
from bench.train_throughput import GLOBAL_BATCH, write_rows
from tests.servers import local_s3_server, make_bucket
from vae_core.config import VaeflowConfig
from vae_core.data.codecs.vector import VectorCodec
from vae_core.data.dataset import list_shards
from vae_core.data.storage import arrow_filesystem
from vae_core.distributed.trainer import feed_rate

PASSES = 4  # the first is a warm-up


def plain_feed(root: str) -> list[dict]:
    """One process: each shard read with pyarrow, encoded by the same codec, as float32 tensors."""
    codec = VectorCodec("image", 784, "uint8", 255.0, (1, 28, 28))
    shards = list_shards(f"{root}/train")
    passes = []
    for _ in range(PASSES):
        t0, rows, values, stored = time.perf_counter(), 0, 0, 0
        for shard in shards:
            fs, path = arrow_filesystem(shard)
            table = pq.read_table(path, filesystem=fs, columns=["image"])
            x = torch.from_numpy(codec.encode(table, shard))
            rows, values, stored = rows + x.shape[0], values + x.nelement(), stored + table.nbytes
        seconds = time.perf_counter() - t0
        passes.append(
            {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "tensor_bytes": 4 * values}
        )
    return passes


def _summary(passes: list[dict]) -> dict:
    steady = passes[1:]
    rate = statistics.median(p["rows_per_s"] for p in steady)
    mb = statistics.median(p["tensor_bytes"] / p["seconds"] / 2**20 for p in steady)
    return {"rows_per_s": rate, "tensor_mb_per_s": mb, "passes": passes}


def main() -> None:
    with local_s3_server(separate_process=True):
        root = f"{make_bucket('bench')}/feed"
        rows = write_rows(root)
        plain = _summary(plain_feed(root))
        print(f"  plain pyarrow -> tensor: {plain['rows_per_s']:,.0f} rows/s", flush=True)
        cfg = VaeflowConfig.model_validate(
            {
                "name": "feed",
                "data": {"uri": root, "vector_column": "image", "scale": 255},
                "train": {
                    "epochs": PASSES,
                    "batch_size": GLOBAL_BATCH,
                    "runs_uri": f"{root}/runs",
                    "val_split": "val/test",
                },
                "compute": {"num_workers": 1, "cpus_per_worker": 1, "data_cpus": 1, "torch_threads": 2},
            }
        )
        ray_side = _summary(feed_rate(cfg, progress=lambda m: None))
        ray.shutdown()
        print(f"  ray data -> worker: {ray_side['rows_per_s']:,.0f} rows/s", flush=True)
    write_result(
        "data_feed",
        value=ray_side["rows_per_s"] / plain["rows_per_s"],
        unit="ratio: rows/s Ray Data delivers as torch tensors to 1 training worker (no model) / "
        "rows/s of one process reading the same files with pyarrow into tensors",
        target=0.5,
        better="higher",
        baseline=plain["rows_per_s"],
        setting={
            "rows": rows,
            "passes": f"{PASSES} (the first a warm-up), each streamed from S3",
            "batch": GLOBAL_BATCH,
            "storage": "S3 (moto server process on 127.0.0.1)",
            "workers": 1,
            "row": "784 x uint8 -> float32 / 255",
        },
        plain=plain,
        ray=ray_side,
    )


if __name__ == "__main__":
    main()
