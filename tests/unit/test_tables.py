"""Delta Lake outputs without Ray: one commit per job, run keys in the log, versions, conflicts, readers."""

from __future__ import annotations

import threading

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from vae_core.data.dataset import list_shards
from vae_core.data.objects import atomic_write_json, fingerprint, read_json
from vae_core.data.tables import (
    CommitRecord,
    DataFile,
    commit,
    data_files,
    find_commit,
    history,
    read_table,
    vacuum,
)
from vae_core.errors import TableConflict, TableError

SCHEMA = pa.schema([("id", pa.int64()), ("z", pa.float32())])


def _write(table_uri: str, name: str, ids: list[int]) -> DataFile:
    """What an actor does: one Parquet file in the table folder; returns its DataFile."""
    import os

    os.makedirs(table_uri, exist_ok=True)
    table = pa.table({"id": pa.array(ids, pa.int64()), "z": pa.array([float(i) for i in ids], pa.float32())})
    pq.write_table(table, f"{table_uri}/{name}")
    return DataFile(name, len(ids), os.path.getsize(f"{table_uri}/{name}"))


def _record(run_key: str, rows: int, night: str | None = None) -> CommitRecord:
    return CommitRecord(kind="embeddings", run_key=run_key, rows=rows, stats={"n": rows}, night=night)


def test_a_job_is_one_commit_that_standard_readers_see_and_its_run_key_is_in_the_log(tmp_path):
    uri = str(tmp_path / "emb")
    files = [_write(uri, "part-a.parquet", [1, 2, 3]), _write(uri, "part-b.parquet", [4, 5])]
    _write(uri, "part-crashed.parquet", [1, 2, 3])  # a crashed job's file: never committed
    assert find_commit(uri, "k1", "error") is None
    version = commit(uri, files, SCHEMA, _record("k1", 5, "2026-01-01"), "error")
    assert version == 0
    ids = sorted(DeltaTable(uri).to_pyarrow_table().column("id").to_pylist())
    assert ids == [1, 2, 3, 4, 5]  # the uncommitted file is invisible
    assert sorted(pl.read_delta(uri)["id"].to_list()) == [1, 2, 3, 4, 5]
    assert DeltaTable(uri).transaction_version("vaeflow-k1") is not None  # Delta txn, any client
    found = find_commit(uri, "k1", "error")
    assert found is not None and found[0] == 0 and found[1].stats == {"n": 5}
    assert history(uri)[0][1].night == "2026-01-01"


def test_error_mode_refuses_an_existing_table_and_overwrite_keeps_earlier_versions(tmp_path):
    uri = str(tmp_path / "emb")
    commit(uri, [_write(uri, "p1.parquet", [1, 2])], SCHEMA, _record("night1", 2), "error")
    with pytest.raises(TableError, match="already holds a Delta table"):
        commit(uri, [_write(uri, "p2.parquet", [3])], SCHEMA, _record("other", 1), "error")
    v = commit(uri, [_write(uri, "p2.parquet", [7, 8, 9])], SCHEMA, _record("night2", 3), "overwrite")
    assert v == 1
    assert sorted(read_table(uri).column("id").to_pylist()) == [7, 8, 9]
    assert sorted(read_table(uri, version=0).column("id").to_pylist()) == [1, 2]  # night 1 still there
    assert (tmp_path / "emb" / "p1.parquet").exists(), "an overwrite deletes no file"
    # night1's rows were replaced: running night1's job again is real work, not a no-op
    assert find_commit(uri, "night1", "overwrite") is None
    assert find_commit(uri, "night2", "overwrite")[0] == 1
    v = commit(uri, [_write(uri, "p3.parquet", [10])], SCHEMA, _record("more", 1), "append")
    assert sorted(read_table(uri, version=v).column("id").to_pylist()) == [7, 8, 9, 10]
    assert find_commit(uri, "night2", "append")[0] == 1  # appended-to rows are still there


