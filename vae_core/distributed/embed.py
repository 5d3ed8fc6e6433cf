"""The embed job: a corpus through the codec and the encoder to posterior means, one Delta commit.

A rerun after a crash processes only the shards the crashed attempt had not finished (jobs.resumable).
Incremental runs (`embed.incremental`, the nightly's way) embed only the shards the table does not
hold yet from the same model, by content fingerprint, and append them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import torch

from vae_core.config import ComputeConfig, EmbedConfig
from vae_core.data.codecs.base import Codec, Drift, add_drift, describe_drift, list_column
from vae_core.data.dataset import list_shards, read_schema
from vae_core.data.objects import content_fingerprints, fingerprint
from vae_core.data.storage import absolute
from vae_core.data.tables import CommitRecord, Committed, Mode, NewIds, held_ids, history, is_delta_table
from vae_core.errors import ConfigError, DataError
from vae_core.operations.drift import LatentStats, pool
from vae_core.progress import Progress
from vae_core.training.checkpoints import load_checkpoint
from vae_core.training.inference import embed

from .ids import ShardIds, check_ids, check_ids_on_cluster, ids_apart
from .jobs import (
    Actors,
    InProcess,
    Run,
    Summary,
    check_input_schema,
    check_output_place,
    keep_out_of,
    mapped,
    model_record,
    resumable,
    runs_here,
    start_cluster,
)
from .shard_io import read_ahead, regroup, shard_batches

LATENT_COLUMNS = ("z_mean", "z_logvar")  # the output's posterior mean and (with_logvar) log-variance
HISTORY_PAGE = 8  # newest commits read to find the latest vaeflow commit (maintenance ones skipped)


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
    """Loads the checkpoint once per actor; embeds whole shards: reads each in batches, embeds them,
    and writes the latents as Parquet files of `job.rows_per_file` rows (default: shard_io.FILE_BYTES a file).

    Reading in the actor, not in Ray Data read tasks: each row then crosses no object store (a read
    task's block is copied into it, and again into the actor's batch), and the next batch is read
    while this one is embedded (bench/results/embed_throughput.json).
    """

    def __init__(
        self, actors: Actors, job: EmbedConfig, columns: list[str], keep: list[str], ids_of: str | None
    ) -> None:
        ckpt, self.writer = actors.load()
        self.model, self.codec = ckpt.model, ckpt.codec
        self.job, self.columns, self.keep = job, columns, keep
        self.storage_options = actors.storage_options
        self.ids_of = ids_of  # the input's URI when no id may repeat within a shard (ids.ids_apart)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        summaries = []
        for shard in map(str, batch["shard"]):
            drift: Drift = {}
            ids = (
                None
                if self.ids_of is None
                else ShardIds(shard, self.keep[0], self.ids_of, self.storage_options)
            )
            latents = (
                self._latents(b, shard, drift, ids)
                for b in read_ahead(shard_batches(shard, self.columns, self.storage_options))
            )
            written = [self._write(t) for t in regroup(latents, self.job.rows_per_file)]
            if ids is not None:  # before the shard counts as done: a rerun checks it again
                ids.check()
            if written:  # the shard's drift rides on its last file (a retried shard reports the same)
                written[-1]["drift"] = json.dumps(drift)
            self.writer.mark_done(shard, written)  # a rerun after a crash reuses these files
            summaries += written
        return pa.Table.from_pylist(summaries)

    def _latents(self, batch: pa.Table, shard: str, drift: Drift, ids: ShardIds | None) -> pa.Table:
        """The output columns of one input batch: the kept columns, z_mean (and z_logvar); what the
        codec saw drift in is added to `drift`, its ids to `ids`."""
        if ids is not None:
            ids.add(batch.column(self.keep[0]))
        # A bad row's error names its file and the id its batch starts at (a row counts from there).
        x = torch.from_numpy(
            self.codec.encode(batch, f"{shard} (batch from id {batch.column(self.keep[0])[0]})")
        )
        add_drift(drift, self.codec.drift(batch))
        if self.job.with_logvar:
            mu, logvar = embed(self.model, x, with_logvar=True, chunk_rows=self.job.chunk_rows)
        else:
            mu, logvar = embed(self.model, x, chunk_rows=self.job.chunk_rows), None
        columns = {name: batch.column(name) for name in self.keep}
        columns[LATENT_COLUMNS[0]] = list_column(mu.float().cpu().numpy(), pa.float32())  # (B, L)
        if logvar is not None:
            columns[LATENT_COLUMNS[1]] = list_column(logvar.float().cpu().numpy(), pa.float32())
        # Arrow's allocator keeps freed pages for reuse: handing them back after each batch keeps an
        # actor's memory at what one batch needs (bench/results/embed_memory.json).
        pa.default_memory_pool().release_unused()
        return pa.table(columns)

    def _write(self, table: pa.Table) -> Summary:
        # Named by the ids it holds: a retried shard rewrites the same files.
        summary = self.writer.write(table, _ids_digest(table.column(self.keep[0])))
        z = table.column("z_mean").combine_chunks()
        mu64 = z.flatten().to_numpy().reshape(len(z), -1).astype(np.float64)  # (B, L)
        summary.update(sum=mu64.sum(0).tolist(), sumsq=(mu64**2).sum(0).tolist(), drift="{}")
        return summary


def _stats(summaries: list[Summary], rows: int, before: dict[str, Any] | None = None) -> dict[str, Any]:
    """The commit's stats: in "z_mean" the count, per-dimension mean and variance of the posterior means
    of the table's rows (the aggregate posterior's moments: this commit's rows pooled with `before`,
    the moments of the rows an appending commit adds to); in "drift" what the codec counted per column
    in this commit's input (Drift)."""
    mean = np.sum([s["sum"] for s in summaries], axis=0) / rows
    var = np.sum([s["sumsq"] for s in summaries], axis=0) / rows - mean**2
    moments = LatentStats(rows, mean, var)
    if before is not None:
        moments = pool([LatentStats.from_dict(before), moments])
    drift: Drift = {}
    for s in summaries:
        add_drift(drift, json.loads(s["drift"]))
    return {"z_mean": moments.to_dict(), "drift": drift}


