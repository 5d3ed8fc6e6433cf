"""Maintenance of Delta outputs written night after night: compaction, log checkpoints, VACUUM.

A nightly incremental embed appends a commit and a few small files each night. Left alone, after a
year a reader opens hundreds of small files, and the table folder holds every file an overwrite
ever replaced. `maintain` (the nightly's last step, and `vaeflow maintain --table URI`) does three
things, each a no-op when there is nothing to do, so a rerun (or a rerun after a crash) changes
nothing more:

  - compaction: when the latest version has at least `min_small_files` files smaller than
    `target_bytes`, Delta OPTIMIZE rewrites them into fewer files in ONE commit that changes no data
    (Delta's `dataChange: false`). vaeflow's readers of the log (tables.history: run keys, the
    incremental state of embed) skip such commits, so they survive it. A compaction killed before its
    commit leaves only files no version references: readers never see them.
  - a log checkpoint when `checkpoint_every` commits followed the last one (by default any: the
    nightly checkpoints after its commits, and delta-rs also writes one at every 100th version), so
    opening the table reads one Parquet file and no JSON commit, however long the log.
  - VACUUM in lite mode, once `vacuum_every` nights followed the last (it lists the table's files and
    reads every retained version; the nightly's is weekly): only files that a commit once added and a
    later commit removed, and of those only files that no retained version reads: the versions of the
    last `keep_nights` vaeflow commits,
    any `keep_versions` (e.g. the champion's), the latest, and whatever was removed within
    `retention_hours` (a reader that opened the table just before a compaction still finds its
    files). Never a file the log did not add (another program's, or a crashed job's).

Commit JSON files stay: vaeflow's commits and these ones ask delta-rs not to clean up expired logs
(`cleanup_expired_logs=False`), because the log's commit records are how a rerun knows it already
committed and which shards a table holds; the checkpoints keep reads fast without deleting them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from vae_core.data.objects import read_json
from vae_core.data.storage import join
from vae_core.data.tables import COMMIT_KEY, LOG_DIR, _open, file_sizes, is_delta_table, keep_logs, now_iso
from vae_core.errors import TableConflict, TableError

MAINTENANCE_KEY = "vaeflow.maintenance"  # commit metadata of maintenance commits (JSON)
TARGET_BYTES = 128 * 2**20  # compacted files aim at this size; smaller files count as small
MIN_SMALL_FILES = 2  # compact when the latest version has this many small files
CHECKPOINT_EVERY = 1  # commits after the last checkpoint that make `maintain` write one: every night
KEEP_NIGHTS = 7  # the versions of this many latest vaeflow commits keep their files
VACUUM_EVERY = 0  # vaeflow commits (nights) since the last VACUUM that make one due; 0: always (nightly: 7)
RETENTION_HOURS = 24  # files removed more recently than this are kept too


@dataclass
class Maintenance:
    """What one `maintain` did to the table at `uri`."""

    uri: str
    version: int  # the latest version afterwards
    compacted: tuple[int, int] = (0, 0)  # (files removed, files added) by the compaction commit
    small_files: int = 0  # files below the target size before compaction
    checkpoint: int | None = None  # the version a checkpoint was written for, if one was
    kept_versions: list[int] = field(default_factory=list)  # versions whose files VACUUM kept
    vacuumed: list[str] = field(default_factory=list)  # files deleted (or, dry run, to delete)
    dry_run: bool = False
    vacuum_skipped: bool = False  # a VACUUM ran within the last vacuum_every nights

    def lines(self) -> list[str]:
        removed, added = self.compacted
        verb = "would delete" if self.dry_run else "deleted"
        return [
            f"compaction: {removed} small files into {added}" if removed
            else f"compaction: would compact {self.small_files} small files"
            if self.dry_run and self.small_files else "compaction: nothing to do",
            f"checkpoint: written at version {self.checkpoint}" if self.checkpoint is not None else
            "checkpoint: up to date",
            "vacuum: not due (fewer nights than vacuum_every since the last)" if self.vacuum_skipped else
            f"vacuum: {verb} {len(self.vacuumed)} files no retained version reads (kept: versions "
            f"{', '.join(map(str, self.kept_versions)) or '-'} and the latest, {self.version})",
        ]  # fmt: skip


def _props(kind: str, **extra: Any) -> tuple[Any, Any]:
    from deltalake.transaction import CommitProperties

    record = json.dumps({"kind": kind, "at": now_iso(), **extra}, sort_keys=True)
    return CommitProperties(custom_metadata={MAINTENANCE_KEY: record}), keep_logs()


def _small_files(table: Any, target_bytes: int) -> int:
    sizes = table.get_add_actions(flatten=True).column("size_bytes").to_pylist()
    return sum(1 for s in sizes if s < target_bytes)


def last_checkpoint(uri: str, storage_options: dict | None = None) -> int | None:
    """The version of the table's latest checkpoint (`_delta_log/_last_checkpoint`), None without one."""
    pointer = read_json(join(uri, LOG_DIR, "_last_checkpoint"), storage_options)
    return int(pointer["version"]) if isinstance(pointer, dict) and "version" in pointer else None


