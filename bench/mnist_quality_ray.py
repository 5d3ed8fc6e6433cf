"""MNIST quality through Ray Train: step 1's VAE (784-400-20 MLP, Bernoulli, Adam 1e-3, global batch 128
= 2 DDP workers x 64, 10 epochs), data and checkpoints on S3 (moto server on 127.0.0.1).
Target: test loss (negative ELBO) <= 106.0 nats per image."""

from __future__ import annotations

import time

import ray
import torch

from bench._results import write_result
from tests.servers import local_s3_server, make_bucket
from vae_core.config import VaeflowConfig
from vae_core.data.dataset import iter_batches, open_dataset
from vae_core.data.importers import import_mnist
from vae_core.distributed.trainer import train_on_ray
from vae_core.training.evaluation import evaluate

EPOCHS, WORKERS, GLOBAL_BATCH = 10, 2, 128


def main() -> None:
    with local_s3_server():
        root = make_bucket("bench")
        import_mnist(f"{root}/mnist", progress=lambda m: None)
        cfg = VaeflowConfig.model_validate(
            {
                "name": "mnist-quality-ray",
                "data": {
                    "uri": f"{root}/mnist",
                    "vector_column": "image",
                    "image_shape": [1, 28, 28],
                    "scale": 255,
                },
                "model": {"family": "vae", "hidden": [400], "latent_dim": 20, "likelihood": "bernoulli"},
                "train": {
                    "epochs": EPOCHS,
                    "batch_size": GLOBAL_BATCH // WORKERS,
                    "lr": 1e-3,
                    "runs_uri": f"{root}/runs",
                },
                "compute": {"num_workers": WORKERS, "cpus_per_worker": 1, "data_cpus": 1},
            }
        )
        t0 = time.perf_counter()
        result = train_on_ray(cfg)
        seconds = time.perf_counter() - t0
        shards, _, _ = open_dataset(cfg.data, "test")
        codec = result.checkpoint.codec
        batches = [torch.from_numpy(codec.encode(b, s)) for s, b in iter_batches(shards, codec.columns, 1000)]
        test = evaluate(result.model, batches)
        ray.shutdown()
    write_result(
        "mnist_quality_ray",
        value=-test.elbo,
        unit="nats/image (test negative ELBO)",
        target=106.0,
        better="lower",
        setting={
            "model": "vae mlp 784-400-20 bernoulli",
            "workers": WORKERS,
            "batch_per_worker": GLOBAL_BATCH // WORKERS,
            "global_batch": GLOBAL_BATCH,
            "epochs": EPOCHS,
            "lr": 1e-3,
            "data": "MNIST train 60,000 rows from S3 (moto on 127.0.0.1)",
            "test_rows": test.n,
        },
        test_recon=test.recon,
        test_kl=test.kl,
        val_elbo_per_epoch=[round(h.val_elbo, 3) for h in result.history if h.val_elbo is not None],
        wall_seconds=seconds,
        checkpoint=result.checkpoint_uri,
    )


if __name__ == "__main__":
    main()
