"""Job outputs as Delta Lake tables: one job is one atomic commit, its run key recorded in the log.

A batch job's workers write Parquet files straight into the table's folder, under names that hold
the job's run key and a digest of their content; the driver then commits them in ONE Delta commit
(delta-rs: a create-only write of the next `_delta_log/<version>.json`, a conditional PUT on S3, so
no lock service is needed). Until that commit the files are invisible to every Delta reader
(deltalake, polars, Spark, DuckDB, Ray Data's read_delta); a crashed job leaves only unreferenced
files, which no vaeflow code deletes (the job's rerun commits them under the same names). `vaeflow
vacuum` and `vaeflow maintain` (data/maintenance.py: compaction, checkpoints, VACUUM under the
nightly's retention) are the only code that deletes files: those that a later commit removed, never
one that the log did not add.

Each commit carries:
  - an application transaction (Delta `txn` action, app id `vaeflow-<run key>`), so "this job has
    already committed" is decided from the table log itself, by any Delta client;
  - commit metadata `vaeflow` (a JSON `CommitRecord`: kind, run key, model URI and fingerprint,
    input URI and fingerprint, rows, parameters, statistics such as the aggregate-posterior moments
    the nightly drift check reads) plus `vaeflow.run_key` and `vaeflow.night` as plain strings.

Modes: "error" (the table must not exist yet), "overwrite" (a new version replaces the rows;
earlier versions stay readable by version: `DeltaTable(uri, version=v)`; nothing is deleted),
"append" (a new version adds rows). Concurrent writers: Delta's optimistic concurrency makes the
loser of a commit race fail (`TableConflict`, with a clear message) or, for compatible appends,
retry; a commit never references a file that is not there, because the driver checks every file
before committing.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vae_core.data.storage import arrow_filesystem, delta_storage_options, filesystem, join
from vae_core.errors import TableConflict, TableError

Mode = Literal["error", "overwrite", "append"]
MODES: tuple[Mode, ...] = ("error", "overwrite", "append")
COMMIT_KEY = "vaeflow"  # commit metadata key holding the JSON CommitRecord
LOG_DIR = "_delta_log"
JOB_DIR = "_vaeflow"  # a job's markers of finished input shards (distributed/jobs.py); Delta ignores it
COMMIT_ATTEMPTS, COMMIT_BACKOFF_S = 4, 1.0  # a commit request the object store drops is sent again
FIND_PAGE = 16  # commits find_commit reads first (then 8x as many, and so on)
RACE_ATTEMPTS = 8  # an append whose ids must be new re-checks them this often when another commit lands first


@dataclass
class DataFile:
    """A Parquet file a worker wrote into the table folder (path relative to the table root)."""

    path: str
    rows: int
    bytes: int


@dataclass
class NewIds:
    """The ids an append adds, which must not be in the table: checked against the table as of
    `base_version` before the job ran, and again at commit time against every file committed since."""

    column: str
    values: pa.Array | range  # range: integer ids (or their decimal text) first, ..., last
    base_version: int | None  # None: the table did not exist


def _numeric(ids: pa.ChunkedArray) -> pa.ChunkedArray:
    """Integer ids as they are; text ids only those that are decimal digits (generated ids' text)."""
    if pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type):
        return pc.filter(ids, pc.fill_null(pc.utf8_is_digit(ids), False))
    return ids


def _repeated(theirs: pa.ChunkedArray, ours: pa.Array | range) -> pa.ChunkedArray:
    """The values of `theirs` that are among `ours`."""
    if not isinstance(ours, range):
        return pc.filter(theirs, pc.is_in(theirs, value_set=ours))
    theirs = _numeric(theirs)
    numbers = pc.cast(theirs, pa.int64())
    inside = pc.and_(pc.greater_equal(numbers, ours.start), pc.less(numbers, ours.stop))
    return pc.filter(theirs, pc.fill_null(inside, False))


def next_id(uri: str, column: str, storage_options: dict | None = None) -> tuple[int | None, int]:
    """(the table's version or None, the integer after the largest integer id in `column`, else 0):
    where an append of generated ids starts, so that it repeats none of the table's."""
    held = held_ids(uri, column, storage_options)
    if held is None:
        return None, 0
    version, ids = held
    largest = pc.max(pc.cast(_numeric(pa.chunked_array([ids])), pa.int64())).as_py()
    return version, 0 if largest is None else int(largest) + 1


def held_ids(uri: str, column: str, storage_options: dict | None = None) -> tuple[int, pa.Array] | None:
    """(version, the id column's values at that version) of the table at uri, or None if there is none."""
    if not is_delta_table(uri, storage_options):
        return None
    table = _open(uri, storage_options)
    return table.version(), table.to_pyarrow_table(columns=[column]).column(0).combine_chunks()