def test_a_missing_or_truncated_file_is_never_committed(tmp_path):
    uri = str(tmp_path / "emb")
    good = _write(uri, "p1.parquet", [1, 2])
    with pytest.raises(TableError, match="missing"):
        commit(uri, [good, DataFile("gone.parquet", 3, 100)], SCHEMA, _record("k", 5), "error")
    with pytest.raises(TableError, match="expected"):
        commit(uri, [DataFile("p1.parquet", 2, good.bytes + 1)], SCHEMA, _record("k", 2), "error")
    assert not (tmp_path / "emb" / "_delta_log").exists()


def test_racing_overwrites_one_wins_the_others_fail_cleanly(tmp_path):
    uri = str(tmp_path / "emb")
    commit(uri, [_write(uri, "p0.parquet", [0])], SCHEMA, _record("base", 1), "error")
    files = [_write(uri, f"w{i}.parquet", [10 * i + 1, 10 * i + 2]) for i in range(4)]
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def writer(i: int) -> None:
        barrier.wait()
        try:
            commit(uri, [files[i]], SCHEMA, _record(f"w{i}", 2), "overwrite")
            outcomes.append("ok")
        except TableConflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") >= 1 and len(outcomes) == 4
    rows = read_table(uri).column("id").to_pylist()
    assert len(rows) == 2 and rows[0] // 10 == rows[1] // 10, "the table mixes two writers' rows"
    for version, record in history(uri):  # every version is one writer's complete rows
        table = read_table(uri, version=version)
        assert table.num_rows == record.rows


def test_vacuum_lists_only_unreferenced_files_and_deletes_only_when_asked(tmp_path):
    uri = str(tmp_path / "emb")
    commit(uri, [_write(uri, "kept.parquet", [1])], SCHEMA, _record("k", 1), "error")
    _write(uri, "crashed.parquet", [2])
    listed = vacuum(uri, retention_hours=0, dry_run=True)
    assert [f.rsplit("/", 1)[-1] for f in listed] == ["crashed.parquet"]
    assert (tmp_path / "emb" / "crashed.parquet").exists()
    vacuum(uri, retention_hours=0, dry_run=False)
    assert not (tmp_path / "emb" / "crashed.parquet").exists()
    assert read_table(uri).column("id").to_pylist() == [1]


def test_a_delta_table_is_accepted_as_input(tmp_path):
    uri = str(tmp_path / "corpus")
    commit(uri, [_write(uri, "a.parquet", [1, 2])], SCHEMA, _record("k", 2), "error")
    _write(uri, "stray.parquet", [99])  # not part of the table: a plain listing would read it
    commit(uri, [_write(uri, "b.parquet", [3])], SCHEMA, _record("k2", 1), "append")
    shards = list_shards(uri)
    assert shards == data_files(uri)
    assert sorted(s.rsplit("/", 1)[-1] for s in shards) == ["a.parquet", "b.parquet"]


def test_fingerprint_follows_content_and_parameters(tmp_path):
    f = tmp_path / "a.parquet"
    pq.write_table(pa.table({"id": [1, 2]}), f)
    first = fingerprint([str(f)], extra={"p": 1})
    assert fingerprint([str(f)], extra={"p": 1}) == first
    assert fingerprint([str(f)], extra={"p": 2}) != first
    pq.write_table(pa.table({"id": [1, 2, 3]}), f)
    assert fingerprint([str(f)], extra={"p": 1}) != first


def test_atomic_json_round_trip_on_memory_and_local_uris(tmp_path):
    atomic_write_json("memory://tables-test/x.json", {"a": 1})
    assert read_json("memory://tables-test/x.json") == {"a": 1}
    atomic_write_json(str(tmp_path / "d" / "x.json"), {"b": 2})
    assert read_json(str(tmp_path / "d" / "x.json")) == {"b": 2}
    assert read_json(str(tmp_path / "none.json")) is None
