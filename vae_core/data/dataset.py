"""Parquet shard datasets on any URI: listing, schema checks, the dataset spec, streaming batches.

Every error names the shard and column it is about: missing or corrupt shards, schemas that differ
across shards, unknown columns named in the config, and empty datasets. Rows become features in the
codecs (vae_core.data.codecs), which name the file, column and row of a bad value.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from vae_core.config import DataConfig
from vae_core.data import tables
from vae_core.data.arrow_types import is_temporal
from vae_core.data.storage import arrow_filesystem, filesystem, uri_of, why_missing
from vae_core.errors import DataError, StorageError, TableError


def list_shards(uri: str, storage_options: dict | None = None) -> list[str]:
    """Sorted URIs of the .parquet files of `uri`: a Delta table (the files of its latest version),
    a folder/prefix of Parquet shards, or a single file."""
    fs, path = filesystem(uri, storage_options)
    fs.invalidate_cache(path)  # object-store listings are cached per process; others may have written
    if not fs.exists(path):
        raise DataError(f"{uri}: no such dataset ({why_missing(uri, storage_options)})")
    if fs.isfile(path):
        if not path.endswith(".parquet") and (kind := other_format(path)):
            raise DataError(
                f"{uri}: a {kind} file, not Parquet; {IMPORT_HINT.format(kind=kind.lower(), uri=uri)}"
            )
        return [uri]
    if tables.is_delta_table(uri, storage_options):
        try:
            files = tables.data_files(uri, storage_options)
        except TableError as e:
            raise DataError(str(e)) from e
        if not files:
            raise DataError(f"{uri}: empty dataset, the Delta table's latest version has no files")
        return files
    found = fs.find(path)
    files = sorted(p for p in found if p.endswith(".parquet"))
    if not files:
        csv = sorted(p for p in found if other_format(p))
        hint = f", but CSV files: {IMPORT_HINT.format(kind='csv', uri=uri_of(uri, csv[0]))}" if csv else ""
        raise DataError(f"{uri}: empty dataset, no .parquet files found{hint}")
    return [uri_of(uri, p) for p in files]


IMPORT_HINT = "import it first: vaeflow data import {kind} --input {uri} --output DATASET"


def other_format(path: str) -> str | None:
    """'CSV' for a file vaeflow imports rather than reads (by its name), else None."""
    return "CSV" if path.lower().endswith((".csv", ".csv.gz")) else None


def read_schema(shards: list[str], storage_options: dict | None = None) -> pa.Schema:
    """The common schema of all shards (footers only, 8 read at a time); corrupt shards and schema
    drift are errors, for the first such shard in order."""

    def one(shard: str) -> pa.Schema:
        fs, path = arrow_filesystem(shard, storage_options)
        try:
            return pq.read_schema(path, filesystem=fs).remove_metadata()
        except FileNotFoundError as e:
            raise DataError(f"{shard}: shard is missing: {e}") from e
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{shard}: not a readable Parquet file: {e}") from e

    first: pa.Schema | None = None
    with ThreadPoolExecutor(max_workers=8) as pool:
        schemas = list(pool.map(one, shards))
    for shard, schema in zip(shards, schemas, strict=True):
        if first is None:
            first, first_shard = schema, shard
            continue
        if schema != first:
            raise DataError(f"{shard}: schema differs from {first_shard}: {_schema_diff(first, schema)}")
    assert first is not None
    return first


def encode_schema(schema: pa.Schema) -> str:
    """An Arrow schema as base64 IPC bytes: exact types (lists, dictionaries) survive JSON."""
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def decode_schema(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


def _schema_diff(a: pa.Schema, b: pa.Schema) -> str:
    for f in a:
        if f.name not in b.names:
            return f"column {f.name!r} is missing"
        if b.field(f.name).type != f.type:
            return f"column {f.name!r} is {b.field(f.name).type} here but {f.type} there"
    extra = [n for n in b.names if n not in a.names]
    if extra:
        return f"column {extra[0]!r} is extra"
    return "columns are in a different order"


def count_rows(shards: list[str], storage_options: dict | None = None) -> int:
    """Total rows from the shards' Parquet footers (no data read)."""
    total = 0
    for shard in shards:
        fs, path = arrow_filesystem(shard, storage_options)
        try:
            with fs.open_input_file(path) as f:
                total += pq.ParquetFile(f).metadata.num_rows
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{shard}: not a readable Parquet file: {e}") from e
    return total