def _recent(table: Any, nights: int) -> list[dict[str, Any]]:
    """The table's newest commits (newest first), back to the `nights`-th latest vaeflow commit or the
    first commit."""
    limit = 4 * nights + 8  # a night is one data commit and up to three maintenance ones
    while True:
        commits = table.history(limit)
        if sum(1 for c in commits if c.get(COMMIT_KEY)) >= nights or len(commits) < limit:
            return commits
        limit *= 4


def retained_versions(table: Any, keep_nights: int) -> list[int]:
    """The versions of the `keep_nights` latest vaeflow commits (the nights a user may read back)."""
    return sorted([int(c["version"]) for c in _recent(table, keep_nights) if c.get(COMMIT_KEY)][:keep_nights])


def vacuum_due(table: Any, every: int) -> bool:
    """Whether `every` vaeflow commits (nights) were made since the last VACUUM (or since the table
    began): a VACUUM lists the table's files and reads every retained version, so the nightly runs one
    a week (every=7); every=0: always."""
    if every <= 0:
        return True
    seen = 0
    for commit in _recent(table, every):  # newest first
        if commit.get("operation") == "VACUUM END":
            return False
        if commit.get(COMMIT_KEY):
            seen += 1
            if seen >= every:
                return True
    return False


def maintain(
    uri: str,
    storage_options: dict | None = None,
    keep_nights: int = KEEP_NIGHTS,
    keep_versions: tuple[int, ...] = (),
    retention_hours: int = RETENTION_HOURS,
    min_small_files: int = MIN_SMALL_FILES,
    target_bytes: int = TARGET_BYTES,
    checkpoint_every: int = CHECKPOINT_EVERY,
    vacuum_every: int = VACUUM_EVERY,
    dry_run: bool = False,
) -> Maintenance:
    """Compact, checkpoint and vacuum the Delta table at `uri` (module docstring); VACUUM when
    `vacuum_every` vaeflow commits followed the last one (vacuum_due). `dry_run` changes nothing and
    lists what VACUUM would delete, whenever it last ran."""
    from deltalake.exceptions import CommitFailedError

    if not is_delta_table(uri, storage_options):
        raise TableError(
            f"{uri}: no Delta table there (maintain takes a table vaeflow or another tool wrote)"
        )
    if keep_nights < 1:
        raise TableError(f"{uri}: keep_nights must be at least 1, got {keep_nights}")
    table = _open(uri, storage_options)
    small = _small_files(table, target_bytes)
    done = Maintenance(
        uri, table.version(), small_files=small if small >= min_small_files else 0, dry_run=dry_run
    )
    if not dry_run and done.small_files:
        commit, hooks = _props("compaction", version=table.version())
        try:
            metrics = table.optimize.compact(
                target_size=target_bytes, commit_properties=commit, post_commithook_properties=hooks
            )
        except CommitFailedError as e:
            raise TableConflict(
                f"{uri}: another writer changed the files being compacted; nothing was compacted, "
                f"run maintain again ({str(e).splitlines()[0]})"
            ) from e
        done.compacted = (int(metrics["numFilesRemoved"]), int(metrics["numFilesAdded"]))
        table.update_incremental()
    latest = table.version()
    done.kept_versions = sorted({*retained_versions(table, keep_nights), *keep_versions} - {latest})
    commit, hooks = _props("vacuum", kept_versions=done.kept_versions)

    def vacuum(dry: bool) -> list[str]:
        return table.vacuum(
            retention_hours=retention_hours,
            dry_run=dry,
            enforce_retention_duration=False,
            full=False,  # lite: files the log added and removed, never one it did not add
            keep_versions=done.kept_versions or None,
            commit_properties=commit,
            post_commithook_properties=hooks,
        )

    # A real VACUUM commits twice (VACUUM START/END) even with nothing to delete, and lists removed
    # files that an earlier VACUUM already deleted: it runs only when one of them is still there.
    present = set(file_sizes(uri, storage_options))

    def still_there(files: list[str]) -> list[str]:
        return [f for f in files if f.rstrip("/").rsplit("/", 1)[-1] in present]

    done.vacuum_skipped = not dry_run and not vacuum_due(table, vacuum_every)
    if not done.vacuum_skipped:
        done.vacuumed = still_there(vacuum(dry=True))
    if done.vacuumed and not dry_run:
        done.vacuumed = still_there(vacuum(dry=False))
    # Last, so that it covers the VACUUM's commits too: opening the table then reads no JSON commit.
    table.update_incremental()
    done.version = table.version()
    since = done.version - (last_checkpoint(uri, storage_options) or -1)
    if not dry_run and since >= checkpoint_every:
        table.create_checkpoint()
        done.checkpoint = done.version
    return done


def vacuum(
    uri: str, retention_hours: int, dry_run: bool = True, storage_options: dict | None = None
) -> list[str]:
    """Delta VACUUM in lite mode: the files that a commit added and a later commit older than
    `retention_hours` removed (rows replaced by overwrites). Nothing the log never added is touched:
    not another program's files, and not the files of a crashed job (its rerun commits them under
    the same names). Deletes only without `dry_run`; returns the files."""
    return _open(uri, storage_options).vacuum(
        retention_hours=retention_hours, dry_run=dry_run, enforce_retention_duration=False, full=False
    )  # not full: only files the log once added and later removed, never a file the table did not write