def _refuse_repeated_ids(uri: str, ids: NewIds, table: Any, storage_options: dict | None) -> None:
    """TableConflict if a file committed after ids.base_version (up to `table`'s version) holds one of
    ids.values: another writer appended those rows while this job ran."""
    base = ids.base_version
    before = set() if base is None else set(_open(uri, storage_options, base).file_uris())
    for file in sorted(set(table.file_uris()) - before):
        fs, path = arrow_filesystem(file, storage_options)
        repeated = _repeated(pq.read_table(path, columns=[ids.column], filesystem=fs).column(0), ids.values)
        if len(repeated):
            raise TableConflict(
                f"{uri}: another writer committed {len(repeated):,} of this job's {ids.column!r} values "
                f"(e.g. {repeated[0].as_py()!r}) while it ran (table version {table.version()}); this job "
                "committed nothing. Rerun it: an incremental run embeds only what is still new."
            )


@dataclass
class CommitRecord:
    """What one job committed, stored in the commit's metadata (what a manifest used to hold)."""

    kind: str  # "embeddings" | "samples"
    run_key: str
    rows: int
    model: dict[str, Any] = field(default_factory=dict)  # uri, fingerprint, epoch
    input: dict[str, Any] = field(default_factory=dict)  # uri, shards, rows, fingerprint
    params: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)  # e.g. {"z_mean": {count, mean, var}}
    night: str | None = None
    created_at: str = ""
    mode: str = ""  # how it committed (Mode): "append" adds to the rows before it; "" in older records

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CommitRecord:
        return cls(**json.loads(text))


@dataclass
class Committed:
    """The outcome of a job: the table, the version holding the job's rows, and what it committed."""

    table_uri: str
    version: int
    record: CommitRecord
    files: list[str]  # URIs of the data files this job committed (empty when skipped)
    skipped: bool  # True when this run key was already committed: the rerun did nothing
    job_stats: str = field(default="", repr=False)  # the engine's per-stage timings, when it ran

    @property
    def rows(self) -> int:
        return self.record.rows


# Delta Lake has signed integers only: an unsigned column is stored in the next wider signed type
# (uint8 pixels as short), so that every Delta reader sees the values the job wrote.
_WIDER = {pa.uint8(): pa.int16(), pa.uint16(): pa.int32(), pa.uint32(): pa.int64()}


def _delta_type(t: pa.DataType, name: str) -> pa.DataType:
    if t in _WIDER:
        return _WIDER[t]
    if t == pa.uint64():
        raise TableError(f"column {name!r} is uint64, which no Delta type holds; cast it to int64 first")
    if pa.types.is_dictionary(t):
        return _delta_type(t.value_type, name)
    if pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t):
        # Delta arrays have no fixed size; polars refuses a fixed-size list under an array schema.
        return pa.list_(_delta_type(t.value_type, name))
    return t


def delta_schema(schema: pa.Schema) -> pa.Schema:
    """`schema` with types every Delta reader agrees on: unsigned -> wider signed, dictionary ->
    its values, fixed-size list -> list (a vector column keeps its length in the data, not the type)."""
    return pa.schema([pa.field(f.name, _delta_type(f.type, f.name), f.nullable) for f in schema])


def to_delta(table: pa.Table) -> pa.Table:
    """Cast a batch to `delta_schema` before it is written as a data file of a Delta table."""
    target = delta_schema(table.schema)
    return table if target == table.schema else table.cast(target)


def app_id(run_key: str) -> str:
    return f"vaeflow-{run_key}"


def is_delta_table(uri: str, storage_options: dict | None = None) -> bool:
    """Whether `uri` holds a Delta table (a `_delta_log/` with at least one commit)."""
    fs, path = filesystem(join(uri, LOG_DIR), storage_options)
    fs.invalidate_cache(path)
    try:
        # A checkpointed table answers with one read; the listing below grows with the log.
        if fs.exists(f"{path}/_last_checkpoint"):
            return True
        return any(p.endswith(".json") for p in fs.ls(path, detail=False))
    except (FileNotFoundError, NotADirectoryError):  # no log, or the "table" is a file
        return False


def _open(uri: str, storage_options: dict | None, version: int | None = None) -> Any:
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError, TableNotFoundError

    try:
        return DeltaTable(uri, version=version, storage_options=delta_storage_options(uri, storage_options))
    except TableNotFoundError as e:
        raise TableError(f"{uri}: no Delta table there ({str(e).splitlines()[0]})") from e
    except DeltaError as e:  # a log file another tool truncated or garbled: the table, not vaeflow
        raise TableError(
            f"{uri}: the Delta log in {LOG_DIR}/ cannot be read ({str(e).splitlines()[0]}); "
            "restore the damaged commit file or write to a new table"
        ) from e


