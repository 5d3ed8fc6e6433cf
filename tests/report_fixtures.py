"""Tiny datasets and checkpoints for the report tests (unit and rendering)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from vae_core.config import DataConfig, ModelConfig, VaeflowConfig
from vae_core.data.codecs.table import TabularCodec
from vae_core.data.codecs.vector import VectorCodec
from vae_core.data.importers import read_adult
from vae_core.data.packaged import mnist_table
from vae_core.data.tabular import TabularTransformer
from vae_core.models.families import DataShape, build_model
from vae_core.training.checkpoints import CheckpointMeta, save_checkpoint
from vae_core.training.loop import fit
from vae_core.training.records import EpochRecord


def write_dataset(root: Path, train: pa.Table, test: pa.Table) -> str:
    for split, table in (("train", train), ("test", test)):
        (root / split).mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / split / "part-0.parquet")
    return str(root)


def mnist_checkpoint(tmp: Path, n_train: int = 1000, n_test: int = 300, epochs: int = 2) -> tuple[str, str]:
    """A small MNIST dataset under tmp/mnist and a VAE trained on it briefly: (data uri, checkpoint uri)."""
    train = mnist_table("train").slice(0, n_train)
    data = write_dataset(tmp / "mnist", train, mnist_table("test").slice(0, n_test))
    cfg = VaeflowConfig(
        name="tiny-mnist",
        data=DataConfig(uri=data, vector_column="image", scale=255, image_shape=(1, 28, 28)),
        model=ModelConfig(family="vae", hidden=[32], latent_dim=3),
    )
    pixels = train["image"].combine_chunks().flatten().to_numpy().reshape(n_train, 784)
    x = torch.tensor(pixels, dtype=torch.float32) / 255.0  # (n_train, 784)
    codec = VectorCodec("image", 784, "uint8", 255.0, (1, 28, 28))
    torch.manual_seed(0)
    model = build_model(cfg.model, DataShape.of(codec))
    history = fit(model, [x[i : i + 100] for i in range(0, n_train, 100)], epochs=epochs, lr=3e-3)
    meta = CheckpointMeta(epoch=epochs, history=[EpochRecord.of(s, epochs) for s in history])
    return data, save_checkpoint(str(tmp / "mnist-ckpt"), model, cfg, codec, meta=meta)


def adult_checkpoint(tmp: Path, n_train: int = 800, n_test: int = 400, epochs: int = 3) -> tuple[str, str]:
    """A small Adult dataset and a tabular VAE trained on it briefly: (data uri, checkpoint uri)."""
    train, test = read_adult("train").slice(0, n_train), read_adult("test").slice(0, n_test)
    data = write_dataset(tmp / "adult", train, test)
    continuous = [f.name for f in train.schema if pa.types.is_integer(f.type)]
    categorical = [f.name for f in train.schema if not pa.types.is_integer(f.type)]
    transformer = TabularTransformer.fit([train], continuous, categorical, train.schema, max_modes=3)
    cfg = VaeflowConfig(
        name="tiny-adult",
        data=DataConfig(uri=data, id_column=None),
        model=ModelConfig(family="vae", hidden=[64], latent_dim=8, likelihood="tabular"),
    )
    codec = TabularCodec(transformer)
    x = torch.from_numpy(codec.encode(train, "train"))
    torch.manual_seed(0)
    model = build_model(cfg.model, DataShape.of(codec))
    fit(model, [x[i : i + 100] for i in range(0, n_train, 100)], epochs=epochs, lr=3e-3)
    ckpt = save_checkpoint(str(tmp / "adult-ckpt"), model, cfg, codec, meta=CheckpointMeta(epoch=epochs))
    return data, ckpt
