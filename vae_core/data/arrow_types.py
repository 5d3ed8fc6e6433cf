"""Arrow columns as the tabular codec reads them: dates and times as numbers, type names as types."""

from __future__ import annotations

import re

import pyarrow as pa


def is_temporal(t: pa.DataType) -> bool:
    """Dates, timestamps and times: continuous columns counted in their own unit (days, s, ms, us, ns)."""
    return pa.types.is_date(t) or pa.types.is_timestamp(t) or pa.types.is_time(t)


def as_numbers(arr: pa.Array) -> pa.Array:
    """A temporal column as the integers it stores; any other column as it is."""
    if is_temporal(arr.type):
        return arr.cast(pa.int32() if arr.type.bit_width == 32 else pa.int64())
    return arr


def temporal_as_numbers(table: pa.Table) -> pa.Table:
    """`table` with its date and time columns as the integers they store (for metrics and plots)."""
    for i, f in enumerate(table.schema):
        if is_temporal(f.type):
            table = table.set_column(i, f.name, as_numbers(table.column(i).combine_chunks()))
    return table


_TIMESTAMP = re.compile(r"timestamp\[(s|ms|us|ns)(?:, tz=(.+))?\]")


def arrow_type(text: str) -> pa.DataType:
    """The Arrow type `str(type)` wrote (timestamps with a time zone included)."""
    if match := _TIMESTAMP.fullmatch(text):
        return pa.timestamp(match[1], tz=match[2])
    return pa.type_for_alias(text)


def as_array(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous array of plain values (chunks combined, a dictionary column decoded)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    return arr