# Commits that change no rows (Delta OPTIMIZE's dataChange false, VACUUM's markers), by any tool:
# history() leaves them out, so run keys and embed's incremental state survive table maintenance.
NO_DATA_OPERATIONS = frozenset({"OPTIMIZE", "VACUUM START", "VACUUM END"})


def keep_logs() -> Any:
    """delta-rs's post-commit hook for vaeflow's commits: a checkpoint at every 100th version, and no
    clean-up of expired commit JSONs, whose commit records are the state history() reads (a run
    key's commit, the shards a table holds); data/maintenance.py keeps reads fast with checkpoints."""
    from deltalake.transaction import PostCommitHookProperties

    return PostCommitHookProperties(create_checkpoint=True, cleanup_expired_logs=False)


def history(
    uri: str, storage_options: dict | None = None, limit: int | None = None
) -> list[tuple[int, CommitRecord | None]]:
    """(version, vaeflow record or None for commits by other tools), newest first; commits that
    change no rows (NO_DATA_OPERATIONS: compaction, VACUUM) are left out. `limit`: of the newest
    `limit` commits only (each commit is one read of the log)."""
    out = []
    for commit in _open(uri, storage_options).history(limit):
        if commit.get("operation") in NO_DATA_OPERATIONS:
            continue
        text = commit.get(COMMIT_KEY)
        out.append((int(commit["version"]), CommitRecord.from_json(text) if text else None))
    return sorted(out, key=lambda c: -c[0])


def find_commit(
    uri: str, run_key: str, mode: Mode, storage_options: dict | None = None
) -> tuple[int, CommitRecord] | None:
    """The commit of `run_key` if it still defines what the job would produce, else None.

    The log's txn action says whether the key ever committed (one small read). For "append" any
    such commit counts (the rows are still there); for "error"/"overwrite" the key's commit must be
    the latest vaeflow commit: a later overwrite replaced its rows, so running again is real work.
    """
    if not is_delta_table(uri, storage_options):
        return None
    if _open(uri, storage_options).transaction_version(app_id(run_key)) is None:
        return None
    # The key's commit is nearly always among the newest: read the log back page by page, not whole.
    below, limit = None, FIND_PAGE  # versions below `below` are not read yet
    while True:
        older = [(v, r) for v, r in history(uri, storage_options, limit) if below is None or v < below]
        for version, record in older:
            if record is None:
                continue
            if record.run_key == run_key:
                return version, record
            if mode != "append":
                return None
        if not older or older[-1][0] == 0:
            return None
        below, limit = older[-1][0], limit * 8


def file_sizes(uri: str, storage_options: dict | None = None) -> dict[str, int]:
    """Name -> size of the files in the table's root folder (where the data files sit), listed anew."""
    fs, root = filesystem(uri, storage_options)
    fs.invalidate_cache(root)
    try:
        listing = fs.ls(root, detail=True)
    except FileNotFoundError:
        listing = []
    return {e["name"].rstrip("/").rsplit("/", 1)[-1]: e.get("size") for e in listing}


def check_files(uri: str, files: list[DataFile], storage_options: dict | None = None) -> None:
    """Refuse to commit unless every file is in the table folder with the size its writer reported."""
    sizes = file_sizes(uri, storage_options)
    for f in files:
        name = f.path.rsplit("/", 1)[-1]
        if sizes.get(name) != f.bytes:
            found = "missing" if name not in sizes else f"{sizes[name]} bytes, expected {f.bytes}"
            raise TableError(f"{join(uri, f.path)}: data file {found}; not committing")


def _lost_race(uri: str, e: Exception) -> TableConflict:
    return TableConflict(
        f"{uri}: another writer committed to this table while this job ran ({e}); this job "
        "committed nothing. Rerun it (a job already committed by the same run key is skipped)."
    )


def exists_error(uri: str) -> TableError:
    return TableError(
        f"{uri}: already holds a Delta table written by another run; write to a new output, "
        "or choose mode overwrite (a new version; earlier ones stay readable) or append"
    )


def table_schema(uri: str, storage_options: dict | None = None) -> pa.Schema:
    """The columns of the table's latest version."""
    return pa.schema(_open(uri, storage_options).schema().to_arrow())


