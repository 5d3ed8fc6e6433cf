"""The embed job: a corpus through the codec and the encoder to posterior means, one Delta commit."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import torch

from vae_core.config import ComputeConfig, EmbedConfig
from vae_core.data.codecs import encode_by_file
from vae_core.data.codecs.base import list_column
from vae_core.data.dataset import DataError, count_rows, list_shards, read_schema
from vae_core.data.objects import fingerprint
from vae_core.data.storage import arrow_filesystem
from vae_core.data.tables import Committed, Mode
from vae_core.progress import Progress
from vae_core.training.checkpoints import load_checkpoint
from vae_core.training.inference import embed

from .jobs import Actors, Run, Summary, model_record, start_cluster

PATH_COLUMN = "path"  # read_parquet(include_paths=True) adds it: errors name the input file
READ_CPUS = 0.25  # per read task: reads wait on object storage as much as they decode


def _ids_digest(ids: pa.Array | pa.ChunkedArray) -> str:
    """A digest of an id column of any type (ints, strings): names the file holding those rows."""
    h = hashlib.sha1()
    arr = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    if pa.types.is_integer(arr.type) and not arr.null_count:
        h.update(np.ascontiguousarray(arr.to_numpy()).tobytes())
    else:
        h.update("\0".join(map(str, arr.to_pylist())).encode())
    return h.hexdigest()[:20]


class _Embedder:
    """Loads the checkpoint once per actor; maps a batch of rows to one Parquet file of latents."""

    def __init__(
        self, actors: Actors, job: EmbedConfig, input_uri: str, keep: list[str], with_paths: bool
    ) -> None:
        ckpt, self.writer = actors.load()
        self.model, self.codec = ckpt.model, ckpt.codec
        self.job, self.input_uri, self.keep, self.with_paths = job, input_uri, keep, with_paths

    def _encode(self, batch: pa.Table) -> np.ndarray:
        """batch -> x: (B, D) float32; a bad row's error names its input file and id (encode_by_file)."""
        if not self.with_paths:
            return self.codec.encode(batch, self.input_uri)
        return encode_by_file(self.codec, batch, batch.column(PATH_COLUMN), self.input_uri, self.keep[0])

    def __call__(self, batch: pa.Table) -> pa.Table:
        x = torch.from_numpy(self._encode(batch))
        if self.job.with_logvar:
            mu, logvar = embed(self.model, x, with_logvar=True, chunk_rows=self.job.chunk_rows)
        else:
            mu, logvar = embed(self.model, x, chunk_rows=self.job.chunk_rows), None
        mu_np = mu.float().cpu().numpy()  # (B, L)
        columns = {name: batch.column(name) for name in self.keep}
        columns["z_mean"] = list_column(mu_np, pa.float32())
        if logvar is not None:
            columns["z_logvar"] = list_column(logvar.float().cpu().numpy(), pa.float32())
        # Named by the ids it holds: a retried batch rewrites the same file.
        summary = self.writer.write(pa.table(columns), _ids_digest(batch.column(self.keep[0])))
        mu64 = mu_np.astype(np.float64)
        summary.update(sum=mu64.sum(0).tolist(), sumsq=(mu64**2).sum(0).tolist())
        return pa.Table.from_pylist([summary])


def _z_stats(summaries: list[Summary], rows: int) -> dict[str, Any]:
    """The commit's stats: in "z_mean" the count, per-dimension mean and variance of the posterior means
    (the aggregate posterior's moments)."""
    mean = np.sum([s["sum"] for s in summaries], axis=0) / rows
    var = np.sum([s["sumsq"] for s in summaries], axis=0) / rows - mean**2
    return {"z_mean": {"count": rows, "mean": mean.tolist(), "var": var.tolist()}}


def _read(
    shards: list[str],
    columns: list[str],
    with_paths: bool,
    compute: ComputeConfig,
    storage_options: dict | None,
) -> ray.data.Dataset:
    """The input rows, one read task per shard, at most compute.data_cpus of CPU reading at a time.

    Seen with Ray 2.60's default V2 Parquet reader: one ListFiles block, hence a single read task for
    all shards, which starved 2 actors (read 39k rows/s, actors idle). The V1 datasource honours
    override_num_blocks.
    """
    fs, _ = arrow_filesystem(shards[0], storage_options)
    ctx = ray.data.DataContext.get_current()
    v2, ctx.use_datasource_v2 = ctx.use_datasource_v2, False
    try:
        ds = ray.data.read_parquet(
            [arrow_filesystem(s, storage_options)[1] for s in shards],
            filesystem=fs,
            include_paths=with_paths,
            override_num_blocks=len(shards),
            num_cpus=min(READ_CPUS, compute.data_cpus),
            concurrency=min(len(shards), max(1, int(compute.data_cpus / READ_CPUS))),
        ).select_columns(columns)
    finally:
        ctx.use_datasource_v2 = v2  # the dataset keeps its own copy of the context
    return ds


