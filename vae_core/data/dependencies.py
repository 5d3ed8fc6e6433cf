"""Exact dependencies between columns: B is a function of A in every training row.

Adult's `education` fixes `education_num` (a 1:1 map). A VAE decodes each column from the latent code
on its own, so a drawn row may pair "Bachelors" with 9 where no real row does (14% of rows before this
module), and a detector tells such rows at once. The tabular transformer finds these maps while it
streams the training rows (`Tracker`) and decoding derives a dependent column from its source
(`Dependency.apply`), so generated rows keep every map that held in every training row.

Bounded: only columns of at most MAX_VALUES distinct values take part, a pair is dropped at its first
contradiction, and a source must have at most one distinct value per MIN_ROWS_PER_VALUE rows (in a
small table, a column of nearly unique values "determines" everything by chance).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from vae_core.data.arrow_types import as_array

MAX_VALUES = 200
MIN_ROWS_PER_VALUE = 20


@dataclass
class Dependency:
    """`column`'s value is map[`source`'s value] in every training row (nulls included, as None)."""

    column: str
    source: str
    pairs: list[list[Any]]  # [source value, column value], JSON-ready

    def apply(self, arrays: dict[str, pa.Array]) -> None:
        """Replace arrays[column] by the map of arrays[source], where the source value is a known one."""
        keys = pa.array([k for k, _ in self.pairs], type=arrays[self.source].type)
        values = pa.array([v for _, v in self.pairs], type=arrays[self.column].type)
        at = pc.index_in(arrays[self.source], value_set=keys, skip_nulls=False)
        mapped = pc.take(values, at)
        known = pc.is_valid(at)
        arrays[self.column] = pc.if_else(known, mapped, arrays[self.column])


class Tracker:
    """Which ordered pairs (A, B) of `names` have B a function of A over every batch seen."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.values: dict[str, set] = {n: set() for n in names}  # distinct values while few
        self.maps: dict[tuple[str, str], dict] = {(a, b): {} for a in names for b in names if a != b}
        self.rows = 0

    def update(self, batch: pa.RecordBatch | pa.Table) -> None:
        if not self.maps:
            return
        self.rows += batch.num_rows
        columns = {}
        for name in list(self.values):
            arr = as_array(batch.column(name))
            distinct = pc.unique(arr).to_pylist()
            self.values[name].update(distinct)
            if len(self.values[name]) > MAX_VALUES:
                self._drop(name)
            else:
                columns[name] = arr
        for (a, b), mapping in list(self.maps.items()):
            pairs = pa.table({"a": columns[a], "b": columns[b]}).group_by(["a", "b"]).aggregate([])
            for x, y in zip(pairs.column("a").to_pylist(), pairs.column("b").to_pylist(), strict=True):
                if mapping.setdefault(x, y) != y:
                    del self.maps[(a, b)]
                    break

    def _drop(self, name: str) -> None:
        del self.values[name]
        self.maps = {pair: m for pair, m in self.maps.items() if name not in pair}

    def found(self) -> list[Dependency]:
        """The dependencies to keep at decoding, in column order: a column is derived from the first
        column that determines it and is not itself derived; a column others derive from stays
        modelled (so no chains and no cycles). A constant column is left out (nothing to keep)."""
        derived: dict[str, Dependency] = {}
        sources: set[str] = set()
        for b in self.names:
            if b in sources or b not in self.values or len(self.values[b]) < 2:
                continue
            for a in self.names:
                mapping = self.maps.get((a, b))
                if mapping is None or a in derived or len(mapping) * MIN_ROWS_PER_VALUE > self.rows:
                    continue
                # to_pylist gave the keys and values: plain Python, JSON-ready
                derived[b] = Dependency(b, a, [[k, v] for k, v in mapping.items()])
                sources.add(a)
                break
        return list(derived.values())


def candidates(schema: pa.Schema, names: list[str]) -> list[str]:
    """The columns whose values JSON keeps exactly: strings, integers, booleans (not floats, dates)."""
    out = []
    for name in names:
        t = schema.field(name).type
        t = t.value_type if pa.types.is_dictionary(t) else t
        if (
            pa.types.is_string(t)
            or pa.types.is_large_string(t)
            or pa.types.is_integer(t)
            or pa.types.is_boolean(t)
        ):
            out.append(name)
    return out