@dataclass
class DatasetSpec:
    """How rows become features: one vector column, or tabular continuous + categorical columns."""

    kind: str  # the codec, a name from vae_core.config.CODECS
    id_column: str | None
    vector_column: str | None = None
    dim: int = 0
    image_shape: tuple[int, int, int] | None = None
    scale: float = 1.0
    continuous: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)

    @property
    def feature_columns(self) -> list[str]:
        return [self.vector_column] if self.vector_column else [*self.continuous, *self.categorical]


def is_list_type(t: pa.DataType) -> bool:
    """A list, large list or fixed-size list (a vector column's types)."""
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def zero_one_columns(
    shards: list[str], schema: pa.Schema, names: list[str], storage_options: dict | None
) -> set[str]:
    """The integer columns among `names` whose values are all 0 or 1, from the shards' footer statistics
    (min >= 0 and max <= 1 in every row group; no data read). A row group without statistics, or
    all nulls, leaves its column out."""
    left = {n for n in names if pa.types.is_integer(schema.field(n).type)}
    for shard in shards:
        if not left:
            break
        fs, path = arrow_filesystem(shard, storage_options)
        try:
            meta = pq.read_metadata(path, filesystem=fs)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{shard}: not a readable Parquet file: {e}") from e
        at = {meta.schema.column(i).name: i for i in range(meta.num_columns)}
        for group in range(meta.num_row_groups):
            for name in list(left):
                stats = meta.row_group(group).column(at[name]).statistics
                if stats is None or not stats.has_min_max or not (0 <= stats.min and stats.max <= 1):
                    left.discard(name)
    return left


def resolve_spec(
    cfg: DataConfig, schema: pa.Schema, source: str, flags: set[str] = frozenset()
) -> DatasetSpec:
    """Check the config's columns against the schema and infer what the config leaves open: numbers
    (and dates) continuous, the rest categorical; `flags` (0/1 integer columns, zero_one_columns)
    categorical too unless data.continuous names them."""
    listed = [*(cfg.columns or []), *cfg.categorical, *cfg.continuous, *cfg.exclude]
    named = [cfg.id_column, cfg.vector_column, *listed]
    for name in named:
        if name is not None and name not in schema.names:
            raise DataError(f"{source}: unknown column {name!r} named in the config (have {schema.names})")
    if cfg.vector_column is not None:
        t = schema.field(cfg.vector_column).type
        if not is_list_type(t) or not _is_numeric(t.value_type):
            raise DataError(f"{source}: column {cfg.vector_column!r} is {t}, not a list of numbers")
        fixed = t.list_size if pa.types.is_fixed_size_list(t) else None
        shape_dim = math.prod(cfg.image_shape) if cfg.image_shape else None
        dim = cfg.vector_dim or shape_dim or fixed
        if dim is None:
            raise DataError(
                f"{source}: column {cfg.vector_column!r} is a variable-length list; "
                "set data.vector_dim or data.image_shape"
            )
        expected_by = "data.vector_dim" if cfg.vector_dim else "data.image_shape" if shape_dim else "the list"
        for what, value in (("fixed list size", fixed), ("data.image_shape", shape_dim)):
            if value is not None and value != dim:
                raise DataError(
                    f"{source}: column {cfg.vector_column!r}: {what} gives {value} values, "
                    f"{expected_by} {dim}"
                )
        kind = "vector" if cfg.codec == "auto" else cfg.codec  # fit_codec checks that it reads vectors
        return DatasetSpec(kind, cfg.id_column, cfg.vector_column, dim, cfg.image_shape, cfg.scale)
    features = [n for n in cfg.columns or schema.names if n != cfg.id_column and n not in cfg.exclude]
    continuous, categorical = [], []
    for name in features:
        t = schema.field(name).type
        if pa.types.is_dictionary(t):
            t = t.value_type
        number = _is_numeric(t) or is_temporal(t)  # dates and times are continuous, their type restored
        supported = number or pa.types.is_boolean(t) or pa.types.is_string(t) or pa.types.is_large_string(t)
        if not supported:
            raise DataError(
                f"{source}: column {name!r} has unsupported type {t} for a tabular feature; "
                f'leave it out with data.exclude=["{name}"]'
            )
        if name in cfg.continuous and not number:
            raise DataError(f"{source}: column {name!r} is {t} and cannot be continuous")
        if name in cfg.categorical or not number or (name in flags and name not in cfg.continuous):
            categorical.append(name)
        else:
            continuous.append(name)
    if not features:
        raise DataError(f"{source}: no feature columns")
    kind = "tabular" if cfg.codec == "auto" else cfg.codec
    return DatasetSpec(kind, cfg.id_column, continuous=continuous, categorical=categorical)


