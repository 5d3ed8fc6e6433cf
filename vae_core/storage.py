"""URIs to filesystems: every location (local path, file://, s3://, memory://) goes through fsspec."""

from __future__ import annotations

import fsspec
from fsspec import AbstractFileSystem


def filesystem(uri: str) -> tuple[AbstractFileSystem, str]:
    """Resolve a URI to (fsspec filesystem, path inside it). S3 settings come from the AWS environment."""
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])