def commit(
    uri: str,
    files: list[DataFile],
    schema: pa.Schema,
    record: CommitRecord,
    mode: Mode,
    storage_options: dict | None = None,
    new_ids: NewIds | None = None,
) -> int:
    """Commit `files` as one new table version (creating the table if needed); returns the version.

    An append with `new_ids` commits only on top of the version it checked: no file committed since
    new_ids.base_version may hold one of its ids (else TableConflict), and a commit that another writer
    beats to the next version is checked again on top of it, never merged blindly (delta-rs would)."""
    from deltalake import Schema
    from deltalake.exceptions import CommitFailedError, DeltaError
    from deltalake.transaction import (
        AddAction,
        CommitProperties,
        Transaction,
        create_table_with_add_actions,
    )

    if mode not in MODES:
        raise TableError(f"{uri}: mode must be one of {MODES} (--mode), got {mode!r}")
    schema = delta_schema(schema)
    check_files(uri, files, storage_options)
    guard = new_ids if mode == "append" else None
    now = int(time.time() * 1000)
    actions = [AddAction(f.path, f.bytes, {}, now, True, json.dumps({"numRecords": f.rows})) for f in files]
    props = CommitProperties(
        custom_metadata={
            COMMIT_KEY: record.to_json(),
            "vaeflow.run_key": record.run_key,
            "vaeflow.night": record.night or "",
        },
        app_transactions=[Transaction(app_id(record.run_key), 1, now)],
        max_commit_retries=0 if guard else None,
    )
    options = delta_storage_options(uri, storage_options)
    attempt = races = 0
    while True:
        attempt += 1
        exists = is_delta_table(uri, storage_options)
        if exists and mode == "error":
            raise exists_error(uri)
        try:
            if not exists:
                create_table_with_add_actions(
                    uri, Schema.from_arrow(schema), actions, mode="error", storage_options=options,
                    commit_properties=props, post_commithook_properties=keep_logs(),
                )  # fmt: skip
            else:
                table = _open(uri, storage_options)
                if guard:
                    _refuse_repeated_ids(uri, guard, table, storage_options)
                table.create_write_transaction(
                    actions, mode=mode, schema=schema, commit_properties=props,
                    post_commithook_properties=keep_logs(),
                )  # fmt: skip
            break
        except CommitFailedError as e:
            found = find_commit(uri, record.run_key, "append", storage_options)
            if found is not None:
                return found[0]
            if guard and races < RACE_ATTEMPTS:  # another commit took the version: check again on top of it
                races += 1
                continue
            raise _lost_race(uri, e) from e
        except DeltaError as e:
            # A retry after a lost response finds its own commit in place: that is success.
            found = find_commit(uri, record.run_key, "append", storage_options)
            if found is not None:
                return found[0]
            raise _lost_race(uri, e) from e
        except OSError as e:
            # The object store dropped the commit request (reset, timeout): it may or may not have
            # taken the log entry. The log says which; a commit is a create-only write, so trying
            # again can never commit twice.
            found = find_commit(uri, record.run_key, "append", storage_options)
            if found is not None:
                return found[0]
            if attempt == COMMIT_ATTEMPTS:
                raise TableError(
                    f"{uri}: could not reach the object store to commit after {attempt} attempts ({e}); "
                    "this job committed nothing. Rerun it."
                ) from e
            time.sleep(COMMIT_BACKOFF_S * attempt)
    # The version that holds this commit: the table's latest version may already be another
    # writer's, so look the run key up rather than reading version().
    found = find_commit(uri, record.run_key, "append", storage_options)
    if found is None:
        raise TableError(f"{uri}: committed, but run {record.run_key} is not in the table log")
    return found[0]


def read_table(
    uri: str,
    version: int | None = None,
    columns: list[str] | None = None,
    storage_options: dict | None = None,
) -> pa.Table:
    """The rows of a table (at `version`, default the latest) as one Arrow table."""
    return _open(uri, storage_options, version).to_pyarrow_table(columns=columns)


def data_files(uri: str, storage_options: dict | None = None) -> list[str]:
    """URIs of the Parquet files of the table's latest version, for readers that take a file list.

    Tables whose files are not plain Parquet rows (deletion vectors, column mapping) are refused.
    """
    table = _open(uri, storage_options)
    protocol = table.protocol()
    features = set(protocol.reader_features or [])
    unsupported = features & {"deletionVectors", "columnMapping", "v2Checkpoint"}
    if unsupported:
        raise TableError(
            f"{uri}: Delta table uses {sorted(unsupported)}; vaeflow reads tables whose files are plain "
            "Parquet rows (rewrite it, e.g. with OPTIMIZE/REORG, or export Parquet files)"
        )
    return sorted(table.file_uris())


def now_iso() -> str:
    return datetime.now(UTC).isoformat()
