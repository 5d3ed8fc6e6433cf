"""Small datasets the tests write: the first rows of each MNIST split, as Parquet shards."""

from __future__ import annotations

from vae_core.data.importers import ShardWriter
from vae_core.data.packaged import mnist_table


def write_mnist_sample(uri: str, train_rows: int, test_rows: int, rows_per_shard: int = 1_000) -> str:
    """MNIST's first `train_rows` training and `test_rows` test images under uri/train and uri/test, with
    the ids `vaeflow data import mnist` gives them (test ids continue after the 60,000 training ids)."""
    train = mnist_table("train")
    test = mnist_table("test", id_offset=train.num_rows)
    for split, table, rows in (("train", train, train_rows), ("test", test, test_rows)):
        ShardWriter(f"{uri}/{split}", rows_per_shard).write_all([table.slice(0, rows)])
    return uri
