"""The ids of an embed job's input: every row has one, no id is used twice, and an append repeats no id
its table holds. Embedded rows are keyed and their files named by id."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

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
        raise DataError(f"{source}: id column {id_column!r} has {nulls:,} null(s), e.g. in {shard}")
    typed = [a.cast(ids[0].type) for a in ids]
    own = pa.chunked_array(typed[: len(typed) - (table is not None)], ids[0].type)  # the input's, no table
    every = pa.chunked_array(typed, ids[0].type)
    counts = pc.value_counts(every)
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
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
        raise DataError(
            f"{source}: id column {id_column!r} is not unique: {len(repeated):,} ids appear more than once "
            f"(e.g. {example.as_py()!r}, in {', '.join(where[:3])}); give each row its own id"
        )
    own = own.combine_chunks()
    pa.default_memory_pool().release_unused()
    return len(own), own
