"""Table maintenance (data/maintenance.py) on real delta-rs tables: compaction that changes no data and
keeps vaeflow's state, checkpoints, and a VACUUM that keeps every retained version readable."""

from __future__ import annotations

import json

import pytest
from deltalake import DeltaTable

from tests.unit.test_tables import SCHEMA, _write
from vae_core.data.maintenance import last_checkpoint, maintain
from vae_core.data.tables import CommitRecord, commit, find_commit, history, read_table
from vae_core.errors import TableError

PARAMS = {"format": "embed/1"}


def _night(uri: str, n: int, mode: str = "append", ids: list[int] | None = None) -> int:
    """Night n's commit, as an incremental embed makes it: a small file, its shard fingerprint."""
    ids = ids if ids is not None else [2 * n, 2 * n + 1]
    held = [f"shard-{k}" for k in range(n + 1)] if mode == "append" else [f"shard-{n}"]
    record = CommitRecord(
        kind="embeddings", run_key=f"night-{n}", rows=len(ids), model={"fingerprint": "m1"}, params=PARAMS,
        input={"shard_fingerprints": [f"shard-{n}"], "held_fingerprints": held}, mode=mode,
        night=f"2026-01-{n + 1:02d}", stats={"z_mean": {"count": 2 * len(held)}},
    )  # fmt: skip
    return commit(uri, [_write(uri, f"part-{n}.parquet", ids)], SCHEMA, record, mode)


def _ids(uri: str, version: int | None = None) -> list[int]:
    return sorted(read_table(uri, version=version, columns=["id"]).column("id").to_pylist())


def test_compaction_changes_no_data_keeps_the_state_and_a_rerun_does_nothing(tmp_path):
    from vae_core.distributed.embed import embedded_so_far

    uri = str(tmp_path / "emb")
    for n in range(6):
        _night(uri, n)
    before = history(uri)
    done = maintain(uri)
    assert done.compacted == (6, 1) and len(DeltaTable(uri).file_uris()) == 1
    assert _ids(uri) == list(range(12))  # every id once
    assert history(uri) == before  # the compaction commit is not a vaeflow commit, nor a foreign one
    assert find_commit(uri, "night-3", "append") == (3, before[2][1])
    so_far = embedded_so_far(uri, "m1", PARAMS, None)  # the incremental state survives it
    assert so_far is not None and so_far.fingerprints == {f"shard-{n}" for n in range(6)}
    assert (so_far.version, so_far.rows) == (5, 12)  # from the newest night's commit alone
    operation = DeltaTable(uri).history(1)[0]
    assert (
        operation["operation"] == "OPTIMIZE"
        and json.loads(operation["vaeflow.maintenance"])["kind"] == "compaction"
    )
    version = DeltaTable(uri).version()
    again = maintain(uri)  # a rerun: nothing to compact, nothing to delete, no commit
    assert (again.compacted, again.vacuumed, again.version) == ((0, 0), [], version)
    # A new night appends on top of the compacted table; its state counts all seven shards.
    _night(uri, 6)
    assert embedded_so_far(uri, "m1", PARAMS, None).rows == 14


def test_vacuum_keeps_the_retained_nights_and_pinned_versions_readable(tmp_path):
    uri = str(tmp_path / "emb")
    versions = [
        _night(uri, n, mode="overwrite" if n else "error", ids=[10 * n, 10 * n + 1]) for n in range(6)
    ]
    # Night 0's files were replaced five nights ago: with retention 0 and the last 3 nights kept, night
    # 0 is kept only because it is pinned (a champion's version); nights 1 and 2 are not retained.
    done = maintain(uri, keep_nights=3, keep_versions=(versions[0],), retention_hours=0)
    assert done.kept_versions == [versions[0], versions[3], versions[4]]
    assert sorted(f.rsplit("/", 1)[-1] for f in done.vacuumed) == ["part-1.parquet", "part-2.parquet"]
    for n in (0, 3, 4, 5):  # every retained version reads its own ids, once
        assert _ids(uri, versions[n]) == [10 * n, 10 * n + 1]
    with pytest.raises(OSError):
        read_table(uri, version=versions[1])  # not retained: its file is gone
    assert _ids(uri) == [50, 51]
    assert maintain(uri, keep_nights=3, keep_versions=(versions[0],), retention_hours=0).vacuumed == []
    # A dry run lists, deletes nothing: night 0 unpinned would go.
    dry = maintain(uri, keep_nights=3, retention_hours=0, dry_run=True)
    assert [f.rsplit("/", 1)[-1] for f in dry.vacuumed] == ["part-0.parquet"] and _ids(uri, versions[0])
    # The nightly's cadence (vacuum_every=2 here, 7 there): one night after the VACUUM, night 3's
    # replaced files wait; a second night makes a VACUUM due, and it takes them.
    versions.append(_night(uri, 6, mode="overwrite", ids=[60, 61]))
    waits = maintain(uri, keep_nights=1, keep_versions=(versions[0],), retention_hours=0, vacuum_every=2)
    assert waits.vacuum_skipped and waits.vacuumed == [] and _ids(uri, versions[3]) == [30, 31]
    assert waits.lines()[2] == "vacuum: not due (fewer nights than vacuum_every since the last)"
    versions.append(_night(uri, 7, mode="overwrite", ids=[70, 71]))
    due = maintain(uri, keep_nights=1, keep_versions=(versions[0],), retention_hours=0, vacuum_every=2)
    assert not due.vacuum_skipped and due.kept_versions == [versions[0]]
    gone = sorted(f.rsplit("/", 1)[-1] for f in due.vacuumed)
    assert gone == [f"part-{n}.parquet" for n in (3, 4, 5, 6)] and _ids(uri) == [70, 71]


def test_a_checkpoint_is_written_after_enough_commits_and_bad_arguments_are_named(tmp_path):
    uri = str(tmp_path / "emb")
    for n in range(4):
        _night(uri, n)
    assert last_checkpoint(uri) is None
    assert maintain(uri, checkpoint_every=5, min_small_files=10).checkpoint is None  # 4 commits < 5
    done = maintain(uri, checkpoint_every=3, min_small_files=10)  # no compaction: 4 files < 10
    assert done.compacted == (0, 0) and done.checkpoint == 3 == last_checkpoint(uri)
    assert maintain(uri, min_small_files=10).checkpoint is None  # up to date
    _night(uri, 4)
    assert maintain(uri).checkpoint == last_checkpoint(uri) == DeltaTable(uri).version()  # after compaction
    assert _ids(uri) == list(range(10))
    with pytest.raises(TableError, match="no Delta table"):
        maintain(str(tmp_path / "nothing"))
    with pytest.raises(TableError, match="keep_nights"):
        maintain(uri, keep_nights=0)
