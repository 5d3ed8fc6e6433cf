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
a module in this package plus its line in `vae_core.config.CODECS`; nothing else in vae_core asks
what kind of data it has.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vae_core.config import CODECS, DataConfig
from vae_core.data.codecs.base import Batches, Codec
from vae_core.data.dataset import DatasetSpec, iter_batches
from vae_core.data.storage import join, uri_of
from vae_core.errors import CheckpointError, DataError

__all__ = [
    "Codec",
    "codec_class",
    "codec_from_json",
    "codec_to_json",
    "fit_codec",
    "fit_on_train",
    "legacy_codec",
]

FORMAT = "vaeflow-codec/1"


def codec_class(kind: str) -> type[Codec]:
    """The codec class config.CODECS names for `kind` (imported on first use)."""
    module, _, name = CODECS[kind][0].partition(":")
    return getattr(importlib.import_module(module), name)


def codec_to_json(codec: Codec) -> str:
    return json.dumps({"format": FORMAT, "kind": codec.kind, "codec": codec.to_dict()}, indent=1)


def codec_from_json(text: str, source: str = "codec.json") -> Codec:
    d = json.loads(text)
    if d.get("format") != FORMAT or d.get("kind") not in CODECS:
        raise CheckpointError(
            f"{source}: not a vaeflow codec (format {d.get('format')!r}, kind {d.get('kind')!r})"
        )
    return codec_class(d["kind"]).from_dict(d["codec"])


def fit_codec(
    spec: DatasetSpec, schema: pa.Schema, batches: Batches, source: str, cfg: DataConfig, seed: int = 0
) -> Codec:
    """Fit the codec the spec names (`spec.kind`) on one streaming pass over the training split.

    `batches(columns)` gives (file, batch) pairs of those columns, e.g. dataset.iter_batches over the
    split's shards: an invalid value is reported with its file, column and row as encode reports it;
    `source` (the split) names errors about the split as a whole.
    """
    cls = codec_class(spec.kind)
    has_vector = spec.vector_column is not None
    if cls.reads == "vector_column" and not has_vector:
        raise DataError(f"{source}: data.codec {spec.kind!r} needs data.vector_column")
    if cls.reads == "table_columns" and has_vector:
        raise DataError(f"{source}: data.codec {spec.kind!r} reads table columns; unset data.vector_column")
    return cls.fit(spec, schema, batches, source, cfg, seed)


def fit_on_train(
    spec: DatasetSpec, schema: pa.Schema, shards: list[str], cfg: DataConfig, seed: int = 0
) -> Codec:
    """fit_codec on one streaming pass over the train split's `shards` (dataset.open_dataset(cfg,
    "train")), as training fits it; errors about the split as a whole name cfg.uri/train."""

    def batches(columns: list[str]) -> Iterator[tuple[str, pa.RecordBatch]]:
        return iter_batches(shards, columns, storage_options=cfg.storage_options)

    return fit_codec(spec, schema, batches, join(cfg.uri, "train"), cfg, seed)


def legacy_codec(
    cfg: DataConfig,
    dim: int,
    image_shape: tuple[int, int, int] | None,
    schema: pa.Schema | None,
    tabular_json: str | None,
    unit_interval: bool,
) -> Codec:
    """The codec of a model saved before codecs were saved with it (no codec.json).

    Such a model was trained on the fitted tabular transformer it was saved with (`tabular_json`,
    its tabular.json), else on data.vector_column / data.scale: a vector codec of the saved `dim` and
    `image_shape`, with the vector's value type from the training `schema` (float32 when the checkpoint
    has none). `unit_interval` sets its default likelihood; pass whether the model's is Bernoulli.
    """
    if tabular_json is not None:
        return codec_class("tabular").from_dict(json.loads(tabular_json))
    if cfg.vector_column is None:
        raise CheckpointError("without codec.json or tabular.json, the config must name data.vector_column")
    known = schema is not None and cfg.vector_column in schema.names
    value_type = str(schema.field(cfg.vector_column).type.value_type) if known else "float32"
    return codec_class("vector").from_dict(
        {
            "column": cfg.vector_column,
            "dim": dim,
            "value_type": value_type,
            "scale": cfg.scale,
            "image_shape": image_shape,
            "unit_interval": unit_interval,
        }
    )


def encode_by_file(
    codec: Codec, batch: pa.Table, files: pa.Array | pa.ChunkedArray, base_uri: str, id_column: str | None
) -> np.ndarray:
    """x (B, D) of a batch whose rows come from several files (`files`: each row's path, as Ray's
    read_parquet(include_paths=True) gives it), in the batch's order.

    The training workers and the embed job both encode through here, so a bad row fails both with the
    same message: the codec's, with its file as the source. A Ray batch may start inside a file, so a
    row number counts from that file's first row in the batch, and the source names that row's id.
    The whole batch is encoded at once; only a failing batch is encoded again file by file.
    """
    try:
        return codec.encode(batch, base_uri)
    except DataError:
        for path in pc.unique(files).to_pylist():
            rows = batch.filter(pc.equal(files, path))
            source = uri_of(base_uri, path)
            if id_column is not None and id_column in rows.column_names:
                source += f" (batch from id {rows.column(id_column)[0]})"
            codec.encode(rows, source)
        raise
