"""The codec protocol and the helpers codecs share: reading a checked vector column, writing one back."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vae_core.config import DataConfig
from vae_core.data.dataset import DatasetSpec, is_list_type
from vae_core.data.layout import Block
from vae_core.errors import DataError

# columns -> one pass over the training split as (file, batch) pairs (dataset.iter_batches), so that a
# bad value found while fitting is reported with the file it is in.
Batches = Callable[[list[str]], Iterable[tuple[str, pa.RecordBatch | pa.Table]]]


class Codec(Protocol):
    """Rows of the training schema <-> the model's x. `reads` says what a codec takes from a row:
    one vector column (data.vector_column) or table columns."""

    kind: ClassVar[str]
    reads: ClassVar[Literal["vector_column", "table_columns"]]

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
    @property
    def sample_by_default(self) -> bool: ...  # generated rows: a draw from p(x|z), else its mean
    def encode(self, batch: pa.RecordBatch | pa.Table, source: str) -> np.ndarray: ...
    # Per column, the counts of values the fit never saw ({"city": {"unknown_category": 3}}), which
    # encode accepts: what a job records as drift and --strict refuses. Empty where none can be.
    def drift(self, batch: pa.RecordBatch | pa.Table) -> dict[str, dict[str, int]]: ...
    def decode(self, x: np.ndarray) -> pa.Table: ...
    def to_dict(self) -> dict[str, Any]: ...
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Codec: ...
    @classmethod
    def fit(
        cls, spec: DatasetSpec, schema: pa.Schema, batches: Batches, source: str, cfg: DataConfig, seed: int
    ) -> Codec: ...


Drift = dict[str, dict[str, int]]  # column -> kind (DRIFT) -> rows: what Codec.drift counts
DRIFT = {
    "unknown_category": "value(s) not among the model's categories",
    "null": "null(s) in a column that had none in training",
    "out_of_range": "value(s) outside the training range",
}


def add_drift(into: Drift, found: Drift) -> Drift:
    """`found`'s counts added to `into`'s (in place), e.g. a job's shards into the job's total."""
    for name, counts in found.items():
        column = into.setdefault(name, {})
        for kind, n in counts.items():
            column[kind] = column.get(kind, 0) + n
    return into


def describe_drift(drift: Drift) -> str:
    """'column 'city': 3 value(s) not among the model's categories; ...' (columns in name order)."""
    return "; ".join(
        f"column {name!r}: " + ", ".join(f"{n:,} {DRIFT.get(k, k)}" for k, n in sorted(counts.items()))
        for name, counts in sorted(drift.items())
    )


def column(batch: pa.RecordBatch | pa.Table, name: str, source: str) -> pa.Array:
    if name not in batch.schema.names:
        raise DataError(f"{source}: column {name!r} is missing (have {batch.schema.names})")
    col = batch.column(name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def vectors(
    batch: pa.RecordBatch | pa.Table, name: str, dim: int, source: str, scale: float = 1.0
) -> np.ndarray:
    """A list column as (N, dim) float32 values / scale, checked: no null vectors, every length dim,
    finite values."""
    arr = column(batch, name, source)
    t = arr.type
    if not is_list_type(t):
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
    raw = flat.to_numpy(zero_copy_only=False).reshape(len(arr), dim)
    # The cast and the division in one pass over the values (the training feed encodes every row of
    # every streamed epoch). Integers are always finite: only float values are checked, once scaled.
    values = (
        raw.astype(np.float32, copy=False)
        if scale == 1.0
        else np.divide(raw, np.float32(scale), dtype=np.float32)
    )
    if raw.dtype.kind == "f" and not np.isfinite(values).all():
        row = int(np.flatnonzero(~np.isfinite(values).all(1))[0])
        raise DataError(f"{source}: column {name!r}: NaN or inf in vector features (row {row})")
    return values


def stream_vectors(spec: DatasetSpec, batches: Batches) -> Iterator[np.ndarray]:
    """The spec's vector column over one pass of `batches`, (N, spec.dim) float32 per batch, checked
    and named by file as encode checks it."""
    assert spec.vector_column is not None
    for file, batch in batches([spec.vector_column]):
        yield vectors(batch, spec.vector_column, spec.dim, file)


def list_column(values: np.ndarray, value_type: pa.DataType) -> pa.Array:
    """(N, L) -> fixed_size_list<value_type>[L], integers rounded and clipped to their range."""
    if pa.types.is_integer(value_type):
        info = np.iinfo(value_type.to_pandas_dtype())
        values = np.clip(np.rint(values), info.min, info.max)
    flat = pa.array(np.ascontiguousarray(values).reshape(-1).astype(value_type.to_pandas_dtype()), value_type)
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
