"""Ray Data embed/generate jobs on a real local cluster, data and outputs in S3 (moto server)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs
import torch

from tests.integration.conftest import make_bucket
from vae_core.config import VaeflowConfig
from vae_core.data.codecs.table import TabularCodec
from vae_core.data.codecs.vector import VectorCodec
from vae_core.data.dataset import DataError, encode_schema, iter_batches, open_dataset, vector_features
from vae_core.data.importers import read_adult
from vae_core.data.storage import delta_storage_options
from vae_core.data.tables import TableError, delta_schema, is_delta_table, read_table
from vae_core.data.tabular import TabularTransformer
from vae_core.distributed.batch import embed_corpus, generate_rows
from vae_core.models.families import DataShape, build_model
from vae_core.training.checkpoints import CheckpointMeta, save_checkpoint
from vae_core.training.inference import embed
from vae_core.training.loop import KLSchedule, fit

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _fs() -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(skip_instance_cache=True)


def _ids_by_standard_readers(uri: str) -> tuple[list, list]:
    """The id column as plain deltalake and polars read the table (no vaeflow code involved)."""
    import polars as pl
    from deltalake import DeltaTable

    options = delta_storage_options(uri)
    ids = DeltaTable(uri, storage_options=options).to_pyarrow_table(columns=["id"]).column("id").to_pylist()
    return ids, pl.read_delta(uri, storage_options=options)["id"].to_list()


@pytest.fixture(scope="module")
def mnist_model(mnist_s3: str) -> str:
    """A briefly trained MNIST VAE checkpoint in S3 (trained in-process on 4,000 images)."""
    cfg = VaeflowConfig.model_validate(
        {
            "name": "mnist-vae",
            "data": {"uri": mnist_s3, "vector_column": "image", "image_shape": [1, 28, 28], "scale": 255},
            "model": {"family": "vae", "hidden": [128], "latent_dim": 8},
        }
    )
    shards, schema, spec = open_dataset(cfg.data, "train")
    x = torch.from_numpy(vector_features(next(iter_batches(shards[:1], ["image"], 4000))[1], spec, "t"))
    shape = DataShape(784, (1, 28, 28))
    torch.manual_seed(0)
    model = build_model(cfg.model, shape)
    fit(model, [x[i : i + 128] for i in range(0, len(x), 128)], epochs=2, schedule=KLSchedule(1.0))
    uri = f"{make_bucket()}/models/mnist/v1"
    codec = VectorCodec("image", 784, str(schema.field("image").type.value_type), 255.0, (1, 28, 28))
    save_checkpoint(uri, model, cfg, codec, meta=CheckpointMeta(epoch=2, data_schema=encode_schema(schema)))
    return uri


def test_embed_matches_in_process_embed_and_a_rerun_is_a_no_op(ray_local, mnist_s3, mnist_model):
    out = f"{make_bucket()}/embeddings/mnist-test"
    committed = embed_corpus(
        mnist_model, f"{mnist_s3}/test", out, passthrough=["label"], rows_per_file=4096, progress=print
    )
    assert committed.rows == 10_000 and not committed.skipped and committed.version == 0
    table = read_table(out)
    assert table.column_names == ["id", "label", "z_mean"]
    assert table.schema.field("z_mean").type == pa.list_(pa.float32())  # Delta arrays have no fixed size
    assert {len(v) for v in table.column("z_mean").to_pylist()} == {8}
    for ids in _ids_by_standard_readers(out):
        assert sorted(ids) == list(range(60_000, 70_000))  # MNIST test ids, each once

    # The same rows through vae_core's in-process embed.
    cfg = VaeflowConfig.model_validate({"data": {"uri": mnist_s3, "vector_column": "image", "scale": 255}})
    shards, _, spec = open_dataset(cfg.data, "test")
    ids, xs = [], []
    for _, batch in iter_batches(shards, ["id", "image"]):
        ids.append(batch.column("id").to_numpy())
        xs.append(vector_features(batch, spec, "test"))
    from vae_core.training.checkpoints import load_checkpoint

    expected = embed(load_checkpoint(mnist_model).model, torch.from_numpy(np.concatenate(xs))).numpy()
    expected_ids = np.concatenate(ids)
    order = np.argsort(table.column("id").to_numpy())
    got_ids = table.column("id").to_numpy()[order]
    np.testing.assert_array_equal(got_ids, np.sort(expected_ids))
    z = np.stack(table.column("z_mean").to_numpy(zero_copy_only=False))[order]
    np.testing.assert_allclose(z, expected[np.argsort(expected_ids)], atol=1e-5, rtol=0)
    stats = committed.record.stats["z_mean"]
    assert stats["count"] == 10_000
    np.testing.assert_allclose(stats["mean"], expected.mean(0), atol=1e-4)
    np.testing.assert_allclose(stats["var"], expected.var(0), rtol=1e-3, atol=1e-5)

    fs = _fs()
    listing = sorted(fs.find(out))
    again = embed_corpus(mnist_model, f"{mnist_s3}/test", out, passthrough=["label"], rows_per_file=4096)
    assert again.skipped and again.rows == 10_000 and again.version == 0
    assert again.record.stats == committed.record.stats  # from the commit's metadata
    fs.invalidate_cache()
    assert sorted(fs.find(out)) == listing, "a rerun of a committed job wrote something"
    # A different run into the same table is refused rather than mixed in...
    with pytest.raises(TableError, match="another run"):
        embed_corpus(mnist_model, f"{mnist_s3}/test", out, with_logvar=True)
    # ...unless asked to replace it: a new version, the earlier one still readable by version.
    replaced = embed_corpus(mnist_model, f"{mnist_s3}/test", out, with_logvar=True, mode="overwrite")
    assert replaced.version == 1 and "z_logvar" in read_table(out).column_names
    assert read_table(out, version=0).column_names == ["id", "label", "z_mean"]


DRIVER = """
import sys
from vae_core.distributed.batch import embed_corpus
embed_corpus(sys.argv[1], sys.argv[2], sys.argv[3], rows_per_file=250, batch_size=250)
"""


def test_a_killed_driver_commits_nothing_and_the_rerun_gives_each_id_once(ray_local, mnist_s3, mnist_model):
    out = f"{make_bucket()}/embeddings/crash"
    args = [sys.executable, "-c", DRIVER, mnist_model, f"{mnist_s3}/test", out]
    env = {**os.environ, "RAY_ADDRESS": ray_local}
    first = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    fs = _fs()
    staged: list[str] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and first.poll() is None:  # 40 files in all: kill at ~half
            fs.invalidate_cache()
            staged = fs.glob(f"{out}/part-*.parquet")
            if len(staged) >= 15:
                break
            time.sleep(0.1)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    assert 15 <= len(staged) < 40, f"the driver was not killed halfway ({len(staged)} files staged)"
    assert not is_delta_table(out), "a killed run must not commit"

    committed = embed_corpus(mnist_model, f"{mnist_s3}/test", out, rows_per_file=250, batch_size=250)
    assert committed.rows == 10_000 and len(committed.files) == 40
    for ids in _ids_by_standard_readers(out):
        assert len(ids) == 10_000 and len(set(ids)) == 10_000
    fs.invalidate_cache()
    # The crashed run's files have the rerun's names (same run key, same ids): nothing was deleted.
    assert set(staged) <= set(fs.glob(f"{out}/part-*.parquet"))


def test_a_nan_vector_names_file_and_column_and_publishes_nothing(ray_local, mnist_model):
    root = make_bucket()
    values = np.random.default_rng(0).random((300, 784)).astype(np.float32)
    values[123, 5] = np.nan
    image = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), 784)
    fs = _fs()
    with fs.open(f"{root}/bad/part-0.parquet", "wb") as f:
        pq.write_table(pa.table({"id": np.arange(300), "image": image}), f)
    out = f"{root}/embeddings/bad"
    with pytest.raises(DataError) as err:
        embed_corpus(mnist_model, f"{root}/bad", out)
    assert "part-0.parquet" in str(err.value) and "'image'" in str(err.value) and "NaN" in str(err.value)
    assert not is_delta_table(out)


def _adult_train() -> pa.Table:
    """Adult train as `vaeflow data import adult` stores it: an int64 id column first."""
    table = read_adult("train")
    return table.add_column(0, "id", pa.array(np.arange(len(table)), pa.int64()))


@pytest.fixture(scope="module")
def adult_model(s3_server: str) -> tuple[str, TabularTransformer]:
    """An Adult tabular VAE (untrained weights; generation only needs the decoder and the codec)."""
    table = _adult_train()
    columns = [c for c in table.column_names if c != "id"]
    cfg = VaeflowConfig.model_validate(
        {
            "name": "adult",
            "data": {"uri": "s3://unused/adult"},
            "model": {"family": "vae", "hidden": [64], "latent_dim": 8, "likelihood": "tabular"},
        }
    )
    continuous = [c for c in columns if pa.types.is_integer(table.schema.field(c).type)]
    categorical = [c for c in columns if c not in continuous]
    transformer = TabularTransformer.fit(
        [table], continuous, categorical, table.schema, max_modes=3, reservoir=5_000
    )
    shape = DataShape(transformer.dim, None, transformer.layout)
    torch.manual_seed(0)
    model = build_model(cfg.model, shape)
    uri = f"{make_bucket()}/models/adult/v1"
    meta = CheckpointMeta(epoch=0, data_schema=encode_schema(table.schema))
    save_checkpoint(uri, model, cfg, TabularCodec(transformer), meta=meta)
    return uri, transformer


def test_generate_adult_in_the_training_schema_identical_for_any_parallelism(ray_local, adult_model):
    uri, transformer = adult_model
    real = _adult_train()
    root = make_bucket()
    one = generate_rows(uri, 50_000, f"{root}/samples/w1", seed=7, num_workers=1)
    two = generate_rows(uri, 50_000, f"{root}/samples/w2", seed=7, num_workers=2)
    assert one.rows == two.rows == 50_000 and len(one.files) == 5
    a, b = read_table(f"{root}/samples/w1"), read_table(f"{root}/samples/w2")
    a, b = a.sort_by("id"), b.sort_by("id")
    assert a.equals(b), "same seed, different parallelism: outputs differ"
    assert a.schema == delta_schema(real.schema)  # id + the 15 columns, same order and dtypes
    assert sorted(a.column("id").to_pylist()) == list(range(50_000))
    for col in transformer.columns:
        if hasattr(col, "categories"):
            seen = set(a.column(col.name).drop_null().to_pylist())
            assert seen <= set(col.categories), (col.name, seen - set(col.categories))
            assert len(seen) > 1, f"{col.name}: a single category in 50,000 sampled rows"
    other = generate_rows(uri, 50_000, f"{root}/samples/seed8", seed=8, num_workers=2)
    assert not read_table(other.table_uri).sort_by("id").equals(a)
