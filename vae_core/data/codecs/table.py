"""The table codec: continuous and categorical columns through vae_core.data.tabular's transformer."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from vae_core.config import DataConfig
from vae_core.data.codecs.base import Batches, column
from vae_core.data.dataset import DatasetSpec
from vae_core.data.tabular import TabularTransformer
from vae_core.errors import DataError


class TabularCodec:
    """Continuous and categorical columns (vae_core.data.tabular's mode-specific normalization and
    one-hot codes); the mixed tabular likelihood over its layout."""

    kind: ClassVar[str] = "tabular"
    reads: ClassVar[str] = "table_columns"

    def __init__(self, transformer: TabularTransformer) -> None:
        self.transformer = transformer

    columns = property(lambda self: self.transformer.column_names)
    dim = property(lambda self: self.transformer.dim)
    image_shape = property(lambda self: None)
    layout = property(lambda self: self.transformer.layout)
    likelihood = property(lambda self: "tabular")
    # A row is a draw: the mean of a categorical block is a probability vector, not a category.
    sample_by_default = property(lambda self: True)

    def encode(self, batch: pa.RecordBatch | pa.Table, source: str) -> np.ndarray:
        for name in self.columns:
            column(batch, name, source)
        try:
            return self.transformer.transform(batch)
        except (DataError, pa.ArrowException) as e:
            raise DataError(f"{source}: {e}") from e

    def drift(self, batch: pa.RecordBatch | pa.Table) -> dict[str, dict[str, int]]:
        return self.transformer.drift(batch)  # kinds: tabular.DRIFT

    def decode(self, x: np.ndarray) -> pa.Table:
        return self.transformer.inverse(x)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.transformer.to_json())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TabularCodec:
        return cls(TabularTransformer.from_json(json.dumps(d)))

    @classmethod
    def fit(
        cls, spec: DatasetSpec, schema: pa.Schema, batches: Batches, source: str, cfg: DataConfig, seed: int
    ) -> TabularCodec:
        stream = _Stream(batches(spec.feature_columns), source)
        try:
            transformer = TabularTransformer.fit(
                stream,
                spec.continuous,
                spec.categorical,
                schema,
                max_categories=cfg.max_categories,
                seed=seed,
            )
        except DataError as e:
            if stream.reading:
                raise  # the reader's own error, which names its file
            raise DataError(f"{stream.source}: {e}") from e
        return cls(transformer)


class _Stream:
    """The batches of (file, batch) pairs; `source` is the file of the batch being read, and the whole
    split's `source` before and after (an error about the whole split names the split). `reading`: the
    pairs themselves are being read (an error then is the reader's, not the fit's)."""

    def __init__(self, pairs: Iterable[tuple[str, pa.RecordBatch | pa.Table]], source: str) -> None:
        self.pairs, self.split, self.source, self.reading = iter(pairs), source, source, False

    def __iter__(self) -> Iterator[pa.RecordBatch | pa.Table]:
        while True:
            self.reading = True
            pair = next(self.pairs, None)
            self.reading = False
            if pair is None:
                break
            self.source = pair[0]
            yield pair[1]
        self.source = self.split
