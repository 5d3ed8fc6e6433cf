"""Exactly-once publishing to object storage: staged attempts, then one atomic manifest PUT.

Layout of a published output (any URI):
    <output>/_manifest.json                  the publish point, written last as a single PUT
    <output>/attempts/<attempt>/*.parquet    data files of one attempt (staging until manifested)

A writer stages every file under a fresh attempt prefix and publishes by writing the manifest (files,
row counts, schema, model, input fingerprint, run key). Readers trust only files the manifest lists,
so a crashed attempt is never visible; the next run deletes attempts the manifest does not name.
A single-key PUT is atomic on S3 (readers see the old object or the new one); on a local disk the
manifest is written to a temporary name and renamed over the old one.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from vae_core.storage import arrow_filesystem, filesystem, join, scheme, uri_of

MANIFEST_FILE = "_manifest.json"
ATTEMPTS_DIR = "attempts"
MANIFEST_FORMAT = "vaeflow-manifest/1"


class PublishError(RuntimeError):
    """An output cannot be published or read as published (conflicting run, missing files)."""


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


def schema_to_json(schema: pa.Schema) -> list[dict[str, str]]:
    return [{"name": f.name, "type": str(f.type)} for f in schema]


@dataclass
class Manifest:
    """What a published output holds; `files` are relative to the output URI."""

    kind: str
    run_key: str
    attempt: str
    files: list[dict[str, Any]]
    rows: int
    schema: list[dict[str, str]]
    model: dict[str, Any] = field(default_factory=dict)
    input: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    format: str = MANIFEST_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def file_uris(self, output_uri: str) -> list[str]:
        """URIs of the data files this manifest publishes under `output_uri`."""
        return [join(output_uri, f["path"]) for f in self.files]

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str) -> Manifest:
        if d.get("format") != MANIFEST_FORMAT:
            raise PublishError(f"{source}: not a vaeflow manifest (format {d.get('format')!r})")
        return cls(**d)


def read_manifest(output_uri: str, storage_options: dict | None = None) -> Manifest | None:
    """The manifest of a published output, or None when nothing has been published there."""
    uri = join(output_uri, MANIFEST_FILE)
    d = read_json(uri, storage_options)
    return None if d is None else Manifest.from_dict(d, uri)


def published_files(output_uri: str, storage_options: dict | None = None) -> list[str]:
    """URIs of the published data files; raises PublishError when nothing is published."""
    manifest = read_manifest(output_uri, storage_options)
    if manifest is None:
        raise PublishError(f"{output_uri}: nothing published (no {MANIFEST_FILE})")
    return manifest.file_uris(output_uri)


def read_published(
    output_uri: str, columns: list[str] | None = None, storage_options: dict | None = None
) -> pa.Table:
    """The published rows as one table (for tests and small outputs; stream large ones by file)."""
    files = published_files(output_uri, storage_options)
    tables = []
    for uri in files:
        fs, path = arrow_filesystem(uri, storage_options)
        tables.append(pq.read_table(path, filesystem=fs, columns=columns))
    return pa.concat_tables(tables) if tables else pa.table({})


def new_attempt() -> str:
    return uuid.uuid4().hex[:12]


def attempt_uri(output_uri: str, attempt: str) -> str:
    return join(output_uri, ATTEMPTS_DIR, attempt)


def discard_stale_attempts(
    output_uri: str, storage_options: dict | None = None, keep: str | None = None
) -> list[str]:
    """Delete attempt folders other than the published one (left by crashed runs); returns them.

    `keep` names the published attempt when the caller has the manifest at hand; else it is read.
    """
    if keep is None:
        manifest = read_manifest(output_uri, storage_options)
        keep = manifest.attempt if manifest else None
    fs, root = filesystem(join(output_uri, ATTEMPTS_DIR), storage_options)
    fs.invalidate_cache(root)
    if not fs.exists(root):
        return []
    stale = []
    for p in fs.ls(root, detail=False):
        p = p.rstrip("/")
        # Object stores may list the folder's own marker object ("attempts/") among its children.
        if p != root.rstrip("/") and p.rsplit("/", 1)[-1] != keep:
            stale.append(p)
    for p in stale:
        fs.rm(p, recursive=True)
    return [uri_of(output_uri, p) for p in stale]


def fingerprint(uris: list[str], storage_options: dict | None = None, extra: Any = None) -> str:
    """A hash of the input files (path, size, ETag or mtime) and `extra` (parameters, model version)."""
    h = hashlib.sha256()
    for uri in sorted(uris):
        fs, path = filesystem(uri, storage_options)
        info = fs.info(path)
        tag = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified")
        h.update(f"{uri}\0{info.get('size')}\0{tag}\n".encode())
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]
