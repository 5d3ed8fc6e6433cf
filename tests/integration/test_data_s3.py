"""Data plane against a real S3 API (moto server on 127.0.0.1): importers, schemas, row counts, errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow as pa
import pytest

from tests.integration.conftest import TEST_SECRET
from vae_core.config import DataConfig
from vae_core.data.codecs.vector import VectorCodec
from vae_core.data.dataset import count_rows, iter_batches, open_dataset
from vae_core.data.importers import ADULT_COLUMNS, import_adult, import_mnist
from vae_core.data.tabular import TabularTransformer
from vae_core.errors import DataError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.mark.slow
def test_import_mnist_to_s3_and_read_back(bucket):
    out = f"{bucket}/mnist"
    written = import_mnist(out, rows_per_shard=10_000, progress=lambda m: None)
    assert [(w.split, w.rows) for w in written] == [("train", 60_000), ("test", 10_000)]
    cfg = DataConfig(uri=out, vector_column="image", image_shape=(1, 28, 28), scale=255)
    for split, rows, shards_expected in (("train", 60_000, 6), ("test", 10_000, 1)):
        shards, schema, spec = open_dataset(cfg, split)
        assert len(shards) == shards_expected and all(s.startswith(f"{out}/{split}/") for s in shards)
        assert count_rows(shards) == rows
        assert schema == pa.schema(
            [("id", pa.int64()), ("label", pa.uint8()), ("image", pa.list_(pa.uint8(), 784))]
        )
        assert spec.dim == 784 and spec.image_shape == (1, 28, 28)
    _, first = next(iter_batches(shards, ["id", "image"], batch_rows=100))
    x = VectorCodec("image", spec.dim, "uint8", spec.scale).encode(first, shards[0])
    assert x.shape == (100, 784) and 0.0 <= x.min() and x.max() <= 1.0
    assert first.column("id").to_pylist()[:3] == [60_000, 60_001, 60_002]


def test_import_adult_to_s3_and_read_back(bucket):
    out = f"{bucket}/adult"
    import_adult(out, progress=lambda m: None)
    cfg = DataConfig(uri=out)
    for split, rows in (("train", 32_561), ("test", 16_281)):
        shards, schema, spec = open_dataset(cfg, split)
        assert count_rows(shards) == rows
        assert schema.names == ["id", *ADULT_COLUMNS]
        assert schema.field("age").type == pa.int64() and schema.field("income").type == pa.string()
        assert spec.continuous == [
            "age", "fnlwgt", "education_num", "capital_gain", "capital_loss", "hours_per_week"
        ]  # fmt: skip
        assert len(spec.categorical) == 9
    # The transformer fits by streaming from S3 and round-trips the test split it was fitted on.
    shards, schema, spec = open_dataset(cfg, "test")
    batches = (b for _, b in iter_batches(shards, spec.feature_columns, batch_rows=4096))
    tr = TabularTransformer.fit(batches, spec.continuous, spec.categorical, schema, reservoir=5000)
    table = pa.Table.from_batches([b for _, b in iter_batches(shards, spec.feature_columns)])
    back = tr.inverse(tr.transform(table))
    assert back.column("income").to_pylist() == table.column("income").to_pylist()
    assert set(back.column("income").to_pylist()) == {"<=50K", ">50K"}
    assert back.column("native_country").null_count == table.column("native_country").null_count > 0


def test_missing_s3_prefix_names_the_uri(bucket):
    with pytest.raises(DataError, match=rf"{bucket}/nothing/train: no such dataset"):
        open_dataset(DataConfig(uri=f"{bucket}/nothing"), "train")


def test_cli_import_to_s3_uses_the_aws_environment_and_hides_secrets(bucket):
    out = f"{bucket}/cli-adult"
    cmd = [sys.executable, "-m", "flows.cli", "data", "import", "adult", "--output", out]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "train: 32,561 rows" in done.stdout and "test: 16,281 rows" in done.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    assert again.returncode == 2 and "already holds Parquet shards" in again.stderr
    for output in (done.stdout, done.stderr, again.stdout, again.stderr):
        assert TEST_SECRET not in output


def test_a_write_into_a_bucket_deleted_meanwhile_names_it_and_a_read_still_misses(bucket):
    """A job's write after its bucket was deleted is a StorageError naming the bucket (not a bare
    FileNotFoundError); asking whether something exists in a missing bucket is still a plain False."""
    import boto3

    from vae_core.data.storage import filesystem
    from vae_core.errors import StorageError

    fs, path = filesystem(f"{bucket}/out/part-0.parquet")
    fs.pipe_file(path, b"first")  # the job's first file lands
    client = boto3.client("s3")
    name = bucket.removeprefix("s3://")
    client.delete_object(Bucket=name, Key="out/part-0.parquet")
    client.delete_bucket(Bucket=name)
    with pytest.raises(StorageError, match=f"no such bucket {bucket} \\(deleted while the job ran"):
        fs.pipe_file(path.replace("part-0", "part-1"), b"second")
    fs.invalidate_cache()
    assert not fs.exists(path)