ID_KEY = b"vaeflow.id_column"  # Parquet schema metadata: the key column `vaeflow data import` kept


def with_recorded_id(cfg: DataConfig) -> DataConfig:
    """cfg with data.id_column as the dataset records it: when the config keeps the default "id" and
    the train split has no "id" column, the key column `vaeflow data import --id-column` recorded in
    its shards. Anything else (no such record, an unreadable dataset) leaves cfg as it is; opening the
    dataset reports problems."""
    if cfg.id_column != "id":
        return cfg
    try:
        first = list_shards(cfg.uri.rstrip("/") + "/train", cfg.storage_options)[0]
        fs, path = arrow_filesystem(first, cfg.storage_options)
        schema = pq.read_schema(path, filesystem=fs)
    except (DataError, StorageError, OSError, pa.ArrowInvalid):
        return cfg
    recorded = (schema.metadata or {}).get(ID_KEY)
    if "id" in schema.names or not recorded or recorded.decode() not in schema.names:
        return cfg
    return cfg.model_copy(update={"id_column": recorded.decode()})


def open_dataset(cfg: DataConfig, split: str | None = None) -> tuple[list[str], pa.Schema, DatasetSpec]:
    """List and check the shards of `cfg.uri` (or its `split/` prefix) and resolve the spec."""
    uri = cfg.uri.rstrip("/") + (f"/{split}" if split else "")
    shards = list_shards(uri, cfg.storage_options)
    schema = read_schema(shards, cfg.storage_options)
    open_ = [
        n
        for n in (cfg.columns or schema.names)
        if n in schema.names
        and n not in (cfg.id_column, cfg.vector_column, *cfg.categorical, *cfg.continuous)
    ]
    flags = (
        zero_one_columns(shards, schema, open_, cfg.storage_options) if cfg.vector_column is None else set()
    )
    return shards, schema, resolve_spec(cfg, schema, uri, flags)


def iter_batches(
    shards: list[str], columns: list[str], batch_rows: int = 65_536, storage_options: dict | None = None
) -> Iterator[tuple[str, pa.RecordBatch]]:
    """Stream (shard, record batch) over all shards, reading only `columns`."""
    for shard in shards:
        fs, path = arrow_filesystem(shard, storage_options)
        try:
            with fs.open_input_file(path) as f:
                for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows, columns=columns):
                    yield shard, batch
        except FileNotFoundError as e:
            raise DataError(f"{shard}: shard is missing: {e}") from e
        except pa.ArrowInvalid as e:
            raise DataError(f"{shard}: not a readable Parquet file: {e}") from e
