"""Importers on local folders: user CSV/Parquet with ids and splits, atomic failure, refusal to mix."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vae_core.data.dataset import list_shards
from vae_core.data.importers import ShardWriter, import_adult, import_files
from vae_core.errors import DataError


def _rows(folder):
    return pq.read_table(str(folder)).num_rows


def test_csv_import_adds_ids_shards_and_splits_reproducibly(tmp_path):
    csv = tmp_path / "in.csv"
    csv.write_text("a,b\n" + "".join(f"{i},{'xy'[i % 2]}\n" for i in range(1000)))
    out = tmp_path / "out"
    written = import_files("csv", [str(csv)], str(out), rows_per_shard=300, test_fraction=0.2, seed=7)
    by_split = {w.split: w for w in written}
    assert by_split["train"].rows + by_split["test"].rows == 1000
    assert 120 < by_split["test"].rows < 280
    assert len(list_shards(str(out / "train"))) == -(-by_split["train"].rows // 300)
    ids = np.concatenate([pq.read_table(str(out / s)).column("id").to_numpy() for s in ("train", "test")])
    assert sorted(ids.tolist()) == list(range(1000))
    again = import_files(
        "csv", [str(csv)], str(tmp_path / "again"), rows_per_shard=300, test_fraction=0.2, seed=7
    )
    assert [w.rows for w in again] == [w.rows for w in written]


def test_parquet_import_keeps_existing_ids_and_refuses_schema_drift(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(pa.table({"id": [10, 11], "v": [1.0, 2.0]}), src / "a.parquet")
    pq.write_table(pa.table({"id": [12], "v": [3.0]}), src / "b.parquet")
    import_files("parquet", [str(src)], str(tmp_path / "out"), test_fraction=0.0)
    assert pq.read_table(str(tmp_path / "out" / "train")).column("id").to_pylist() == [10, 11, 12]
    pq.write_table(pa.table({"id": [13], "v": ["oops"]}), src / "c.parquet")
    with pytest.raises(DataError, match=r"c\.parquet: schema differs .* column 'v'"):
        import_files("parquet", [str(src)], str(tmp_path / "out2"))
    assert not (tmp_path / "out2" / "train").exists() or not list((tmp_path / "out2" / "train").iterdir())


def test_a_failed_import_leaves_no_shards(tmp_path):
    def batches():
        yield pa.table({"v": list(range(10))})
        raise RuntimeError("source broke")

    writer = ShardWriter(str(tmp_path / "x"), rows_per_shard=4)
    with pytest.raises(RuntimeError, match="source broke"):
        writer.write_all(batches())
    assert list((tmp_path / "x").iterdir()) == []


def test_import_never_mixes_with_or_removes_existing_shards(tmp_path):
    import_adult(str(tmp_path), rows_per_shard=20_000, progress=lambda m: None)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.parquet")}
    with pytest.raises(DataError, match="already holds Parquet shards; nothing was written or removed"):
        import_adult(str(tmp_path), rows_per_shard=50_000, progress=lambda m: None)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*.parquet")} == before
    assert len(list_shards(str(tmp_path / "train"))) == 2 and _rows(tmp_path / "train") == 32_561


def test_empty_csv_is_an_error(tmp_path):
    (tmp_path / "e.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="empty input"):
        import_files("csv", [str(tmp_path / "e.csv")], str(tmp_path / "out"))


def test_csv_import_keeps_a_string_key_reads_dates_and_takes_a_predefined_test_file(tmp_path):
    header = "customer,signup,plan,spend,notes\n"
    rows = "".join(
        f"c-{i:04d},2024-01-{1 + i % 28:02d},{'ab'[i % 2]},{i * 1.5},{'' if i % 3 else 'x'}\n"
        for i in range(60)
    )
    (tmp_path / "train.csv").write_text(header + rows)
    (tmp_path / "test.csv").write_text(header + "t-0001,2024-02-01,a,3,\nt-0002,2024-02-02,b,4.5,y\n")
    out = tmp_path / "out"
    written = import_files(
        "csv", [str(tmp_path / "train.csv")], str(out), test_inputs=[str(tmp_path / "test.csv")],
        id_column="customer", exclude=["notes"], progress=lambda m: None,
    )  # fmt: skip
    assert {w.split: w.rows for w in written} == {"train": 60, "test": 2}
    train, test = (pq.read_table(str(out / s)) for s in ("train", "test"))
    assert train.column_names == ["customer", "signup", "plan", "spend"]  # the key kept, no id added
    assert train.schema.field("signup").type == pa.date32() and test.schema == train.schema
    assert test.column("customer").to_pylist() == ["t-0001", "t-0002"]
    assert test.column("spend").type == pa.float64()  # "3" in the test file read with train's type


def test_csv_import_splits_off_a_test_set_by_default_and_names_an_unknown_exclude(tmp_path):
    (tmp_path / "in.csv").write_text("a,b\n" + "".join(f"{i},{i % 3}\n" for i in range(500)))
    written = import_files("csv", [str(tmp_path / "in.csv")], str(tmp_path / "out"), progress=lambda m: None)
    test_rows = {w.split: w.rows for w in written}["test"]
    assert 60 < test_rows < 140  # about 20 %
    with pytest.raises(DataError, match=r"--exclude names column\(s\) \['c'\]"):
        import_files("csv", [str(tmp_path / "in.csv")], str(tmp_path / "o2"), exclude=["c"], progress=print)
    assert not list_shards_or_empty(tmp_path / "o2")


def list_shards_or_empty(folder):
    return [p for p in folder.rglob("*.parquet")] if folder.exists() else []
