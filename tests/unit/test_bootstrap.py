"""The bootstrap imports a bundled dataset only into an empty location: it never deletes or mixes."""

import hashlib
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows import tasks
from vae_core.config import VaeflowConfig
from vae_core.data.dataset import list_shards
from vae_core.data.importers import import_bundled
from vae_core.errors import DataError


@pytest.fixture(autouse=True)
def _plain_logger(monkeypatch):
    """Tasks log through Prefect's run logger; called with `.fn` outside a run, use a plain one."""
    monkeypatch.setattr(tasks, "get_run_logger", lambda: logging.getLogger("test-bootstrap"))


def _snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under root: sha256 of each file, '<dir>' for each folder."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
        for p in sorted(root.rglob("*"))
    }


def _config(uri: str) -> VaeflowConfig:
    return VaeflowConfig.model_validate({"name": "m", "data": {"uri": uri}})


def test_a_bootstrap_into_a_root_holding_data_is_refused_and_changes_nothing(tmp_path):
    # The case from issue 12: train/ empty, a user's test/ split and a notes file.
    root = tmp_path / "mine"
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    pq.write_table(pa.table({"id": [1, 2, 3], "x": [0.1, 0.2, 0.3]}), root / "test" / "part-0.parquet")
    (root / "NOTES.txt").write_text("where these rows came from\n")
    before = _snapshot(root)
    assert set(before) == {"NOTES.txt", "test", "test/part-0.parquet", "train"}

    with pytest.raises(DataError) as refused:
        tasks.ensure_dataset.fn(_config(str(root)), "mnist")
    message = str(refused.value)
    assert str(root) in message and "not empty" in message
    assert "NOTES.txt" in message and "test/part-0.parquet" in message
    assert "nothing was written or removed" in message
    assert _snapshot(root) == before  # byte for byte, no file added or removed


def test_without_a_bootstrap_missing_shards_are_an_error(tmp_path):
    with pytest.raises(DataError, match="train"):
        tasks.ensure_dataset.fn(_config(str(tmp_path / "nothing")), None)
    assert not (tmp_path / "nothing").exists()


def test_existing_training_shards_are_used_as_they_are(tmp_path):
    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    pq.write_table(pa.table({"id": [1]}), root / "train" / "part-0.parquet")
    before = _snapshot(root)
    assert tasks.ensure_dataset.fn(_config(str(root)), "mnist") == str(root)
    assert _snapshot(root) == before


@pytest.mark.parametrize("layout", ["missing", "empty folders"])
def test_the_bootstrap_imports_into_a_missing_or_empty_location(tmp_path, layout):
    root = tmp_path / "demo"
    if layout == "empty folders":
        (root / "train").mkdir(parents=True)
    assert tasks.ensure_dataset.fn(_config(str(root)), "adult") == str(root)
    assert pq.read_table(list_shards(str(root / "train"))).num_rows == 32_561
    assert pq.read_table(list_shards(str(root / "test"))).num_rows == 16_281


def test_a_failed_bundled_import_leaves_nothing_it_wrote(tmp_path, monkeypatch):
    import vae_core.data.importers as importers

    def broken(split: str) -> pa.Table:
        if split == "test":
            raise OSError("source broke")
        return real(split)

    real = importers.read_adult
    monkeypatch.setattr(importers, "read_adult", broken)
    with pytest.raises(OSError, match="source broke"):
        import_bundled("adult", str(tmp_path / "demo"), progress=lambda m: None)
    assert [p for p in (tmp_path / "demo").rglob("*") if p.is_file()] == []  # train/ shards gone too
