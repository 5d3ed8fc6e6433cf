"""A dataset split as a report reads it: x through the model's codec, the raw columns and the labels."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from vae_core.config import DataConfig
from vae_core.data.arrow_types import temporal_as_numbers
from vae_core.data.codecs import Codec
from vae_core.data.dataset import DatasetSpec, count_rows, iter_batches, list_shards
from vae_core.data.storage import arrow_filesystem, join
from vae_core.errors import DataError

EVAL_BATCH = 500
EVAL_ROWS = 10_000  # rows a report reads per split by default: a uniform sample, not the whole split


@dataclass
class SplitData:
    x: torch.Tensor  # (N, D) features as the model sees them
    table: pa.Table  # the columns the codec reads (and the label column) of the same rows
    labels: np.ndarray | None  # (N,) values of the label column, if any
    rows_in_split: int = 0  # rows the split holds, of which these N were read
    seed: int | None = None  # the seed of the uniform sample; None when every row was read

    @property
    def sampling(self) -> str:
        """How the rows were chosen, in words, for the report."""
        if self.seed is None:
            return f"all {len(self.x):,} rows"
        return f"a uniform random sample of {len(self.x):,} of {self.rows_in_split:,} rows (seed {self.seed})"


def read_split(
    data: DataConfig,
    split: str,
    codec: Codec,
    label_column: str | None = None,
    max_rows: int | None = EVAL_ROWS,
    seed: int = 0,
) -> SplitData:
    """Read `data.uri/split/`: every row, or when it holds more than max_rows, a uniform random sample
    of max_rows of them (seeded, in file order); x = codec.encode of each batch, whose errors name the
    shard file, the column and the row.

    A sample is drawn over the whole split (row counts from the footers), never the first rows of each
    file: a source sorted by a column would otherwise give a report only one end of it. Only the row
    groups that hold a drawn row are read, one at a time, so memory stays bounded by max_rows and a
    row group. `SplitData.rows_in_split` says how many rows there were in all."""
    shards = list_shards(join(data.uri, split), data.storage_options)
    columns = [*codec.columns]
    if label_column is not None and label_column not in columns:
        columns.append(label_column)
    sizes = [count_rows([s], data.storage_options) for s in shards]
    total = sum(sizes)
    sampled = max_rows is not None and total > max_rows
    picked = np.sort(np.random.default_rng(seed).choice(total, max_rows, replace=False)) if sampled else None
    xs, tables = [], []
    start = 0
    for shard, size in zip(shards, sizes, strict=True):
        rows = (
            None
            if picked is None
            else picked[np.searchsorted(picked, start) : np.searchsorted(picked, start + size)] - start
        )
        start += size
        for batch in _read_rows(shard, columns, rows, data.storage_options):
            xs.append(codec.encode(batch, source=shard))
            tables.append(pa.Table.from_batches([batch]))
    if not tables:
        raise DataError(f"{join(data.uri, split)}: no rows ({len(shards)} file(s), 0 rows)")
    table = temporal_as_numbers(pa.concat_tables(tables))  # dates as day counts in metrics and plots
    labels = table.column(label_column).to_numpy(zero_copy_only=False) if label_column else None
    return SplitData(torch.from_numpy(np.concatenate(xs)), table, labels, total, seed if sampled else None)


def _read_rows(
    shard: str, columns: list[str], rows: np.ndarray | None, storage_options: dict | None
) -> Iterator[pa.RecordBatch]:
    """The `rows` (sorted positions in the file; None: all) of `shard`'s `columns`, a row group at a time."""
    if rows is None:
        yield from (batch for _, batch in iter_batches([shard], columns, storage_options=storage_options))
        return
    if not len(rows):
        return
    fs, path = arrow_filesystem(shard, storage_options)
    try:
        with fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            start = 0
            for group in range(pf.metadata.num_row_groups):
                size = pf.metadata.row_group(group).num_rows
                inside = rows[np.searchsorted(rows, start) : np.searchsorted(rows, start + size)] - start
                start += size
                if len(inside):
                    table = pf.read_row_group(group, columns=columns).take(pa.array(inside))
                    yield from table.combine_chunks().to_batches()
    except FileNotFoundError as e:
        raise DataError(f"{shard}: shard is missing: {e}") from e
    except pa.ArrowInvalid as e:
        raise DataError(f"{shard}: not a readable Parquet file: {e}") from e


def default_label_column(spec: DatasetSpec, schema: pa.Schema) -> str | None:
    """A column 'label' that is not a feature, else the last categorical feature (data with table
    columns have them; a vector column has none), else None."""
    if "label" in schema.names and "label" not in spec.feature_columns:
        return "label"
    return spec.categorical[-1] if spec.categorical else None


def eval_batches(x: torch.Tensor, size: int = EVAL_BATCH) -> list[torch.Tensor]:
    """(N, D) -> consecutive (size, D) slices: evaluation memory stays bounded."""
    return [x[i : i + size] for i in range(0, len(x), size)]
