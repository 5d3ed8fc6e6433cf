"""The vector codec: one fixed-length numeric vector column (pixels, counts), x = values / scale."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from vae_core.config import DataConfig
from vae_core.data.codecs.base import Batches, list_column, stream_vectors, vectors
from vae_core.data.dataset import DatasetSpec


@dataclass
class VectorCodec:
    """One fixed-length numeric vector column; x = values / scale. Bernoulli for values in [0, 1]
    (uint8 pixels / 255), Gaussian otherwise. Its fields are its JSON form."""

    kind: ClassVar[str] = "vector"
    reads: ClassVar[str] = "vector_column"
    layout: ClassVar[None] = None

    column: str
    dim: int
    value_type: str  # the stored values' Arrow type, e.g. "uint8": decode writes it back
    scale: float = 1.0
    image_shape: tuple[int, int, int] | None = None
    unit_interval: bool = True  # every training value / scale was in [0, 1]

    def __post_init__(self) -> None:
        self.image_shape = tuple(self.image_shape) if self.image_shape else None  # type: ignore[assignment]

    columns = property(lambda self: [self.column])
    likelihood = property(lambda self: "bernoulli" if self.unit_interval else "gaussian")
    sample_by_default = property(lambda self: False)  # pixel means are the usual picture of a sample

    def encode(self, batch: pa.RecordBatch | pa.Table, source: str) -> np.ndarray:
        return vectors(batch, self.column, self.dim, source, self.scale)

    def drift(self, batch: pa.RecordBatch | pa.Table) -> dict[str, dict[str, int]]:
        return {}  # encode refuses every vector it cannot take (length, nulls, NaN): nothing drifts

    def decode(self, x: np.ndarray) -> pa.Table:
        return pa.table({self.column: list_column(x * self.scale, pa.type_for_alias(self.value_type))})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VectorCodec:
        return cls(**d)

    @classmethod
    def fit(
        cls, spec: DatasetSpec, schema: pa.Schema, batches: Batches, source: str, cfg: DataConfig, seed: int
    ) -> VectorCodec:
        """The vector column's length and type from the spec; whether every x lies in [0, 1] from one
        pass (it decides the default likelihood)."""
        lo, hi = math.inf, -math.inf
        for x in stream_vectors(spec, batches):
            if len(x):
                lo, hi = min(lo, float(x.min()) / spec.scale), max(hi, float(x.max()) / spec.scale)
        value_type = str(schema.field(spec.vector_column).type.value_type)
        return cls(
            spec.vector_column, spec.dim, value_type, spec.scale, spec.image_shape, lo >= 0 and hi <= 1
        )
