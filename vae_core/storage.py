"""URIs to filesystems: every location (local path, file://, s3://, memory://) goes through one place.

S3 endpoint and credentials come from the standard AWS environment and config (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_PROFILE, ...) or from explicit `storage_options`; nothing is provider-specific.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
import uuid
from typing import Any

import fsspec
import pyarrow.fs as pafs
from fsspec import AbstractFileSystem


def scheme(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else "file"


def filesystem(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[AbstractFileSystem, str]:
    """Resolve a URI to (fsspec filesystem, path inside it)."""
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    return fs, path


def arrow_filesystem(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[pafs.FileSystem, str]:
    """Resolve a URI to (pyarrow filesystem, path inside it) for pyarrow.parquet and Ray Data.

    Local and S3 URIs get pyarrow's native filesystems (fast C++ I/O; S3 honours AWS_ENDPOINT_URL);
    other schemes, or S3 with explicit options, go through fsspec wrapped for pyarrow.
    """
    kind = scheme(uri)
    if kind == "file":
        return pafs.LocalFileSystem(), fsspec.core.url_to_fs(uri)[1]
    if kind == "s3" and not storage_options:
        return pafs.FileSystem.from_uri(uri)
    fs, path = filesystem(uri, storage_options)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def uri_of(uri_with_scheme: str, path: str) -> str:
    """Rebuild a URI for `path` inside the filesystem of `uri_with_scheme`."""
    kind = scheme(uri_with_scheme)
    return path if kind == "file" else f"{kind}://{path.lstrip('/')}"


# memory:// lives in this process: a lock makes its check-then-write atomic.
_MEMORY_CREATE_LOCK = threading.Lock()


def _s3_write_in_flight(error: OSError) -> bool:
    """S3 answers 409 ConditionalRequestConflict while another conditional write of the key is in flight."""
    response = getattr(error.__cause__, "response", None) or {}
    return error.errno == errno.EBUSY or response.get("Error", {}).get("Code") == "ConditionalRequestConflict"


def create_only_write(uri: str, data: bytes, storage_options: dict[str, Any] | None = None) -> bool:
    """Write `data` to `uri` only if no object is there yet: True when written, False when one exists.

    Atomic against concurrent writers, so it can carry a compare-and-swap: of several writers of one
    key exactly one gets True. Local files: a fsynced temporary file hard-linked to the name (`link`
    refuses an existing name); S3: a conditional PUT (If-None-Match: *); memory:// (tests): a check
    and a write under a process lock. Other schemes raise ValueError rather than write unconditionally.
    """
    fs, path = filesystem(uri, storage_options)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    kind = scheme(uri)
    if kind == "file":
        if parent:
            fs.makedirs(parent, exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)  # the name, once linked, keeps the data
    if kind == "s3":
        for attempt in range(5):
            try:
                fs.pipe_file(path, data, mode="create")
                return True
            except FileExistsError:
                return False
            except OSError as e:
                if not _s3_write_in_flight(e) or attempt == 4:
                    raise
                time.sleep(0.05 * 2**attempt)  # the other write settles, then ours gets 412
    if kind == "memory":
        with _MEMORY_CREATE_LOCK:
            if fs.exists(path):
                return False
            if parent:
                fs.makedirs(parent, exist_ok=True)
            fs.pipe_file(path, data)
            return True
    raise ValueError(f"{uri}: no create-only write for scheme {kind!r} (file, s3 and memory have one)")
