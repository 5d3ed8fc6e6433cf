"""Dataset validation: every bad input gets an error naming the file or column."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vae_core.config import DataConfig
from vae_core.data.codecs.vector import VectorCodec
from vae_core.data.dataset import iter_batches, list_shards, open_dataset, read_schema, resolve_spec
from vae_core.errors import DataError


def _vectors(n: int, dim: int = 4, start: int = 0) -> pa.Table:
    values = np.arange(start * dim, (start + n) * dim, dtype=np.uint8)
    return pa.table(
        {
            "id": pa.array(np.arange(start, start + n, dtype=np.int64)),
            "image": pa.FixedSizeListArray.from_arrays(pa.array(values), dim),
        }
    )


def _write(folder, tables):
    folder.mkdir(parents=True, exist_ok=True)
    for i, t in enumerate(tables):
        pq.write_table(t, folder / f"part-{i:05d}.parquet")
    return str(folder)


def test_a_good_vector_dataset_opens_and_streams(tmp_path):
    uri = _write(tmp_path / "train", [_vectors(5), _vectors(3, start=5)])
    shards, _, spec = open_dataset(DataConfig(uri=str(tmp_path), vector_column="image", scale=255), "train")
    assert len(shards) == 2 and spec.kind == "vector" and spec.dim == 4
    codec = VectorCodec(spec.vector_column, spec.dim, "uint8", spec.scale)
    x = np.concatenate([codec.encode(b, s) for s, b in iter_batches(shards, spec.feature_columns)])
    assert x.shape == (8, 4) and x.dtype == np.float32 and np.isclose(x.max(), 31 / 255)
    assert list_shards(uri) == shards


def test_memory_uri_works_like_a_folder():
    import fsspec

    fs = fsspec.filesystem("memory")
    with fs.open("/ds/train/part-0.parquet", "wb") as f:
        pq.write_table(_vectors(4), f)
    shards, _, spec = open_dataset(DataConfig(uri="memory://ds", vector_column="image"), "train")
    assert shards == ["memory://ds/train/part-0.parquet"] and spec.dim == 4
    fs.rm("/ds", recursive=True)


def test_missing_dataset_is_named(tmp_path):
    with pytest.raises(DataError, match=r"nowhere: no such dataset"):
        list_shards(str(tmp_path / "nowhere"))


def test_missing_shard_is_named(tmp_path):
    uri = _write(tmp_path, [_vectors(2)])
    shards = list_shards(uri)
    (tmp_path / "part-00000.parquet").unlink()
    with pytest.raises(DataError, match=r"part-00000\.parquet: shard is missing"):
        read_schema(shards)


def test_empty_dataset_is_named(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "README").write_text("no shards here")
    with pytest.raises(DataError, match=r"train: empty dataset"):
        open_dataset(DataConfig(uri=str(tmp_path)), "train")


def test_corrupt_shard_is_named(tmp_path):
    _write(tmp_path, [_vectors(2), _vectors(2)])
    (tmp_path / "part-00001.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"part-00001\.parquet: not a readable Parquet file"):
        read_schema(list_shards(str(tmp_path)))


def test_schemas_that_differ_across_shards_name_file_and_column(tmp_path):
    other = _vectors(2).set_column(0, "id", pa.array(["a", "b"]))
    _write(tmp_path, [_vectors(2), other])
    with pytest.raises(DataError, match=r"part-00001\.parquet: schema differs .* column 'id' is string"):
        read_schema(list_shards(str(tmp_path)))


def test_unknown_column_in_config_is_named(tmp_path):
    schema = _vectors(1).schema
    with pytest.raises(DataError, match=r"unknown column 'pixels'"):
        resolve_spec(DataConfig(vector_column="pixels"), schema, "s3://b/train")
    with pytest.raises(DataError, match=r"unknown column 'age'"):
        resolve_spec(DataConfig(categorical=["age"]), schema, "s3://b/train")


def test_wrong_vector_length_names_file_and_column(tmp_path):
    var = pa.table({"id": [0, 1], "v": pa.array([[0.1, 0.2, 0.3], [0.1, 0.2]], pa.list_(pa.float32()))})
    spec = resolve_spec(DataConfig(vector_column="v", vector_dim=3), var.schema, "f.parquet")
    with pytest.raises(DataError, match=r"f\.parquet: column 'v': row 1 has 2 values, expected 3"):
        VectorCodec("v", spec.dim, "float").encode(var, "f.parquet")
    with pytest.raises(
        DataError, match=r"column 'image': data.image_shape gives 9 values, data.vector_dim 4"
    ):
        resolve_spec(
            DataConfig(vector_column="image", image_shape=(1, 3, 3), vector_dim=4), _vectors(1).schema, "x"
        )
    with pytest.raises(DataError, match="variable-length list"):
        resolve_spec(DataConfig(vector_column="v"), var.schema, "f.parquet")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_in_a_vector_is_named(bad):
    t = pa.table({"v": pa.FixedSizeListArray.from_arrays(pa.array([0.0, 1.0, bad, 2.0], pa.float32()), 2)})
    spec = resolve_spec(DataConfig(id_column=None, vector_column="v"), t.schema, "g.parquet")
    with pytest.raises(DataError, match=r"g\.parquet: column 'v': NaN or inf in vector features \(row 1\)"):
        VectorCodec("v", spec.dim, "float").encode(t, "g.parquet")


def test_tabular_spec_infers_kinds_and_honours_overrides():
    schema = pa.schema(
        [
            ("id", pa.int64()),
            ("age", pa.int64()),
            ("job", pa.string()),
            ("ok", pa.bool_()),
            ("code", pa.int8()),
        ]
    )
    spec = resolve_spec(DataConfig(categorical=["code"]), schema, "t")
    assert spec.kind == "tabular" and spec.continuous == ["age"] and spec.categorical == ["job", "ok", "code"]
    with pytest.raises(DataError, match="column 'job' is string and cannot be continuous"):
        resolve_spec(DataConfig(continuous=["job"]), schema, "t")
    with pytest.raises(
        DataError, match=r"column 'raw' has unsupported type binary .* data.exclude=\[\"raw\"\]"
    ):
        resolve_spec(DataConfig(id_column=None), pa.schema([("raw", pa.binary())]), "t")
    dated = pa.schema(
        [("id", pa.int64()), ("day", pa.date32()), ("at", pa.timestamp("ms", tz="UTC")), ("raw", pa.binary())]
    )
    spec = resolve_spec(DataConfig(exclude=["raw"]), dated, "t")
    assert spec.continuous == ["day", "at"] and spec.categorical == []
    with pytest.raises(DataError, match="unknown column 'nope' named in the config"):
        resolve_spec(DataConfig(exclude=["nope"]), dated, "t")


def test_describing_a_table_of_5000_columns_reports_progress_within_a_minute(tmp_path):
    """`vaeflow data describe` of a wide table: the codec fit names how far it is on stderr (issue 37:
    it used to print nothing for minutes)."""
    import select
    import subprocess
    import sys
    import time
    from pathlib import Path

    rng = np.random.default_rng(0)
    table = pa.table({f"c{i}": rng.normal(size=100) for i in range(5000)})
    for split in ("train", "test"):
        (tmp_path / "wide" / split).mkdir(parents=True)
        pq.write_table(table, tmp_path / "wide" / split / "part-0.parquet")
    exe = str(Path(sys.executable).with_name("vaeflow"))
    proc = subprocess.Popen(
        [exe, "data", "describe", str(tmp_path / "wide"), "data.id_column=null"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline, said = time.monotonic() + 60, ""
    try:
        while time.monotonic() < deadline and proc.poll() is None and "columns fitted" not in said:
            ready, _, _ = select.select([proc.stderr], [], [], max(0.0, deadline - time.monotonic()))
            if ready:
                said = proc.stderr.readline()
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert "of 5000 columns fitted" in said or proc.returncode == 0, said
