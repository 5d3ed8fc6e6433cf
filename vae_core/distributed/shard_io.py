"""How a batch job's actor reads its input shard and cuts its output: batches of READ_ROWS rows read
a batch ahead by a thread, output regrouped into files of a set size. Used by the embed job."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from vae_core.data.storage import arrow_filesystem
from vae_core.errors import DataError

READ_ROWS = 8192  # rows an actor reads (and embeds) at a time
READ_AHEAD = 1  # batches an actor reads ahead of the one it embeds
# Output bytes (Arrow, in memory) a file holds unless embed.rows_per_file says: few files to commit
# and read, while an actor holds no more than about two files' worth (bench/results/embed_scale.json).
FILE_BYTES = 16 << 20


def shard_batches(shard: str, columns: list[str], storage_options: dict | None) -> Iterator[pa.Table]:
    """The shard's `columns` in batches of READ_ROWS rows, in file order (a retried task reads the same
    batches, so it writes the same files).

    Small batches bound an actor's memory whatever the file: decoding a list column materializes
    two 16-bit levels per value, so a whole row group read at once holds several times the Arrow
    memory of a batch (bench/results/embed_memory.json)."""
    fs, path = arrow_filesystem(shard, storage_options)
    try:
        with fs.open_input_file(path) as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=READ_ROWS, columns=columns):
                if batch.num_rows:
                    yield pa.Table.from_batches([batch])
    except FileNotFoundError as e:
        raise DataError(f"{shard}: shard is missing: {e}") from e
    except pa.ArrowInvalid as e:
        raise DataError(f"{shard}: not a readable Parquet file: {e}") from e


def regroup(tables: Iterator[pa.Table], rows: int | None) -> Iterator[pa.Table]:
    """The rows of `tables`, in order, as tables of exactly `rows` rows (the last may be shorter);
    `rows` None: as many as make FILE_BYTES, by the first table's bytes a row (the same cut for the
    same input, so a retried shard writes the same files)."""
    held: list[pa.Table] = []
    count = 0
    for t in tables:
        if rows is None:
            rows = max(1, FILE_BYTES * t.num_rows // max(t.nbytes, 1))
        held.append(t)
        count += t.num_rows
        while count >= rows:
            joined = pa.concat_tables(held)
            yield joined.slice(0, rows)
            held, count = [joined.slice(rows)], count - rows
    if count:
        yield pa.concat_tables(held)


def read_ahead(items: Iterator[pa.Table], depth: int = READ_AHEAD) -> Iterator[pa.Table]:
    """`items`, produced by a thread up to `depth` ahead: the next batch downloads and decodes (pyarrow
    releases the GIL) while this one is embedded (so does torch). An error in the thread is raised here."""
    q: queue.Queue[tuple[pa.Table | None, BaseException | None]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put((item, None))
        except BaseException as e:  # handed to the consumer, which re-raises it
            q.put((None, e))
            return
        q.put((None, None))

    thread = threading.Thread(target=produce, daemon=True, name="vaeflow-read-ahead")
    thread.start()
    try:
        while True:
            item, error = q.get()
            if error is not None:
                raise error
            if item is None:
                return
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):  # let a producer blocked on put() see the stop
            q.get_nowait()