def embed_corpus(
    model_uri: str,
    input_uri: str,
    output_uri: str,
    job: EmbedConfig = EmbedConfig(),  # noqa: B008 (settings only read, never assigned to)
    compute: ComputeConfig = ComputeConfig(),  # noqa: B008
    *,
    run_key: str | None = None,
    mode: Mode = "error",
    night: str | None = None,
    storage_options: dict | None = None,
    progress: Progress = print,
) -> Committed:
    """Map every row of the corpus at `input_uri` (Parquet shards or a Delta table) to its posterior
    mean (and logvar), committed as one version of the Delta table at `output_uri`.

    Rows become x through the checkpoint's codec (a bad row fails the job with a DataError naming its
    file, column and row; nothing is committed). Output rows: the id column, `job.passthrough`
    columns, `z_mean` (L float32 values) and with `job.with_logvar` `z_logvar`; one file per
    `job.rows_per_file` rows, `job.chunk_rows` rows per forward pass. The commit's record holds in
    `stats["z_mean"]` the count, per-dimension mean and variance of the posterior means. Rerunning with
    the same run key (default: a hash of the model, the input files and the settings that change the
    rows) does nothing. `storage_options` (fsspec style) reach every read and write, on the driver and
    the actors.
    """
    ckpt = load_checkpoint(model_uri, storage_options=storage_options)
    if job.with_logvar and not ckpt.model.is_variational:
        raise ValueError(
            f"{model_uri}: a {ckpt.config.model.family} model has a point posterior, no log-variance; "
            "drop with_logvar"
        )
    id_column = ckpt.config.data.id_column
    if id_column is None:
        raise DataError(f"{input_uri}: the model's config names no id column (data.id_column)")
    shards = list_shards(input_uri, storage_options)
    schema = read_schema(shards, storage_options)
    keep = [id_column, *(c for c in job.passthrough if c != id_column)]
    for name, what in [(c, "passthrough column") for c in keep[1:]] + [
        (c, "column the model reads") for c in [id_column, *ckpt.codec.columns]
    ]:
        if name not in schema.names:
            raise DataError(f"{input_uri}: {what} {name!r} not in the input (have {schema.names})")
    params = {"with_logvar": job.with_logvar, "passthrough": keep[1:], "format": "embed/1"}
    model = model_record(model_uri, ckpt, storage_options)
    input_fp = fingerprint(shards, storage_options)
    key = {"kind": "embeddings", "model": model["fingerprint"], "input": input_fp, **params}
    run_key = run_key or fingerprint([], extra=key)
    run = Run("embed", "embeddings", output_uri, run_key, mode, night, storage_options, progress)
    if (earlier := run.earlier()) is not None:
        return earlier

    latent = pa.list_(pa.float32(), ckpt.model.latent_dim)
    out_schema = pa.schema(
        [schema.field(c) for c in keep]
        + [pa.field("z_mean", latent)]
        + ([pa.field("z_logvar", latent)] if job.with_logvar else [])
    )
    start_cluster(compute)
    with_paths = PATH_COLUMN not in schema.names  # a user column of that name wins
    columns = sorted({*keep, *ckpt.codec.columns, *([PATH_COLUMN] if with_paths else [])})
    actors = Actors(model_uri, output_uri, out_schema, run_key, compute, storage_options)
    ds = _read(shards, columns, with_paths, compute, storage_options).map_batches(
        _Embedder,
        fn_constructor_args=(actors, job, input_uri, keep, with_paths),
        batch_size=job.rows_per_file,
        batch_format="pyarrow",
        **actors.pool(),
    )
    total = count_rows(shards, storage_options)
    progress(f"embedding {total:,} rows of {input_uri} with {model_uri} on {compute.num_workers} worker(s)")
    inputs = {"uri": input_uri, "shards": len(shards), "rows": total, "fingerprint": input_fp}
    return run.execute(
        ds, total, out_schema, model, params, inputs, lambda summaries: _z_stats(summaries, total)
    )
