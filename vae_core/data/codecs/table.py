"""The table codec: continuous and categorical columns through vae_core.data.tabular's transformer."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vae_core.config import DataConfig
from vae_core.data.codecs.base import Batches, column
from vae_core.data.dataset import DatasetSpec
from vae_core.data.tabular import CategoricalColumn, TabularTransformer
from vae_core.errors import ConfigError, DataError


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
        return self.transformer.drift(batch)  # kinds: codecs.base.DRIFT

    def decode(self, x: np.ndarray) -> pa.Table:
        return self.transformer.inverse(x)

    # ---- what generate may ask of the model's columns (--match-shares, --where) --------------------
    def check_match_shares(self, columns: list[str]) -> None:
        """Each of `columns` is categorical with its training shares recorded; else a ConfigError."""
        by_name = {c.name: c for c in self.transformer.columns}
        for name in columns:
            col = by_name.get(name)
            if not isinstance(col, CategoricalColumn):
                kinds = sorted(n for n, c in by_name.items() if isinstance(c, CategoricalColumn))
                raise ConfigError(
                    f"generate.match_shares (--match-shares): {name!r} is not a categorical column of this "
                    f"model; its categorical columns: {', '.join(kinds) or 'none'}"
                )
            if col.shares is None:
                raise ConfigError(
                    f"generate.match_shares (--match-shares): the model's codec recorded no shares for "
                    f"{name!r} (it was fitted before vaeflow recorded them): retrain to use this option"
                )

    def match_shares(self, x: np.ndarray, n: int, columns: list[str], rng: np.random.Generator) -> np.ndarray:
        """Which n rows of x to keep so that `columns` hold their training shares (checked first)."""
        return self.transformer.match_shares(x, n, columns, rng)

    def shares_gap(self, table: pa.Table, columns: list[str]) -> str:
        """How close `table`'s shares of the categorical `columns` came to their training shares: per
        column the largest gap, e.g. "sex: within 0.4 points (Female 33.5% against 33.1%)"."""
        parts = []
        for col in self.transformer.columns:
            if col.name not in columns or not isinstance(col, CategoricalColumn) or col.shares is None:
                continue
            counts = pc.value_counts(table.column(col.name).combine_chunks()).to_pylist()
            got = {c["values"]: c["counts"] / max(table.num_rows, 1) for c in counts}
            wanted = dict(zip(col.categories, col.shares, strict=False))  # shares may end with the other slot
            value = max(wanted, key=lambda v: abs(got.get(v, 0.0) - wanted[v]))
            now, want = got.get(value, 0.0), wanted[value]
            gap = 100 * abs(now - want)
            parts.append(f"{col.name}: within {gap:.1f} points ({value} {now:.1%} against {want:.1%})")
        return "; ".join(parts)

    def check_condition(self, name: str, value: pa.Scalar, text: str) -> None:
        """`value` (of `name`'s output type) is one the model was trained on: a known category, or a
        number within the training range; else a ConfigError naming the column and the value."""
        col = next(c for c in self.transformer.columns if c.name == name)  # one of self.columns
        if isinstance(col, CategoricalColumn):
            if value.as_py() not in col.categories:
                known = ", ".join(repr(c) for c in col.categories[:20])
                more = f" and {len(col.categories) - 20} more" if len(col.categories) > 20 else ""
                raise ConfigError(
                    f"generate.where (--where): {name}={text!r} is not a category the model was trained "
                    f"on; its categories: {known}{more}"
                )
            return
        number = None if pa.types.is_temporal(value.type) else pc.cast(value, pa.float64()).as_py()
        if number is not None and not col.min <= number <= col.max:
            raise ConfigError(
                f"generate.where (--where): {name}={text!r} is outside the training range "
                f"[{col.min:g}, {col.max:g}]"
            )

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
                bins=cfg.continuous_bins,
                dependencies=cfg.dependencies,
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
