"""Small object-store primitives: atomic JSON writes and reads, and fingerprints of input files.

A single-key PUT is atomic on S3 (readers see the old object or the new one); on a local disk a
file is written to a temporary name and renamed over the old one. Job outputs are Delta tables
(vae_core.data.tables); these helpers serve the registry, drift records and reports.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from vae_core.data.storage import filesystem, scheme


def atomic_write_bytes(uri: str, data: bytes, storage_options: dict | None = None) -> None:
    """Replace the object at `uri` with `data` in one step: readers see the old bytes or the new."""
    fs, path = filesystem(uri, storage_options)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if scheme(uri) == "file":
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX
    else:
        fs.pipe_file(path, data)  # one PUT; S3 never exposes a partial object


def atomic_write_json(uri: str, obj: Any, storage_options: dict | None = None) -> None:
    atomic_write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True).encode(), storage_options)


def read_json(uri: str, storage_options: dict | None = None) -> Any | None:
    """The JSON object at `uri`, or None when there is none."""
    fs, path = filesystem(uri, storage_options)
    fs.invalidate_cache(path)
    try:
        with fs.open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None


def content_fingerprint(uri: str, storage_options: dict | None = None) -> str:
    """A fingerprint of the file's content, not its name or time: S3's ETag (an MD5 of the bytes, or of
    the parts' MD5s for a multipart upload) with the size, where the store gives one; else a SHA-1 of
    the bytes themselves (local files)."""
    fs, path = filesystem(uri, storage_options)
    info = fs.info(path)
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return f"etag:{str(etag).strip(chr(34))}:{info.get('size')}"
    h = hashlib.sha1(usedforsecurity=False)
    with fs.open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return f"sha1:{h.hexdigest()}:{info.get('size')}"


def content_fingerprints(uris: list[str], storage_options: dict | None = None) -> dict[str, str]:
    """uri -> content_fingerprint(uri), eight files at a time."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        found = pool.map(lambda uri: content_fingerprint(uri, storage_options), uris)
        return dict(zip(uris, found, strict=True))


def fingerprint(
    uris: list[str],
    storage_options: dict | None = None,
    extra: Any = None,
    prints: dict[str, str] | None = None,
) -> str:
    """A hash of the input files' names and contents (content_fingerprint: a re-upload or a touch of
    the same bytes changes nothing; `prints` when the caller has them already) and `extra`
    (parameters, model version)."""
    prints = prints if prints is not None else content_fingerprints(uris, storage_options)
    h = hashlib.sha256()
    for uri in sorted(uris):
        h.update(f"{uri}\0{prints[uri]}\n".encode())
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]
