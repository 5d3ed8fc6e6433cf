"""A dataset split as a report reads it: x through the model's codec, the raw columns and the labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from vae_core.config import DataConfig
from vae_core.data.arrow_types import temporal_as_numbers
from vae_core.data.codecs import Codec
from vae_core.data.dataset import DatasetSpec, count_rows, iter_batches, list_shards
from vae_core.data.storage import join
from vae_core.errors import DataError

EVAL_BATCH = 500
EVAL_ROWS = 10_000  # rows a report reads per split by default: a bounded sample, not the whole split


@dataclass
class SplitData:
    x: torch.Tensor  # (N, D) features as the model sees them
    table: pa.Table  # the columns the codec reads (and the label column) of the same rows
    labels: np.ndarray | None  # (N,) values of the label column, if any
    rows_in_split: int = 0  # rows the split holds, of which these N were read


def read_split(
    data: DataConfig,
    split: str,
    codec: Codec,
    label_column: str | None = None,
    max_rows: int | None = EVAL_ROWS,
) -> SplitData:
    """Read `data.uri/split/`, at most max_rows rows (None: all); x = codec.encode of each batch, whose
    errors name the shard file, the column and the row.

    A bounded read is spread over the shards: each gives its leading rows in proportion to its size
    (footers first, no data), so memory and reading stay bounded by max_rows whatever the split's size,
    and every shard is represented. `SplitData.rows_in_split` says how many there were in all."""
    shards = list_shards(join(data.uri, split), data.storage_options)
    columns = [*codec.columns]
    if label_column is not None and label_column not in columns:
        columns.append(label_column)
    sizes = [count_rows([s], data.storage_options) for s in shards]
    total = sum(sizes)
    xs, tables = [], []
    for shard, quota in zip(shards, _quotas(sizes, max_rows), strict=True):
        taken = 0  # one shard at a time: the reader stops at its quota
        batches = iter_batches([shard], columns, min(65_536, quota), storage_options=data.storage_options)
        for _, batch in batches if quota else ():
            batch = batch.slice(0, quota - taken)
            xs.append(codec.encode(batch, source=shard))
            tables.append(pa.Table.from_batches([batch]))
            taken += batch.num_rows
            if taken >= quota:
                break
    if not tables:
        raise DataError(f"{join(data.uri, split)}: no rows ({len(shards)} file(s), 0 rows)")
    table = temporal_as_numbers(pa.concat_tables(tables))  # dates as day counts in metrics and plots
    labels = table.column(label_column).to_numpy(zero_copy_only=False) if label_column else None
    return SplitData(torch.from_numpy(np.concatenate(xs)), table, labels, total)


def _quotas(sizes: list[int], max_rows: int | None) -> list[int]:
    """Rows to take from shards of `sizes`: all of them, or max_rows split in proportion (largest
    remainders first, so the quotas add up to min(max_rows, total))."""
    total = sum(sizes)
    if max_rows is None or total <= max_rows:
        return list(sizes)
    exact = [n * max_rows / total for n in sizes]
    quotas = [int(q) for q in exact]
    for i in sorted(range(len(sizes)), key=lambda i: quotas[i] - exact[i])[: max_rows - sum(quotas)]:
        quotas[i] += 1
    return quotas


def default_label_column(spec: DatasetSpec, schema: pa.Schema) -> str | None:
    """A column 'label' that is not a feature, else the last categorical feature (data with table
    columns have them; a vector column has none), else None."""
    if "label" in schema.names and "label" not in spec.feature_columns:
        return "label"
    return spec.categorical[-1] if spec.categorical else None


def eval_batches(x: torch.Tensor, size: int = EVAL_BATCH) -> list[torch.Tensor]:
    """(N, D) -> consecutive (size, D) slices: evaluation memory stays bounded."""
    return [x[i : i + size] for i in range(0, len(x), size)]
