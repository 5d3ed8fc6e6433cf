"""The standardized codec: a dense float vector standardized per dimension, Gaussian likelihood."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from vae_core.config import DataConfig
from vae_core.data.codecs.base import Batches, list_column, vectors
from vae_core.data.dataset import DataError, DatasetSpec


class StandardizedCodec:
    """A dense float vector, standardized per dimension: x = (v - mean) / std, with mean and std
    fitted in one streaming pass; Gaussian likelihood."""

    kind: ClassVar[str] = "standardized"
    reads: ClassVar[str] = "vector_column"
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
        v = vectors(batch, self.column, self.dim, source)
        return ((v - self.mean) / self.std).astype(np.float32)

    def decode(self, x: np.ndarray) -> pa.Table:
        v = x.astype(np.float64) * self.std + self.mean
        return pa.table({self.column: list_column(v, pa.type_for_alias(self.value_type))})

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
        for file, batch in batches([spec.vector_column]):
            v = vectors(batch, spec.vector_column, spec.dim, file).astype(np.float64)
            n += len(v)
            total += v.sum(0)
            total_sq += (v**2).sum(0)
        if n == 0:
            raise DataError(f"{source}: no rows to fit the standardized codec on")
        mean = total / n
        std = np.sqrt(np.maximum(total_sq / n - mean**2, 0.0))
        std = np.where(std < cls.MIN_STD, 1.0, std)
        return cls(spec.vector_column, mean.tolist(), std.tolist(), str(value_type))
