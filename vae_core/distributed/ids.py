"""The ids of an embed job's input: every row has one, no id is used twice, and an append repeats no id
its table holds. Embedded rows are keyed and their files named by id."""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vae_core.data.storage import arrow_filesystem
from vae_core.errors import DataError


def _read_ids(shards: list[str], id_column: str, storage_options: dict | None) -> list[pa.Array]:
    """The id column of each shard (read in parallel: one column, a small share of the corpus)."""

    def one(shard: str) -> pa.Array:
        fs, path = arrow_filesystem(shard, storage_options)
        try:
            return pq.read_table(path, columns=[id_column], filesystem=fs).column(0).combine_chunks()
        except pa.ArrowInvalid as e:
            raise DataError(f"{shard}: not a readable Parquet file: {e}") from e

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, shards))


def _repeated(ids: pa.Array | pa.ChunkedArray) -> pa.StructArray:
    """Value counts ("values", "counts") of the ids that appear more than once."""
    counts = pc.value_counts(ids)
    return counts.filter(pc.greater(counts.field("counts"), 1))


def has_nulls(source: str, id_column: str, nulls: int, shard: str) -> DataError:
    return DataError(f"{source}: id column {id_column!r} has {nulls:,} null(s), e.g. in {shard}")


def not_unique(source: str, id_column: str, repeated: int, example: object, shards: list[str]) -> DataError:
    return DataError(
        f"{source}: id column {id_column!r} is not unique: {repeated:,} ids appear more than once "
        f"(e.g. {example!r}, in {', '.join(shards[:3])}); give each row its own id"
    )


def check_ids(
    shards: list[str],
    id_column: str,
    source: str,
    storage_options: dict | None,
    table: tuple[str, pa.Array] | None = None,
) -> tuple[int, pa.Array]:
    """The rows of all shards and their ids, once every row has an id and no id is used
    twice, nor is already in `table` (its URI and ids: the rows an append adds to); else a
    DataError naming the column, how many, one such id and the shards (or table) it is in.
    Embedded rows are keyed and their files named by id: a repeated id would make two rows one, and
    the job would write fewer rows than it read."""
    ids = _read_ids(shards, id_column, storage_options)
    if table is not None:
        shards, ids = [*shards, table[0]], [*ids, table[1]]
    nulls = sum(a.null_count for a in ids)
    if nulls:
        shard = next(s for s, a in zip(shards, ids, strict=True) if a.null_count)
        raise has_nulls(source, id_column, nulls, shard)
    typed = [a.cast(ids[0].type) for a in ids]
    own = pa.chunked_array(typed[: len(typed) - (table is not None)], ids[0].type)  # the input's, no table
    every = pa.chunked_array(typed, ids[0].type)
    repeated = _repeated(every)
    if len(repeated):
        example = repeated.field("values")[0]
        where = [s for s, a in zip(shards, ids, strict=True) if pc.any(pc.equal(a, example)).as_py()]
        if table is not None and where[-1] == table[0]:
            held = pc.sum(pc.is_in(table[1], value_set=own.combine_chunks())).as_py()
            raise DataError(
                f"{source}: {held:,} {id_column!r} values are already in the table {table[0]} (e.g. "
                f"{example.as_py()!r}, in {where[0]}): those rows were appended before. Append only new "
                "rows (embed --incremental picks the new shards), or write a new output"
            )
        raise not_unique(source, id_column, len(repeated), example.as_py(), where)
    own = own.combine_chunks()
    pa.default_memory_pool().release_unused()
    return len(own), own


# ---- the same check on the cluster: no id reaches the driver -------------------------------------
MAX_BUCKETS = 64  # hash buckets of the ids: one bucket task each


def _buckets(ids: pa.Array, n: int) -> np.ndarray:
    """A bucket in [0, n) for each (non-null) id, the same for equal ids in any shard: a multiplicative
    hash of integers, a position-weighted byte sum of anything else as text."""
    if pa.types.is_integer(ids.type):
        h = ids.cast(pa.int64()).to_numpy().view(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        return ((h >> np.uint64(29)) % np.uint64(n)).astype(np.int64)
    raw = ids.cast(pa.large_binary())
    offsets = np.frombuffer(raw.buffers()[1], np.int64)[raw.offset : raw.offset + len(raw) + 1]
    lengths = np.diff(offsets)
    data = np.frombuffer(raw.buffers()[2], np.uint8)[offsets[0] : offsets[-1]] if len(raw) else np.zeros(0)
    row = np.repeat(np.arange(len(raw)), lengths)
    pos = np.arange(len(data)) - np.repeat(offsets[:-1] - offsets[0], lengths)
    sums = np.bincount(row, weights=data * (2 * pos + 7.0), minlength=len(raw)) + lengths
    return (sums.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) >> np.uint64(29)) % np.uint64(n)


def _canonical(ids: pa.Array) -> pa.Array:
    return ids.cast(pa.int64() if pa.types.is_integer(ids.type) else pa.large_string())


def _split(index: int, shard: str, id_column: str, n: int, storage_options: dict | None) -> tuple:
    """One shard's ids: (rows, nulls) and n tables (id, shard index), one per bucket."""
    ids = _read_ids([shard], id_column, storage_options)[0]
    counts = (len(ids), ids.null_count)
    ids = _canonical(ids.drop_null())
    buckets = _buckets(ids, n)
    order = np.argsort(buckets, kind="stable")
    bounds = np.searchsorted(buckets[order], np.arange(n + 1))
    ids = ids.take(pa.array(order))
    parts = [ids.slice(bounds[b], bounds[b + 1] - bounds[b]) for b in range(n)]
    return counts, *(pa.table({"id": p, "shard": pa.array(np.full(len(p), index, np.int32))}) for p in parts)


