"""The standardized codec: a dense float vector standardized per dimension, Gaussian likelihood."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from vae_core.config import DataConfig
from vae_core.data.codecs.base import Batches, stream_vectors
from vae_core.data.codecs.vector import VectorCodec
from vae_core.data.dataset import DatasetSpec
from vae_core.errors import DataError


@dataclass
class StandardizedCodec:
    """A dense float vector, standardized per dimension: x = (v - mean) / std, with mean and std
    fitted in one streaming pass; Gaussian likelihood. The column itself is read and written by a
    vector codec (scale 1)."""

    kind: ClassVar[str] = "standardized"
    reads: ClassVar[str] = "vector_column"
    image_shape: ClassVar[None] = None
    layout: ClassVar[None] = None
    likelihood: ClassVar[str] = "gaussian"
    sample_by_default: ClassVar[bool] = False  # the mean of p(x|z) is a typical vector
    MIN_STD: ClassVar[float] = 1e-6  # a constant dimension keeps its value and gets unit scale

    vector: VectorCodec
    mean: list[float]
    std: list[float]

    columns = property(lambda self: self.vector.columns)
    dim = property(lambda self: self.vector.dim)

    @cached_property
    def _moments(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)

    def encode(self, batch: pa.RecordBatch | pa.Table, source: str) -> np.ndarray:
        mean, std = self._moments
        return (self.vector.encode(batch, source) - mean) / std

    def drift(self, batch: pa.RecordBatch | pa.Table) -> dict[str, dict[str, int]]:
        return self.vector.drift(batch)

    def decode(self, x: np.ndarray) -> pa.Table:
        mean, std = self._moments
        return self.vector.decode(x * std + mean)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StandardizedCodec:
        return cls(VectorCodec.from_dict(d["vector"]), d["mean"], d["std"])

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
        for v in stream_vectors(spec, batches):
            v = v.astype(np.float64)
            n += len(v)
            total += v.sum(0)
            total_sq += (v**2).sum(0)
        if n == 0:
            raise DataError(f"{source}: no rows to fit the standardized codec on")
        mean = total / n
        std = np.sqrt(np.maximum(total_sq / n - mean**2, 0.0))
        std = np.where(std < cls.MIN_STD, 1.0, std)
        vector = VectorCodec(spec.vector_column, spec.dim, str(value_type), unit_interval=False)
        return cls(vector, mean.tolist(), std.tolist())
