"""URIs to filesystems: every location (local path, file://, s3://, memory://) goes through one place.

S3 endpoint and credentials come from the standard AWS environment and config (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_PROFILE, ...) or from explicit `storage_options`; nothing is provider-specific.
"""

from __future__ import annotations

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
