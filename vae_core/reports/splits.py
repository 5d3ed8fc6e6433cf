"""A dataset split as a report reads it: x through the model's codec, the raw columns and the labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from vae_core.config import DataConfig
from vae_core.data.codecs import Codec
from vae_core.data.dataset import DatasetSpec, iter_batches, list_shards
from vae_core.data.storage import join
from vae_core.data.tabular import temporal_as_numbers

EVAL_BATCH = 500


@dataclass
class SplitData:
    x: torch.Tensor  # (N, D) features as the model sees them
    table: pa.Table  # the columns the codec reads (and the label column) of the same rows
    labels: np.ndarray | None  # (N,) values of the label column, if any


def read_split(
    data: DataConfig,
    split: str,
    codec: Codec,
    label_column: str | None = None,
    max_rows: int | None = None,
) -> SplitData:
    """Read up to max_rows rows of `data.uri/split/`; x = codec.encode of each batch, whose errors name
    the shard file, the column and the row."""
    shards = list_shards(join(data.uri, split), data.storage_options)
    columns = [*codec.columns]
    if label_column is not None and label_column not in columns:
        columns.append(label_column)
    xs, tables, n = [], [], 0
    for shard, batch in iter_batches(shards, columns, storage_options=data.storage_options):
        if max_rows is not None:
            batch = batch.slice(0, max_rows - n)
        xs.append(codec.encode(batch, source=shard))
        tables.append(pa.Table.from_batches([batch]))
        n += batch.num_rows
        if max_rows is not None and n >= max_rows:
            break
    table = temporal_as_numbers(pa.concat_tables(tables))  # dates as day counts in metrics and plots
    labels = table.column(label_column).to_numpy(zero_copy_only=False) if label_column else None
    return SplitData(torch.from_numpy(np.concatenate(xs)), table, labels)


def default_label_column(spec: DatasetSpec, schema: pa.Schema) -> str | None:
    """A column 'label' that is not a feature, else the last categorical feature (data with table
    columns have them; a vector column has none), else None."""
    if "label" in schema.names and "label" not in spec.feature_columns:
        return "label"
    return spec.categorical[-1] if spec.categorical else None


def eval_batches(x: torch.Tensor, size: int = EVAL_BATCH) -> list[torch.Tensor]:
    """(N, D) -> consecutive (size, D) slices: evaluation memory stays bounded."""
    return [x[i : i + size] for i in range(0, len(x), size)]
