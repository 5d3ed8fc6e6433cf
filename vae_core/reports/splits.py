"""A dataset split as a report reads it: x as the model sees it, the raw columns and the labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from vae_core.config import DataConfig
from vae_core.data.dataset import DatasetSpec, iter_batches, open_dataset, vector_features
from vae_core.data.tabular import TabularTransformer

EVAL_BATCH = 500


@dataclass
class SplitData:
    x: torch.Tensor  # (N, D) features as the model sees them
    table: pa.Table  # the raw feature (and label) columns of the same rows
    labels: np.ndarray | None  # (N,) values of the label column, if any


def read_split(
    data: DataConfig,
    split: str,
    transformer: TabularTransformer | None = None,
    label_column: str | None = None,
    max_rows: int | None = None,
) -> SplitData:
    """Read up to max_rows rows of `data.uri/split/` as model features (vector column or tabular)."""
    shards, _, spec = open_dataset(data, split)
    if spec.kind == "tabular" and transformer is None:
        raise ValueError(f"{data.uri}: tabular data needs the checkpoint's fitted tabular transformer")
    columns = [*spec.feature_columns]
    if label_column is not None and label_column not in columns:
        columns.append(label_column)
    xs, tables, n = [], [], 0
    for shard, batch in iter_batches(shards, columns, storage_options=data.storage_options):
        if max_rows is not None:
            batch = batch.slice(0, max_rows - n)
        if spec.kind == "vector":
            xs.append(vector_features(batch, spec, shard))
        else:
            xs.append(transformer.transform(batch))  # type: ignore[union-attr]
        tables.append(pa.Table.from_batches([batch]))
        n += batch.num_rows
        if max_rows is not None and n >= max_rows:
            break
    table = pa.concat_tables(tables)
    labels = table.column(label_column).to_numpy(zero_copy_only=False) if label_column else None
    return SplitData(torch.from_numpy(np.concatenate(xs)), table, labels)


def default_label_column(spec: DatasetSpec, schema: pa.Schema) -> str | None:
    """A column 'label' that is not a feature, else (tabular) the last categorical feature, else None."""
    if "label" in schema.names and "label" not in spec.feature_columns:
        return "label"
    if spec.kind == "tabular" and spec.categorical:
        return spec.categorical[-1]
    return None


def eval_batches(x: torch.Tensor, size: int = EVAL_BATCH) -> list[torch.Tensor]:
    """(N, D) -> consecutive (size, D) slices: evaluation memory stays bounded."""
    return [x[i : i + size] for i in range(0, len(x), size)]