@dataclass
class Embedded:
    """What an embeddings table holds when all its rows come from one model with one set of settings:
    the content fingerprints of the input shards embedded, the rows, and the newest commit (whose
    stats hold the moments of all the rows)."""

    fingerprints: set[str]
    rows: int
    version: int
    latest: CommitRecord


def embedded_so_far(
    uri: str, model_fingerprint: str, params: dict[str, Any], storage_options: dict | None
) -> Embedded | None:
    """The table's rows as vaeflow commits made them: from the newest commit alone when it names the
    shards the table holds (`held_fingerprints`, written by incremental runs since the log could grow
    by a commit a night for years), else walking back from it to the commit that began them (any but
    an append, or the table's first); None when there is no table, or a commit on the way came from
    another model, other settings or another tool, or names no shard fingerprints: then every row is
    to be embedded anew. Maintenance commits (compaction, VACUUM) are not on the way (tables.history)."""
    if not is_delta_table(uri, storage_options):
        return None
    # Since held_fingerprints, the newest commit says it all: one read however long the log.
    for version, record in history(uri, storage_options, limit=HISTORY_PAGE)[:1]:
        if (
            record is not None
            and record.kind == "embeddings"
            and record.model.get("fingerprint") == model_fingerprint
            and record.params == params
            and "held_fingerprints" in record.input
        ):
            rows = record.stats["z_mean"]["count"]
            return Embedded(set(record.input["held_fingerprints"]), rows, version, record)
    fingerprints: set[str] = set()
    rows, newest = 0, None
    for version, record in history(uri, storage_options):
        if (
            record is None
            or record.kind != "embeddings"
            or record.model.get("fingerprint") != model_fingerprint
            or record.params != params
            or "shard_fingerprints" not in record.input
        ):
            return None
        newest = newest or (version, record)
        fingerprints |= set(record.input["shard_fingerprints"])
        rows += record.rows
        if record.mode != "append" or version == 0:  # the commit that began the rows (an append may)
            return Embedded(fingerprints, rows, *newest)
    return None


def check_one_split(input_uri: str, shards: list[str]) -> None:
    """A dataset root (shards in train/ and other split folders below `input_uri`) is refused: embedding
    it would mix the splits in one table; the message names the splits to give instead."""
    base = input_uri.rstrip("/") + "/"
    folders = sorted(
        {s[len(base) :].split("/", 1)[0] for s in shards if s.startswith(base) and "/" in s[len(base) :]}
    )
    if "train" in folders and len(folders) > 1:
        raise DataError(
            f"{input_uri}: a dataset root holding the splits {', '.join(f + '/' for f in folders)}; embed "
            f"one split at a time, e.g. --input {base}{'test' if 'test' in folders else folders[0]}"
        )


