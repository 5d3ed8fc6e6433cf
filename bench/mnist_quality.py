"""MNIST quality: the pytorch/examples VAE (784-400-20 MLP, Bernoulli on pixels/255, Adam 1e-3,
batch 128, 10 epochs) must reach a test loss (negative ELBO) <= 106.0 nats per image."""

from __future__ import annotations

import time

import torch

from bench._results import write_result
from vae_core.config import ModelConfig
from vae_core.data.packaged import read_mnist
from vae_core.models.families import DataShape, build_model
from vae_core.training.evaluation import evaluate, iwae_log_likelihood
from vae_core.training.loop import fit

EPOCHS, BATCH, LR, SEED = 10, 128, 1e-3, 0
# What every MNIST quality benchmark reports against: pytorch/examples' test loss after 10 epochs.
ELBO_TARGET = {"unit": "nats/image (test negative ELBO)", "target": 106.0, "better": "lower"}


def main() -> None:
    torch.manual_seed(SEED)
    _, train_px = read_mnist("train")
    _, test_px = read_mnist("test")
    x_train = torch.from_numpy(train_px).float() / 255.0  # (60000, 784)
    x_test = torch.from_numpy(test_px).float() / 255.0  # (10000, 784)
    model = build_model(
        ModelConfig(family="vae", hidden=[400], latent_dim=20, likelihood="bernoulli"), DataShape(784)
    )

    def shuffled(epoch: int):
        perm = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(SEED + epoch))
        for i in range(0, len(perm), BATCH):
            yield x_train[perm[i : i + BATCH]]

    def test_batches():
        return (x_test[i : i + 1000] for i in range(0, len(x_test), 1000))

    t0 = time.perf_counter()
    history = fit(
        model,
        shuffled,
        epochs=EPOCHS,
        lr=LR,
        on_epoch=lambda s, m, o: print(
            f"  epoch {s.epoch:2d}  train loss {s.loss:7.2f}  ({s.samples_per_s:,.0f} samples/s)",
            flush=True,
        ),
    )
    train_s = time.perf_counter() - t0
    test = evaluate(model, test_batches())
    iwae = iwae_log_likelihood(model, (x_test[i : i + 500] for i in range(0, 2000, 500)), k=1000)
    write_result(
        "mnist_quality",
        value=-test.elbo,
        **ELBO_TARGET,
        setting={
            "model": "vae mlp 784-400-20 bernoulli",
            "epochs": EPOCHS,
            "batch_size": BATCH,
            "lr": LR,
            "train_rows": len(x_train),
            "test_rows": len(x_test),
            "seed": SEED,
        },
        test_recon=test.recon,
        test_kl=test.kl,
        test_iwae_k1000_first2000=-iwae,
        train_loss_per_epoch=[round(s.loss, 3) for s in history],
        median_train_samples_per_s=sorted(s.samples_per_s for s in history)[len(history) // 2],
        train_seconds=train_s,
    )


if __name__ == "__main__":
    main()
