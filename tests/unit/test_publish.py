"""The publish protocol without Ray: atomic writes, manifested reads, stale attempts, fingerprints."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vae_core.publish import (
    Manifest,
    PublishError,
    atomic_write_json,
    attempt_uri,
    discard_stale_attempts,
    fingerprint,
    read_json,
    read_manifest,
    read_published,
)


def _stage(out: str, attempt: str, ids: list[int], name: str = "part-0.parquet") -> None:
    path = attempt_uri(out, attempt)
    os.makedirs(path, exist_ok=True)
    pq.write_table(pa.table({"id": ids}), f"{path}/{name}")


def _manifest(out: str, attempt: str) -> Manifest:
    """A manifest of the files staged by `attempt` so far (as a job's summaries would list them)."""
    folder = attempt_uri(out, attempt)
    files = [
        {"path": f"attempts/{attempt}/{name}", "rows": pq.read_metadata(f"{folder}/{name}").num_rows}
        for name in sorted(os.listdir(folder))
    ]
    return Manifest(
        kind="test",
        run_key="k1",
        attempt=attempt,
        files=files,
        rows=sum(f["rows"] for f in files),
        schema=[{"name": "id", "type": "int64"}],
    )


def test_atomic_write_replaces_whole_and_leaves_no_temporary_files(tmp_path):
    uri = str(tmp_path / "out" / "pointer.json")
    atomic_write_json(uri, {"version": 1})
    atomic_write_json(uri, {"version": 2})
    assert read_json(uri) == {"version": 2}
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["pointer.json"]
    assert read_json(str(tmp_path / "missing.json")) is None


def test_readers_see_only_manifested_files(tmp_path):
    out = str(tmp_path / "emb")
    with pytest.raises(PublishError, match="nothing published"):
        read_published(out)
    _stage(out, "a1", [1, 2, 3])
    assert read_manifest(out) is None  # staged, not published
    atomic_write_json(f"{out}/_manifest.json", _manifest(out, "a1").to_dict())
    _stage(out, "a1", [99], name="part-stray.parquet")  # written after publishing: not listed
    _stage(out, "crashed", [4, 5])
    assert sorted(read_published(out).column("id").to_pylist()) == [1, 2, 3]
    assert read_manifest(out).rows == 3


def test_stale_attempts_are_discarded_and_the_published_one_kept(tmp_path):
    out = str(tmp_path / "emb")
    _stage(out, "good", [1])
    atomic_write_json(f"{out}/_manifest.json", _manifest(out, "good").to_dict())
    _stage(out, "crashed1", [2])
    _stage(out, "crashed2", [3])
    removed = discard_stale_attempts(out)
    assert sorted(r.rsplit("/", 1)[-1] for r in removed) == ["crashed1", "crashed2"]
    assert sorted(p.name for p in (tmp_path / "emb" / "attempts").iterdir()) == ["good"]
    assert read_published(out).column("id").to_pylist() == [1]


def test_a_foreign_json_is_not_a_manifest(tmp_path):
    out = str(tmp_path / "x")
    atomic_write_json(f"{out}/_manifest.json", {"format": "something/else"})
    with pytest.raises(PublishError, match="not a vaeflow manifest"):
        read_manifest(out)


def test_fingerprint_follows_content_and_parameters(tmp_path):
    f = tmp_path / "a.parquet"
    pq.write_table(pa.table({"id": [1, 2]}), f)
    first = fingerprint([str(f)], extra={"p": 1})
    assert fingerprint([str(f)], extra={"p": 1}) == first
    assert fingerprint([str(f)], extra={"p": 2}) != first
    pq.write_table(pa.table({"id": [1, 2, 3]}), f)
    assert fingerprint([str(f)], extra={"p": 1}) != first


def test_memory_uri_round_trip():
    atomic_write_json("memory://publish-test/x.json", {"a": 1})
    assert read_json("memory://publish-test/x.json") == {"a": 1}
