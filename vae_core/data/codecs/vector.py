"""The vector codec: one fixed-length numeric vector column (pixels, counts), x = values / scale."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from vae_core.config import DataConfig
from vae_core.data.codecs.base import Batches, list_column, vectors
from vae_core.data.dataset import DatasetSpec


class VectorCodec:
    """One fixed-length numeric vector column; x = values / scale. Bernoulli for values in [0, 1]
    (uint8 pixels / 255), Gaussian otherwise."""

    kind: ClassVar[str] = "vector"
    reads: ClassVar[str] = "vector_column"

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
        x = vectors(batch, self.column, self._dim, source)
        if self.scale != 1.0:
            x /= self.scale
        return x

    def decode(self, x: np.ndarray) -> pa.Table:
        return pa.table({self.column: list_column(x * self.scale, pa.type_for_alias(self.value_type))})

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
        for file, batch in batches([spec.vector_column]):
            x = vectors(batch, spec.vector_column, spec.dim, file) / spec.scale
            if len(x):
                lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
        return cls(
            spec.vector_column, spec.dim, value_type, spec.scale, spec.image_shape, lo >= 0 and hi <= 1
        )
