"""The standardized codec end to end: dense float vectors on very different scales go through Ray
training, the embed job and the generate job with nothing but `data.codec = "standardized"` set."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.servers import make_bucket
from vae_core.config import ComputeConfig, EmbedConfig, GenerateConfig, VaeflowConfig
from vae_core.data.codecs.standardized import StandardizedCodec
from vae_core.data.storage import arrow_filesystem
from vae_core.data.tables import read_table
from vae_core.distributed.embed import embed_corpus
from vae_core.distributed.generate import generate_rows
from vae_core.distributed.trainer import train_on_ray

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(420)]

DIM = 6
# Each dimension on its own scale: unstandardized, the Gaussian likelihood would fit only the largest.
MEAN = np.array([0.0, 5.0, -300.0, 1e4, 0.01, 42.0])
STD = np.array([1.0, 0.1, 50.0, 2e3, 0.001, 7.0])


def _sensor_rows(start: int, n: int, seed: int) -> pa.Table:
    """Rows of a 2-factor latent model: v = MEAN + STD * (W h + noise), float32 vectors, int64 ids."""
    rng = np.random.default_rng(seed)
    w = np.random.default_rng(99).normal(size=(DIM, 2))
    h = rng.normal(size=(n, 2))
    v = (MEAN + STD * (h @ w.T + 0.1 * rng.normal(size=(n, DIM)))).astype(np.float32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1), pa.float32()), DIM)
    return pa.table({"id": pa.array(np.arange(start, start + n), pa.int64()), "v": column})


def test_standardized_vectors_train_on_ray_embed_and_generate_in_their_own_units(ray_local, s3_server):
    root = f"{make_bucket()}/sensors"
    fs, _ = arrow_filesystem(root)
    for split, (start, n, seed) in {"train": (0, 3000, 1), "test": (3000, 600, 2)}.items():
        table = _sensor_rows(start, n, seed)
        pq.write_table(table, arrow_filesystem(f"{root}/{split}/part-0.parquet")[1], filesystem=fs)
    cfg = VaeflowConfig.model_validate(
        {
            "name": "sensors",
            "data": {"uri": root, "vector_column": "v", "codec": "standardized"},
            "model": {"family": "vae", "hidden": [32], "latent_dim": 2, "likelihood": "gaussian"},
            # cache_mb 0: every epoch streams from S3 (the cached path is tested in test_train_ray).
            "train": {"epochs": 4, "batch_size": 64, "runs_uri": f"{make_bucket()}/runs", "cache_mb": 0},
            "compute": {"num_workers": 1, "cpus_per_worker": 1, "data_cpus": 1},
        }
    )
    result = train_on_ray(cfg, run_name="sensors", progress=lambda m: None)

    # The fitted codec travels in the checkpoint: per-dimension moments of the training split.
    codec = result.checkpoint.codec
    assert isinstance(codec, StandardizedCodec) and codec.dim == DIM
    train = (
        _sensor_rows(0, 3000, 1)
        .column("v")
        .combine_chunks()
        .flatten()
        .to_numpy()
        .reshape(-1, DIM)
        .astype(np.float64)
    )
    np.testing.assert_allclose(codec.mean, train.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(codec.std, train.std(0), rtol=1e-3)
    assert result.history[-1].val_elbo > result.checkpoint.meta.val_elbo_init
    assert [h.data_from for h in result.history] == ["storage"] * 4

    # Embed: every id once, a finite 2-d posterior mean per row.
    compute = ComputeConfig(num_workers=1, cpus_per_worker=0.5)
    embedded = embed_corpus(
        result.checkpoint_uri,
        f"{root}/test",
        f"{root}/embeddings",
        EmbedConfig(chunk_rows=256, rows_per_file=200),
        compute,
        progress=lambda m: None,
    )
    table = read_table(f"{root}/embeddings")
    assert embedded.rows == 600 and sorted(table.column("id").to_pylist()) == list(range(3000, 3600))
    z = np.stack(table.column("z_mean").to_numpy(zero_copy_only=False))
    assert z.shape == (600, 2) and np.isfinite(z).all()

    # Generate: rows in the training schema (float32 vectors) and in the data's own units.
    generated = generate_rows(
        result.checkpoint_uri,
        f"{root}/samples",
        GenerateConfig(rows=2000, seed=3, sample_likelihood=True),
        compute,
        progress=lambda m: None,
    )
    samples = read_table(f"{root}/samples")
    assert generated.rows == 2000 and samples.num_rows == 2000
    assert pa.types.is_float32(samples.schema.field("v").type.value_type)
    v = np.stack(samples.column("v").to_numpy(zero_copy_only=False)).astype(np.float64)
    # Each dimension's sample mean within half a data std of the data's mean, its spread the data's order.
    assert (np.abs(v.mean(0) - train.mean(0)) < 0.5 * train.std(0)).all(), (v.mean(0), train.mean(0))
    ratio = v.std(0) / train.std(0)
    assert ((ratio > 0.5) & (ratio < 2.0)).all(), ratio