def check_drift(codec: Codec, shards: list[str], columns: list[str], storage_options: dict | None) -> None:
    """--strict: one pass over the model's columns before anything is written; the first shard with drift
    (values the training data never had) fails with a DataError naming it and each column."""
    for shard in shards:
        drift: Drift = {}
        for batch in shard_batches(shard, columns, storage_options):
            add_drift(drift, codec.drift(batch))
        if drift:
            raise DataError(f"{shard}: input drift refused by --strict: {describe_drift(drift)}")


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
    `job.rows_per_file` rows (default: about shard_io.FILE_BYTES), `job.chunk_rows` rows per forward pass. The
    commit's record holds in `stats["z_mean"]` the count, per-dimension mean and variance of the
    posterior means, and in `stats["drift"]` the input's drift per column (values the training data
    never had: unknown categories, nulls in a column that had none, values outside the training range;
    tabular models). `job.strict` refuses drift instead, after one pass over the model's columns before
    anything is written. Ids must be unique and non-null: checked before anything is committed, up
    front from the id column, or, where the shards' footers keep their ids apart, from those and by the
    actors within each shard as they read it (distributed/ids.py). Rerunning with the same run key
    (default: a hash of the model, the input files and the settings that change the rows) does nothing;
    after a crash it embeds only the shards the crashed attempt had not finished
    (stats["rows_resumed"] counts the rows it took over, stats["rows_embedded"] those it processed).
    With `job.incremental` only the shards that the table does not hold yet from this model (by content
    fingerprint) are embedded and appended (stats["rows_carried"]: the rows already there; the z_mean
    moments cover the whole table); when its rows come from another model, or an embedded shard changed
    or went, everything is embedded with `mode`. `storage_options` (fsspec style) reach every read and
    write, on the driver and the actors.
    """
    model_uri, input_uri, output_uri = absolute(model_uri), absolute(input_uri), absolute(output_uri)
    ckpt = load_checkpoint(model_uri, storage_options=storage_options)
    if job.with_logvar and not ckpt.model.is_variational:
        raise ConfigError(
            f"{model_uri}: a {ckpt.config.model.family} model has a point posterior, no log-variance; "
            "drop with_logvar"
        )
    id_column = ckpt.config.data.id_column
    if id_column is None:
        raise DataError(f"{input_uri}: the model's config names no id column (data.id_column)")
    shards = list_shards(input_uri, storage_options)
    check_one_split(input_uri, shards)
    keep = [id_column, *(c for c in job.passthrough if c != id_column)]
    if taken := [c for c in keep if c in LATENT_COLUMNS]:
        raise ConfigError(
            f"{input_uri}: passthrough column {taken[0]!r} has the name of an output column "
            f"({', '.join(LATENT_COLUMNS)}); rename it in the input or leave it out of embed.passthrough"
        )
    check_output_place(output_uri, input=input_uri, **keep_out_of(model_uri, ckpt))
    params = {"with_logvar": job.with_logvar, "passthrough": keep[1:], "format": "embed/1"}
    model = model_record(model_uri, ckpt, storage_options)
    inputs: dict[str, Any] = {"uri": input_uri}
    key: dict[str, Any] = {"kind": "embeddings", "model": model["fingerprint"], **params}
    before: Embedded | None = None
    prints = content_fingerprints(shards, storage_options) if job.incremental else None
    if prints is not None:
        inputs["shard_fingerprints"] = sorted(prints.values())
        before = embedded_so_far(output_uri, model["fingerprint"], params, storage_options)
        if before is not None and not before.fingerprints <= set(prints.values()):
            progress(f"{input_uri}: shards embedded in {output_uri} have changed or gone; embedding all")
            before = None
        if before is not None:
            new = [s for s in shards if prints[s] not in before.fingerprints]
            if not new:
                progress(
                    f"{output_uri}: every shard of {input_uri} is embedded by this model already (version "
                    f"{before.version}, {before.rows:,} rows); nothing to do"
                )
                return Committed(output_uri, before.version, before.latest, files=[], skipped=True)
            progress(
                f"{input_uri}: {len(new)} of {len(shards)} shards are new since version {before.version}; "
                f"embedding them and appending to its {before.rows:,} rows"
            )
            shards, mode = new, "append"
            inputs["shard_fingerprints"] = sorted(prints[s] for s in new)
            inputs["held_fingerprints"] = sorted(before.fingerprints | set(inputs["shard_fingerprints"]))
            key.update(shards=inputs["shard_fingerprints"], appends_to=before.version)
    if before is None:
        if prints is not None:  # the table will hold exactly these shards
            inputs["held_fingerprints"] = inputs["shard_fingerprints"]
        inputs["fingerprint"] = fingerprint(shards, storage_options, prints=prints)
        key["input"] = inputs["fingerprint"]
    # The shards to embed now (an incremental run's new ones: the others were checked when embedded).
    schema = read_schema(shards, storage_options)
    for name, what in [(c, "passthrough column") for c in keep[1:]] + [
        (c, "column the model reads") for c in [id_column, *ckpt.codec.columns]
    ]:
        if name not in schema.names:
            raise DataError(f"{input_uri}: {what} {name!r} not in the input (have {schema.names})")
    check_input_schema(ckpt.meta.schema(), schema, [id_column, *ckpt.codec.columns], input_uri)
    run_key = run_key or fingerprint([], extra=key)
    run = Run("embed", "embeddings", output_uri, run_key, mode, night, storage_options, progress)
    latent = pa.list_(pa.float32(), ckpt.model.latent_dim)
    out_schema = pa.schema(
        [schema.field(c) for c in keep]
        + [pa.field("z_mean", latent)]
        + ([pa.field("z_logvar", latent)] if job.with_logvar else [])
    )
    if (earlier := run.earlier(out_schema)) is not None:
        return earlier
    # An appended row may not repeat an id the table holds: checked now, and again at the commit
    # against whatever another writer commits meanwhile (tables.NewIds).
    held = held_ids(output_uri, id_column, storage_options) if mode == "append" else None
    table_ids = (output_uri, held[1]) if held is not None else None
    new_ids, ids_of = None, None
    if mode != "append" and not runs_here(1, job.local_rows, compute):
        # Surely on Ray (not even one row would run here): no id comes to the driver (a billion rows'
        # would not fit). Shards whose footers keep their ids apart leave only a repeat within a shard,
        # which the actors find as they read it; others are checked on the cluster first.
        start_cluster(compute)
        total = ids_apart(shards, id_column, input_uri, storage_options)
        if total is None:
            total = check_ids_on_cluster(shards, id_column, input_uri, storage_options)
        else:
            ids_of = input_uri
    else:
        total, ids = check_ids(shards, id_column, input_uri, storage_options, table_ids)
        new_ids = NewIds(id_column, ids, held[0] if held else None) if mode == "append" else None
    if total == 0:
        raise DataError(f"{input_uri}: no rows to embed ({len(shards)} file(s), 0 rows)")
    columns = sorted({*keep, *ckpt.codec.columns})
    if job.strict:
        check_drift(ckpt.codec, shards, ckpt.codec.columns, storage_options)
    done = resumable(output_uri, run_key, shards, storage_options)
    resumed = sorted((f for files in done.values() for f in files), key=lambda f: f["file"])
    todo = [s for s in shards if s not in done]
    resumed_rows = sum(f["rows"] for f in resumed)
    if done:
        progress(
            f"resuming run {run_key}: {len(done)} of {len(shards)} shards ({resumed_rows:,} rows) were "
            f"written by an earlier attempt; embedding the other {len(todo)}"
        )
    ds: ray.data.Dataset | InProcess | None = None
    if todo:
        rows = total - resumed_rows
        here = runs_here(rows, job.local_rows, compute)
        actors = Actors(model_uri, output_uri, out_schema, run_key, compute, storage_options, in_process=here)
        # One item per shard; the actors read their shards themselves (_Embedder).
        items, args = [{"shard": s} for s in todo], (actors, job, columns, keep, ids_of)
        ds, where_to = mapped(_Embedder, args, items, actors, f"embed.local_rows={job.local_rows:,}")
        progress(f"embedding {rows:,} rows of {input_uri} with {model_uri} {where_to}")
    inputs.update(shards=len(shards), rows=total)
    carried = before.rows if before is not None else 0
    counts = {"rows_embedded": total - resumed_rows, "rows_resumed": resumed_rows, "rows_carried": carried}

    def stats(summaries: list[Summary]) -> dict[str, Any]:
        return {**_stats(summaries, total, before and before.latest.stats["z_mean"]), **counts}

    committed = run.execute(ds, total, out_schema, model, params, inputs, stats, resumed, new_ids)
    if drift := committed.record.stats.get("drift"):
        progress(f"input drift (in the commit's stats.drift; --strict refuses it): {describe_drift(drift)}")
    return committed
