"""Feature codecs: the one place where rows of the training schema become the model's x and back.

A codec is fitted once on the training split (streaming), saved with every checkpoint as JSON
(`codec.json`), and then used by training (Ray and in-process), embedding, generation, reports and
the beta study alike:

    encode(batch, source) -> x        an Arrow batch -> (N, D) float32, validated; errors name the
                                      source (file), the column and the row
    decode(x) -> table                (N, D) features (decoder means or samples) -> the feature
                                      columns in the training schema's types
    dim, image_shape, layout          what the model needs to know (families.DataShape)
    likelihood                        the observation model that fits the data by default

Codecs: `vector` (one fixed-length numeric vector column, e.g. uint8 image pixels divided by
`scale`), `tabular` (continuous + categorical columns through the mode-specific normalization of
vae_core.data.tabular) and `standardized` (a dense float vector standardized per dimension). Adding one is
a class here plus one line in CODECS; nothing else in vae_core asks what kind of data it has.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vae_core.config import DataConfig
from vae_core.data.dataset import DataError, DatasetSpec
from vae_core.data.layout import Block
from vae_core.data.tabular import TabularTransformer

FORMAT = "vaeflow-codec/1"
Batches = Callable[[list[str]], Iterable[pa.RecordBatch | pa.Table]]  # columns -> one pass over train


class Codec(Protocol):
    kind: ClassVar[str]

    @property
    def columns(self) -> list[str]: ...  # the input columns it reads
    @property
    def dim(self) -> int: ...
    @property
    def image_shape(self) -> tuple[int, int, int] | None: ...
    @property
    def layout(self) -> list[Block] | None: ...
    @property
    def likelihood(self) -> str: ...
    def encode(self, batch: pa.RecordBatch | pa.Table, source: str) -> np.ndarray: ...
    def decode(self, x: np.ndarray) -> pa.Table: ...
    def to_dict(self) -> dict[str, Any]: ...


def _column(batch: pa.RecordBatch | pa.Table, name: str, source: str) -> pa.Array:
    if name not in batch.schema.names:
        raise DataError(f"{source}: column {name!r} is missing (have {batch.schema.names})")
    col = batch.column(name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _vectors(batch: pa.RecordBatch | pa.Table, name: str, dim: int, source: str) -> np.ndarray:
    """A list column as (N, dim) float32, checked: no null vectors, every length dim, finite values."""
    arr = _column(batch, name, source)
    t = arr.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        raise DataError(f"{source}: column {name!r} is {t}, not a list of numbers")
    if arr.null_count:
        row = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{source}: column {name!r}: row {row} is a null vector")
    if pa.types.is_fixed_size_list(t):
        if t.list_size != dim:
            raise DataError(f"{source}: column {name!r}: vectors of {t.list_size} values, expected {dim}")
    else:
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(lengths != dim)
        if len(bad):
            raise DataError(
                f"{source}: column {name!r}: row {bad[0]} has {lengths[bad[0]]} values, expected {dim}"
            )
    flat = arr.flatten()
    if flat.null_count:
        row = int(np.flatnonzero(flat.is_null().to_numpy(zero_copy_only=False))[0]) // dim
        raise DataError(f"{source}: column {name!r}: a null value in the vector of row {row}")
    values = flat.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(arr), dim)
    if not np.isfinite(values).all():
        row = int(np.flatnonzero(~np.isfinite(values).all(1))[0])
        raise DataError(f"{source}: column {name!r}: NaN or inf in vector features (row {row})")
    return values


def _list_column(values: np.ndarray, value_type: pa.DataType) -> pa.Array:
    """(N, L) -> fixed_size_list<value_type>[L], integers rounded and clipped to their range."""
    if pa.types.is_integer(value_type):
        info = np.iinfo(value_type.to_pandas_dtype())
        values = np.clip(np.rint(values), info.min, info.max)
    flat = pa.array(np.ascontiguousarray(values).reshape(-1).astype(value_type.to_pandas_dtype()), value_type)
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])


class VectorCodec:
    """One fixed-length numeric vector column; x = values / scale. Bernoulli for values in [0, 1]
    (uint8 pixels / 255), Gaussian otherwise."""

    kind: ClassVar[str] = "vector"

    def __init__(
        self,
        column: str,
        dim: int,
        value_type: str,
        scale: float = 1.0,
        image_shape: tuple[int, int, int] | None = None,
        unit_interval: bool = True,
    ) -> None:
        self.column, self._dim, self.value_type, self.scale = column, dim, value_type, scale
        self._image_shape = tuple(image_shape) if image_shape else None
        self.unit_interval = unit_interval  # every training value / scale was in [0, 1]

    columns = property(lambda self: [self.column])
    dim = property(lambda self: self._dim)
    image_shape = property(lambda self: self._image_shape)
    layout = property(lambda self: None)
    likelihood = property(lambda self: "bernoulli" if self.unit_interval else "gaussian")

    def encode(self, batch: pa.RecordBatch | pa.Table, source: str) -> np.ndarray:
        x = _vectors(batch, self.column, self._dim, source)
        if self.scale != 1.0:
            x /= self.scale
        return x

    def decode(self, x: np.ndarray) -> pa.Table:
        return pa.table({self.column: _list_column(x * self.scale, pa.type_for_alias(self.value_type))})

    def to_dict(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "dim": self._dim,
            "value_type": self.value_type,
            "scale": self.scale,
            "image_shape": list(self._image_shape) if self._image_shape else None,
            "unit_interval": self.unit_interval,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VectorCodec:
        return cls(**d)

    @classmethod
    def fit(
        cls, spec: DatasetSpec, schema: pa.Schema, batches: Batches, source: str, cfg: DataConfig, seed: int
    ) -> VectorCodec:
        """The vector column's length and type from the spec; whether every x lies in [0, 1] from one
        pass (it decides the default likelihood)."""
        value_type = str(schema.field(spec.vector_column).type.value_type)
        lo, hi = math.inf, -math.inf
        for batch in batches([spec.vector_column]):
            x = _vectors(batch, spec.vector_column, spec.dim, source) / spec.scale
            if len(x):
                lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
        return cls(
            spec.vector_column, spec.dim, value_type, spec.scale, spec.image_shape, lo >= 0 and hi <= 1
        )


class StandardizedCodec:
    """A dense float vector, standardized per dimension: x = (v - mean) / std, with mean and std
    fitted in one streaming pass; Gaussian likelihood."""

    kind: ClassVar[str] = "standardized"
    MIN_STD = 1e-6  # a constant dimension keeps its value and gets unit scale

    def __init__(self, column: str, mean: list[float], std: list[float], value_type: str) -> None:
        self.column, self.value_type = column, value_type
        self.mean, self.std = np.asarray(mean, np.float64), np.asarray(std, np.float64)

    columns = property(lambda self: [self.column])
    dim = property(lambda self: len(self.mean))
    image_shape = property(lambda self: None)
    layout = property(lambda self: None)
    likelihood = property(lambda self: "gaussian")

    def encode(self, batch: pa.RecordBatch | pa.Table, source: str) -> np.ndarray:
        v = _vectors(batch, self.column, self.dim, source)
        return ((v - self.mean) / self.std).astype(np.float32)

    def decode(self, x: np.ndarray) -> pa.Table:
        v = x.astype(np.float64) * self.std + self.mean
        return pa.table({self.column: _list_column(v, pa.type_for_alias(self.value_type))})

    def to_dict(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "value_type": self.value_type,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StandardizedCodec:
        return cls(**d)

    @classmethod
    def fit(
        cls, spec: DatasetSpec, schema: pa.Schema, batches: Batches, source: str, cfg: DataConfig, seed: int
    ) -> StandardizedCodec:
        value_type = schema.field(spec.vector_column).type.value_type
        if not pa.types.is_floating(value_type):
            raise DataError(
                f"{source}: the standardized codec takes float vectors; column {spec.vector_column!r} "
                f"holds {value_type} (use data.codec='vector' for pixels or counts)"
            )
        n, total, total_sq = 0, np.zeros(spec.dim), np.zeros(spec.dim)
        for batch in batches([spec.vector_column]):
            v = _vectors(batch, spec.vector_column, spec.dim, source).astype(np.float64)
            n += len(v)
            total += v.sum(0)
            total_sq += (v**2).sum(0)
        if n == 0:
            raise DataError(f"{source}: no rows to fit the standardized codec on")
        mean = total / n
        std = np.sqrt(np.maximum(total_sq / n - mean**2, 0.0))
        std = np.where(std < cls.MIN_STD, 1.0, std)
        return cls(spec.vector_column, mean.tolist(), std.tolist(), str(value_type))


class TabularCodec:
    """Continuous and categorical columns (vae_core.data.tabular's mode-specific normalization and
    one-hot codes); the mixed tabular likelihood over its layout."""

    kind: ClassVar[str] = "tabular"

    def __init__(self, transformer: TabularTransformer) -> None:
        self.transformer = transformer

    columns = property(lambda self: self.transformer.column_names)
    dim = property(lambda self: self.transformer.dim)
    image_shape = property(lambda self: None)
    layout = property(lambda self: self.transformer.layout)
    likelihood = property(lambda self: "tabular")

    def encode(self, batch: pa.RecordBatch | pa.Table, source: str) -> np.ndarray:
        for name in self.columns:
            _column(batch, name, source)
        try:
            return self.transformer.transform(batch)
        except (ValueError, pa.ArrowException) as e:
            raise DataError(f"{source}: {e}") from e

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
        try:
            transformer = TabularTransformer.fit(
                batches(spec.feature_columns),
                spec.continuous,
                spec.categorical,
                schema,
                max_categories=cfg.max_categories,
                seed=seed,
            )
        except ValueError as e:
            raise DataError(f"{source}: {e}") from e
        return cls(transformer)


CODECS: dict[str, type] = {c.kind: c for c in (VectorCodec, TabularCodec, StandardizedCodec)}


def codec_to_json(codec: Codec) -> str:
    return json.dumps({"format": FORMAT, "kind": codec.kind, "codec": codec.to_dict()}, indent=1)


def codec_from_json(text: str, source: str = "codec.json") -> Codec:
    d = json.loads(text)
    if d.get("format") != FORMAT or d.get("kind") not in CODECS:
        raise ValueError(
            f"{source}: not a vaeflow codec (format {d.get('format')!r}, kind {d.get('kind')!r})"
        )
    return CODECS[d["kind"]].from_dict(d["codec"])


def fit_codec(
    spec: DatasetSpec, schema: pa.Schema, batches: Batches, source: str, cfg: DataConfig, seed: int = 0
) -> Codec:
    """Fit the codec the spec names (`spec.kind`) on one streaming pass over the training split."""
    return CODECS[spec.kind].fit(spec, schema, batches, source, cfg, seed)