def _repeats(*parts: pa.Table) -> tuple[int, object, list[int]]:
    """(ids repeated within these tables, one of them, the shards it is in) for one bucket."""
    table = pa.concat_tables(parts)
    repeated = _repeated(table.column("id"))
    if not len(repeated):
        return 0, None, []
    example = repeated.field("values")[0]
    shards = table.filter(pc.equal(table.column("id"), example)).column("shard")
    return len(repeated), example.as_py(), sorted(set(shards.to_pylist()))


def check_ids_on_cluster(shards: list[str], id_column: str, source: str, storage_options: dict | None) -> int:
    """check_ids for a job on Ray that appends to no table, without bringing ids to the driver: a task
    per shard reads its id column and hash-partitions it into buckets, a task per bucket counts them;
    the driver gets row and null counts and, for a repeat, one id and its shards (the same DataErrors
    as check_ids). Returns the rows."""
    import ray

    n = max(2, min(MAX_BUCKETS, len(shards)))
    split = ray.remote(num_cpus=1)(_split).options(num_returns=n + 1)
    parts = [split.remote(i, s, id_column, n, storage_options) for i, s in enumerate(shards)]
    counts = ray.get([p[0] for p in parts])
    nulls = sum(c[1] for c in counts)
    if nulls:
        shard = next(s for s, c in zip(shards, counts, strict=True) if c[1])
        raise has_nulls(source, id_column, nulls, shard)
    repeats = ray.remote(num_cpus=1)(_repeats)
    found = ray.get([repeats.remote(*(p[b + 1] for p in parts)) for b in range(n)])
    del parts  # the buckets leave the object store
    repeated = sum(f[0] for f in found)
    if repeated:
        _, example, where = next(f for f in found if f[0])
        raise not_unique(source, id_column, repeated, example, [shards[i] for i in where])
    return sum(c[0] for c in counts)


# ---- shards whose footers keep their ids apart: each shard checked as the job reads it ------------
def ids_apart(shards: list[str], id_column: str, source: str, storage_options: dict | None) -> int | None:
    """The rows of the shards when their Parquet footers show that no id can be in two of them: an
    integer id column with statistics in every row group, whose [min, max] ranges no two shards share
    (ids numbered in order across shards, the usual layout). Only a repeat within one shard is then
    left, which the job finds as it reads that shard (ShardIds). Nulls counted by the footers are
    check_ids' DataError. None when the footers cannot tell (a non-integer id, a row group without
    statistics, overlapping ranges): check_ids_on_cluster then.
    Reads footers only: O(shards) on the driver, no id."""

    def one(shard: str) -> tuple[int, int, int | None, int | None] | None:
        fs, path = arrow_filesystem(shard, storage_options)
        try:
            meta = pq.read_metadata(path, filesystem=fs)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{shard}: not a readable Parquet file: {e}") from e
        names = [meta.schema.column(i).name for i in range(meta.num_columns)]
        if id_column not in names or not pa.types.is_integer(
            meta.schema.to_arrow_schema().field(id_column).type
        ):
            return None
        at, nulls, lo, hi = names.index(id_column), 0, None, None
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            stats = group.column(at).statistics
            if group.num_rows == 0:
                continue
            if stats is None or not stats.has_null_count:
                return None
            nulls += stats.null_count
            if stats.null_count == group.num_rows:
                continue
            if not stats.has_min_max:
                return None
            lo = stats.min if lo is None else min(lo, stats.min)
            hi = stats.max if hi is None else max(hi, stats.max)
        return meta.num_rows, nulls, lo, hi

    with ThreadPoolExecutor(max_workers=8) as pool:
        footers = list(pool.map(one, shards))
    if any(f is None for f in footers):
        return None
    counted = [f for f in footers if f is not None]  # (for mypy: none is None now)
    if nulls := sum(f[1] for f in counted):
        shard = next(s for s, f in zip(shards, counted, strict=True) if f[1])
        raise has_nulls(source, id_column, nulls, shard)
    ranges = sorted((f[2], f[3]) for f in counted if f[2] is not None)
    if any(hi >= lo for (_, hi), (lo, _) in itertools.pairwise(ranges)):
        return None
    return sum(f[0] for f in counted)


class ShardIds:
    """The ids of one shard, batch by batch as a job reads it, for `ids_apart`'s remaining check: no id
    twice in the shard. Ids that only increase (the usual layout) are checked as they pass, in constant
    memory; otherwise the shard's id column is read again at the end and counted."""

    def __init__(self, shard: str, id_column: str, source: str, storage_options: dict | None) -> None:
        self.shard, self.id_column, self.source, self.storage_options = (
            shard,
            id_column,
            source,
            storage_options,
        )
        self.last: int | None = None
        self.increasing = True

    def add(self, ids: pa.Array | pa.ChunkedArray) -> None:
        if not self.increasing or not len(ids):
            return
        a = ids.to_numpy()
        self.increasing = bool((a[1:] > a[:-1]).all()) and (self.last is None or a[0] > self.last)
        self.last = int(a[-1])

    def check(self) -> None:
        """A DataError naming the shard and a repeated id, as check_ids names them."""
        if self.increasing:
            return
        ids = _read_ids([self.shard], self.id_column, self.storage_options)[0]
        repeated = _repeated(ids)
        if len(repeated):
            example = repeated.field("values")[0].as_py()
            raise not_unique(self.source, self.id_column, len(repeated), example, [self.shard])
