"""S3 writes are single PUTs: the filesystems storage.py hands out (no network needed)."""

from __future__ import annotations

import pickle

import pyarrow.fs as pafs
import pytest

from vae_core.data.storage import SINGLE_PUT_MAX, SinglePutS3FileSystem, arrow_filesystem, filesystem


@pytest.fixture(autouse=True)
def _no_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens: no real S3
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "fake")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake")


def test_s3_filesystem_writes_files_in_one_put_and_keeps_options() -> None:
    fs, path = filesystem("s3://bucket/a/b.parquet", {"anon": False, "use_listings_cache": False})
    assert isinstance(fs, SinglePutS3FileSystem) and path == "bucket/a/b.parquet"
    assert fs.storage_options == {"anon": False, "use_listings_cache": False}
    f = fs.open(path, "wb")  # opening for writing sends nothing; closing before the block PUTs once
    assert f.blocksize == SINGLE_PUT_MAX
    f.discard()  # drop the buffer; marking it closed stops a PUT when it is collected
    f.closed = True


def test_local_and_memory_filesystems_are_unchanged() -> None:
    assert not isinstance(filesystem("memory://x/y")[0], SinglePutS3FileSystem)
    assert not isinstance(filesystem("/tmp/x")[0], SinglePutS3FileSystem)


def test_arrow_filesystem_for_writing_wraps_single_put_s3fs_and_pickles() -> None:
    fs, path = arrow_filesystem("s3://bucket/runs", for_writing=True)
    assert isinstance(fs, pafs.PyFileSystem) and path == "bucket/runs"
    assert isinstance(fs.handler.fs, SinglePutS3FileSystem)
    assert fs.handler.fs.storage_options["use_listings_cache"] is False  # sees other processes' files
    # Ray Train ships RunConfig.storage_filesystem to its workers by pickle.
    assert isinstance(pickle.loads(pickle.dumps(fs)).handler.fs, SinglePutS3FileSystem)
    # Reads keep pyarrow's native S3 client; local paths are local either way.
    assert isinstance(arrow_filesystem("s3://bucket/runs")[0], pafs.S3FileSystem)
    assert isinstance(arrow_filesystem("/tmp/runs", for_writing=True)[0], pafs.LocalFileSystem)
