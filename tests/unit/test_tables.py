"""Delta Lake outputs without Ray: one commit per job, run keys in the log, versions, conflicts, readers."""

from __future__ import annotations

import threading
from collections.abc import Callable

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from vae_core.data.dataset import list_shards
from vae_core.data.maintenance import vacuum
from vae_core.data.objects import atomic_write_json, fingerprint, read_json
from vae_core.data.tables import (
    CommitRecord,
    DataFile,
    NewIds,
    commit,
    data_files,
    find_commit,
    history,
    read_table,
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


def _race(n: int, write: Callable[[int], object]) -> list[str]:
    """write(0..n-1) in n threads released at once: "ok" or "conflict" (TableConflict) for each."""
    outcomes: list[str] = []
    barrier = threading.Barrier(n)

    def writer(i: int) -> None:
        barrier.wait()
        try:
            write(i)
            outcomes.append("ok")
        except TableConflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


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
    outcomes = _race(4, lambda i: commit(uri, [files[i]], SCHEMA, _record(f"w{i}", 2), "overwrite"))
    assert outcomes.count("ok") >= 1 and len(outcomes) == 4
    rows = read_table(uri).column("id").to_pylist()
    assert len(rows) == 2 and rows[0] // 10 == rows[1] // 10, "the table mixes two writers' rows"
    for version, record in history(uri):  # every version is one writer's complete rows
        table = read_table(uri, version=version)
        assert table.num_rows == record.rows


def test_vacuum_deletes_only_files_its_log_added_and_a_later_commit_removed(tmp_path):
    uri = str(tmp_path / "emb")
    commit(uri, [_write(uri, "replaced.parquet", [1])], SCHEMA, _record("k", 1), "error")
    commit(uri, [_write(uri, "current.parquet", [2])], SCHEMA, _record("k2", 1), "overwrite")
    _write(uri, "part-crashed.parquet", [3])  # never committed: a crashed job's, which its rerun commits
    (tmp_path / "emb" / "model.safetensors").write_bytes(b"someone else's")  # not the table's at all
    listed = vacuum(uri, retention_hours=0, dry_run=True)
    assert [f.rsplit("/", 1)[-1] for f in listed] == ["replaced.parquet"]
    assert (tmp_path / "emb" / "replaced.parquet").exists()
    vacuum(uri, retention_hours=0, dry_run=False)
    left = sorted(p.name for p in (tmp_path / "emb").iterdir())
    assert left == ["_delta_log", "current.parquet", "model.safetensors", "part-crashed.parquet"]
    assert read_table(uri).column("id").to_pylist() == [2]


def _append(uri: str, name: str, ids: list[int], base: int | None) -> int:
    values = pa.array(ids, pa.int64())
    return commit(
        uri,
        [_write(uri, name, ids)],
        SCHEMA,
        _record(name, len(ids)),
        "append",
        None,
        NewIds("id", values, base),
    )


def test_an_append_whose_ids_another_writer_committed_meanwhile_commits_nothing(tmp_path):
    uri = str(tmp_path / "emb")
    commit(uri, [_write(uri, "base.parquet", [0, 1])], SCHEMA, _record("base", 2), "error")
    # Both jobs checked their ids against version 0; A commits first, B holds two of A's ids.
    assert _append(uri, "a.parquet", [10, 11, 12], base=0) == 1
    with pytest.raises(TableConflict, match=r"another writer committed 2 of this job's 'id' values"):
        _append(uri, "b.parquet", [12, 13, 11], base=0)
    assert _append(uri, "c.parquet", [20], base=0) == 2  # new ids on top of A: no conflict
    ids = read_table(uri).column("id").to_pylist()
    assert sorted(ids) == [0, 1, 10, 11, 12, 20]


def test_racing_appends_of_the_same_ids_commit_them_once(tmp_path):
    uri = str(tmp_path / "emb")
    commit(uri, [_write(uri, "base.parquet", [0])], SCHEMA, _record("base", 1), "error")
    # Three jobs of the same rows and one of others, all checked against version 0.
    outcomes = _race(4, lambda i: _append(uri, f"w{i}.parquet", [1, 2, 3] if i < 3 else [100 + i], base=0))
    assert sorted(outcomes) == ["conflict", "conflict", "ok", "ok"]
    assert sorted(read_table(uri).column("id").to_pylist()) == [0, 1, 2, 3, 103]


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


def test_generated_ids_appended_to_a_table_continue_after_its_largest_and_a_rerun_adds_nothing(tmp_path):
    from tests.unit.test_bad_inputs import _model
    from vae_core.config import GenerateConfig
    from vae_core.distributed.generate import generate_rows

    model, out = str(_model(tmp_path)), str(tmp_path / "samples")
    generate_rows(model, out, GenerateConfig(rows=50, rows_per_file=20, seed=1), progress=lambda m: None)
    again = GenerateConfig(rows=30, rows_per_file=20, seed=2)
    added = generate_rows(model, out, again, mode="append", progress=lambda m: None)
    assert added.version == 1 and not added.skipped
    ids = read_table(out).column("id").to_pylist()
    assert sorted(ids) == list(range(80))  # another seed's rows get new ids, not 0..29 again
    assert generate_rows(model, out, again, mode="append", progress=lambda m: None).skipped
    assert read_table(out).num_rows == 80


def test_an_incremental_embed_counts_the_shards_of_a_table_that_an_append_began(tmp_path):
    """`embed --incremental --mode append` into a new output, then again with a shard more: the second
    run embeds only the new shard (the first commit began the table, although it was an append)."""
    from vae_core.distributed.embed import embedded_so_far

    uri, params = str(tmp_path / "emb"), {"format": "embed/1"}

    def record(key: str, rows: int, shards: list[str]) -> CommitRecord:
        return CommitRecord(
            kind="embeddings", run_key=key, rows=rows, model={"fingerprint": "m1"}, params=params,
            input={"shard_fingerprints": shards}, mode="append",
        )  # fmt: skip

    assert embedded_so_far(uri, "m1", params, None) is None  # no table yet
    commit(uri, [_write(uri, "part-a.parquet", [1, 2])], SCHEMA, record("k1", 2, ["s1"]), "append")
    commit(uri, [_write(uri, "part-b.parquet", [3])], SCHEMA, record("k2", 1, ["s2"]), "append")
    so_far = embedded_so_far(uri, "m1", params, None)
    assert so_far is not None and so_far.fingerprints == {"s1", "s2"} and so_far.rows == 3
    assert embedded_so_far(uri, "another model", params, None) is None
