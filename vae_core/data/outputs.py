"""Where a batch job may write: a new or empty folder, or a Delta table of its own columns.

An output folder that holds anything else (a model, a dataset, another program's files) is refused
before any work: the job would mix its table into it, and a later `vaeflow vacuum` of that table must
never meet files that are not the table's (tables.vacuum deletes only what the log added, but a
folder of other files is no place for a table either).
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
from fsspec import AbstractFileSystem

from vae_core.data.storage import filesystem, scheme
from vae_core.data.tables import (
    JOB_DIR,
    LOG_DIR,
    Mode,
    delta_schema,
    exists_error,
    is_delta_table,
    table_schema,
)
from vae_core.errors import StorageError, TableError


def _foreign_entries(fs: AbstractFileSystem, root: str) -> list[str]:
    """Entries of the folder that no Delta table writes there: anything but `_delta_log/`, vaeflow's
    `_vaeflow/` and Parquet data files (`part-*.parquet`, the names of vaeflow's jobs and of most Delta
    writers)."""
    fs.invalidate_cache(root)
    try:
        listing = fs.ls(root, detail=True)
    except FileNotFoundError:
        return []
    out = []
    for entry in listing:
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        folder = entry.get("type") == "directory"
        data_file = not folder and name.startswith("part-") and name.endswith(".parquet")
        if data_file or (folder and name in (LOG_DIR, JOB_DIR)):
            continue
        out.append(name + "/" if folder else name)
    return sorted(out)


def check_writable(
    uri: str, mode: Mode, storage_options: dict | None = None, schema: pa.Schema | None = None
) -> None:
    """Refuse up front, before any work, an output a job must not write to: one that holds anything a
    Delta table does not (a model, a dataset, other files: `vaeflow vacuum` of the table later must not
    meet them), an existing table in mode error, or a table whose columns are not `schema`'s."""
    fs, root = filesystem(uri, storage_options)
    if fs.isfile(root):
        raise TableError(f"{uri}: is a file; an output is a folder (a Delta table), new or empty")
    if scheme(uri) == "file":
        _check_local_writable(uri, Path(root))
    foreign = _foreign_entries(fs, root)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise TableError(
            f"{uri}: holds {shown}, which no Delta table writes; write the output to a new or empty folder"
        )
    if not is_delta_table(uri, storage_options):
        return
    if mode == "error":
        raise exists_error(uri)
    if mode == "append" and schema is not None:
        held = table_schema(uri, storage_options)
        ours = delta_schema(schema)
        if held.names != ours.names or any(
            not held.field(n).type.equals(ours.field(n).type) for n in ours.names
        ):
            raise TableError(
                f"{uri}: holds a Delta table with columns {_columns(held)}; this job writes "
                f"{_columns(ours)}. Write to a new output, or --mode overwrite to replace its rows"
            )


def _check_local_writable(uri: str, path: Path) -> None:
    """A local output on a read-only file system or in a folder this user may not write is refused
    before any work (access(2) says so for root too on a read-only mount)."""
    existing = next(p for p in [path, *path.parents] if p.exists())
    if os.access(existing, os.W_OK):
        return
    read_only = os.statvfs(existing).f_flag & os.ST_RDONLY
    raise StorageError(
        f"{uri}: cannot be written: {existing} is on a read-only file system"
        if read_only
        else f"{uri}: cannot be written: no write permission on {existing}"
    )


def _columns(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name} {f.type}" for f in schema)
