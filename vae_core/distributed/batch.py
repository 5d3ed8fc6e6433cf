"""Ray Data batch jobs: embed whole corpora, generate synthetic rows; each one Delta Lake commit.

Both jobs follow Ray's batch-inference pattern: a class loads the checkpoint once per actor and maps
batches. Each batch becomes one Parquet file that the actor writes itself, with one PUT, straight
into the output table's folder, under a name fixed by the run key and the batch's content (embed: a
hash of the batch's ids; generate: the block index), and returns a one-row summary (file, rows,
bytes, latent sums). The driver streams the summaries, prints progress, checks that every input row
was written exactly once and that every file is there, and commits them as one Delta table version
(vae_core.data.tables). Until then the files are invisible to every Delta reader; a file left by a task
that Ray retried is rewritten under the same name, and only files a summary reported are committed.

Why not `Dataset.write_delta`: its commit cannot carry the run key (Delta txn) and the job's
statistics, and the summaries give the aggregate-posterior moments of the corpus without a second
pass.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import torch
from ray.data import ActorPoolStrategy

from vae_core.config import ComputeConfig
from vae_core.data.dataset import (
    DataError,
    DatasetSpec,
    count_rows,
    decode_schema,
    list_shards,
    read_schema,
    resolve_spec,
)
from vae_core.data.objects import fingerprint
from vae_core.data.storage import arrow_filesystem, filesystem, join, uri_of
from vae_core.data.tables import (
    CommitRecord,
    Committed,
    DataFile,
    Mode,
    TableError,
    check_writable,
    commit,
    find_commit,
    now_iso,
    to_delta,
)
from vae_core.training.checkpoints import CONFIG_FILE, META_FILE, MODEL_FILE, Checkpoint, load_checkpoint

from .cluster import check_resources, ensure_ray
from .errors import reraise_data_error

PATH_COLUMN = "path"  # read_parquet(include_paths=True) adds it: errors name the input file


class _Progress:
    """One line every `every` seconds: rows done, share, rate."""

    def __init__(self, what: str, total: int, report: Callable[[str], None], every: float = 5.0) -> None:
        self.what, self.total, self.report, self.every = what, total, report, every
        self.done, self.t0 = 0, time.perf_counter()
        self.last = self.t0

    def add(self, rows: int) -> None:
        self.done += rows
        now = time.perf_counter()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            self.report(
                f"{self.what}: {self.done:,}/{self.total:,} rows ({100 * self.done / self.total:.0f}%), "
                f"{rate:,.0f} rows/s"
            )


def _model_fingerprint(model_uri: str, storage_options: dict | None) -> str:
    return fingerprint([join(model_uri, f) for f in (MODEL_FILE, CONFIG_FILE, META_FILE)], storage_options)


class _Writer:
    """Writes Parquet files into one table folder; the filesystem is resolved once per actor."""

    def __init__(self, folder_uri: str, storage_options: dict | None) -> None:
        self.fs, self.folder = filesystem(folder_uri, storage_options)
        self.fs.makedirs(self.folder, exist_ok=True)  # a local table folder; a no-op on object stores

    def write(self, table: pa.Table, name: str) -> int:
        """Write (or rewrite: a retried batch has the same name) one file; returns its size.

        The file is serialized in memory and stored with one PUT (s3fs uses a single request below
        100 MB): a killed writer leaves no incomplete multipart upload behind.
        """
        sink = pa.BufferOutputStream()
        pq.write_table(to_delta(table), sink)
        data = sink.getvalue().to_pybytes()
        path = f"{self.folder.rstrip('/')}/{name}"
        self.fs.pipe_file(path, data)
        return len(data)


def _fixed_list(values: np.ndarray, value_type: pa.DataType | None = None) -> pa.FixedSizeListArray:
    """(N, L) -> fixed_size_list<value_type>[L] (float32 by default)."""
    value_type = value_type or pa.float32()
    flat = pa.array(np.ascontiguousarray(values).reshape(-1), type=value_type)
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])


# Blocks a job may hold in the object store at once (read-ahead plus outputs). Without a cap Ray
# Data reads ahead up to a share of the whole object store, so memory grew with the corpus up to
# that share (seen: 4.7 GB at 200k rows, 7.3 GB at 1M); with it, memory is flat in corpus size.
OBJECT_STORE_BUDGET = 1 << 30
READ_CPUS = 0.25


def _start(compute: ComputeConfig) -> None:
    ensure_ray(compute)
    check_resources(compute)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(
        object_store_memory=OBJECT_STORE_BUDGET
    )
    ctx.target_max_block_size = min(ctx.target_max_block_size or 8 << 20, 8 << 20)
    ctx.enable_progress_bars = False  # the driver prints one progress line every few seconds
    ctx.print_on_execution_start = False


def _existing(
    output_uri: str, run_key: str, mode: Mode, storage_options: dict | None, report: Callable[[str], None]
) -> Committed | None:
    """The earlier commit of this run key (a rerun then does nothing); refuse early what cannot commit."""
    found = find_commit(output_uri, run_key, mode, storage_options)
    if found is not None:
        version, record = found
        report(f"{output_uri}: run {run_key} already committed version {version} ({record.rows:,} rows)")
        return Committed(output_uri, version, record, files=[], skipped=True)
    check_writable(output_uri, mode, storage_options)
    return None


def _commit(
    output_uri: str,
    summaries: list[dict[str, Any]],
    schema: pa.Schema,
    record: CommitRecord,
    mode: Mode,
    storage_options: dict | None,
    report: Callable[[str], None],
) -> Committed:
    files = [DataFile(s["file"], s["rows"], s["bytes"]) for s in sorted(summaries, key=lambda s: s["file"])]
    version = commit(output_uri, files, schema, record, mode, storage_options)
    report(f"committed {record.rows:,} rows in {len(files)} files as version {version} of {output_uri}")
    return Committed(output_uri, version, record, [join(output_uri, f.path) for f in files], skipped=False)


def _file_name(run_key: str, content: str, rows: int) -> str:
    """Run key first (two jobs never share a name), then what the file holds (a retry reuses it)."""
    return f"part-{run_key[:16]}-{content}-{rows}.parquet"


def _ids_digest(ids: pa.Array | pa.ChunkedArray) -> str:
    """A digest of an id column of any type (ints, strings): names the file holding those rows."""
    h = hashlib.sha1()
    arr = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    if pa.types.is_integer(arr.type) and not arr.null_count:
        h.update(np.ascontiguousarray(arr.to_numpy()).tobytes())
    else:
        h.update("\0".join(map(str, arr.to_pylist())).encode())
    return h.hexdigest()[:20]


def _load_for_actor(model_uri: str, threads: int, device: str, storage_options: dict | None) -> Checkpoint:
    """Once per actor: the checkpoint with its model on `device` in eval mode (no corruption)."""
    torch.set_num_threads(threads)
    ckpt = load_checkpoint(model_uri, storage_options=storage_options)
    ckpt.model = ckpt.model.to(device).eval()
    return ckpt


# ---- embed ------------------------------------------------------------------------------------


class _Embedder:
    """Loads the checkpoint once per actor; maps a batch of rows to one Parquet file of latents."""

    def __init__(
        self,
        model_uri: str,
        input_uri: str,
        out_dir: str,
        run_key: str,
        spec: DatasetSpec,
        keep: list[str],
        with_logvar: bool,
        chunk: int,
        threads: int,
        device: str,
        storage_options: dict | None,
    ) -> None:
        ckpt = _load_for_actor(model_uri, threads, device, storage_options)
        self.model, self.codec = ckpt.model, ckpt.codec
        self.writer, self.spec, self.keep, self.input_uri = (
            _Writer(out_dir, storage_options),
            spec,
            keep,
            input_uri,
        )
        self.run_key, self.with_logvar, self.chunk, self.device = run_key, with_logvar, chunk, device

    def _features(self, batch: pa.Table, source: str) -> np.ndarray:
        return self.codec.encode(batch, source)

    @torch.no_grad()
    def __call__(self, batch: pa.Table) -> pa.Table:
        if PATH_COLUMN in batch.column_names and PATH_COLUMN not in self.keep:
            paths = sorted(pc.unique(batch.column(PATH_COLUMN)).to_pylist())
            source = ", ".join(uri_of(self.input_uri, p) for p in paths)
        else:
            source = self.input_uri
        x = self._features(batch, source)  # (B, D) float32
        mus, logvars = [], []
        for i in range(0, len(x), self.chunk):
            q = self.model.encode(torch.from_numpy(x[i : i + self.chunk]).to(self.device))
            mus.append(q.mean.float().cpu())
            if self.with_logvar:
                logvars.append(q.logvar.float().cpu())
        mu = torch.cat(mus).numpy()  # (B, L)
        columns = {name: batch.column(name) for name in self.keep}
        columns["z_mean"] = _fixed_list(mu)
        if self.with_logvar:
            columns["z_logvar"] = _fixed_list(torch.cat(logvars).numpy())
        table = pa.table(columns)
        # Named by the ids it holds: a retried batch rewrites the same file instead of adding one.
        name = _file_name(self.run_key, _ids_digest(batch.column(self.keep[0])), len(table))
        size = self.writer.write(table, name)
        mu64 = mu.astype(np.float64)
        return pa.table(
            {
                "file": [name],
                "rows": [len(table)],
                "bytes": [size],
                "sum": [mu64.sum(0).tolist()],
                "sumsq": [(mu64**2).sum(0).tolist()],
            }
        )


def embed_corpus(
    model_uri: str,
    input_uri: str,
    output_uri: str,
    *,
    with_logvar: bool = False,
    passthrough: Sequence[str] = (),
    batch_size: int = 4096,
    rows_per_file: int = 32_768,
    num_workers: int = 1,
    cpus_per_worker: float = 1.0,
    use_gpu: bool = False,
    run_key: str | None = None,
    mode: Mode = "error",
    night: str | None = None,
    storage_options: dict | None = None,
    progress: Callable[[str], None] = print,
) -> Committed:
    """Map every row of the corpus at `input_uri` (Parquet shards or a Delta table) to its posterior
    mean (and logvar), committed as one version of the Delta table at `output_uri`.

    Output rows: the id column, `passthrough` columns, `z_mean` (fixed_size_list<float32>[L]) and with
    `with_logvar` `z_logvar`. The commit's record holds in `stats["z_mean"]` the count, per-dimension
    mean and variance of the posterior means (the aggregate posterior's moments). Rerunning with the
    same run key (default: a hash of the model, the input files and the parameters) does nothing.
    `storage_options` (fsspec style) reach every read and write, on the driver and the actors.
    """
    ckpt = load_checkpoint(model_uri, storage_options=storage_options)
    if with_logvar and not ckpt.model.is_variational:
        raise ValueError(
            f"{model_uri}: a {ckpt.config.model.family} model has a point posterior, no log-variance; "
            "drop with_logvar"
        )
    shards = list_shards(input_uri, storage_options)
    schema = read_schema(shards, storage_options)
    spec = resolve_spec(ckpt.config.data, schema, input_uri)
    if spec.id_column is None:
        raise DataError(f"{input_uri}: the model's config names no id column (data.id_column)")
    for name in passthrough:
        if name not in schema.names:
            raise DataError(
                f"{input_uri}: passthrough column {name!r} not in the input (have {schema.names})"
            )
    keep = [spec.id_column, *(c for c in passthrough if c != spec.id_column)]
    total = count_rows(shards, storage_options)
    params = {"with_logvar": with_logvar, "passthrough": list(keep[1:]), "format": "embed/1"}
    model_fp = _model_fingerprint(model_uri, storage_options)
    input_fp = fingerprint(shards, storage_options)
    run_key = run_key or fingerprint(
        [], extra={"kind": "embeddings", "model": model_fp, "input": input_fp, **params}
    )
    existing = _existing(output_uri, run_key, mode, storage_options, progress)
    if existing is not None:
        return existing

    compute = ComputeConfig(num_workers=num_workers, cpus_per_worker=cpus_per_worker, use_gpu=use_gpu)
    _start(compute)
    fs, _ = arrow_filesystem(shards[0], storage_options)
    with_paths = PATH_COLUMN not in schema.names  # a user column of that name wins
    columns = sorted({*keep, *spec.feature_columns, *([PATH_COLUMN] if with_paths else [])})
    # One read task per shard, each reserving a quarter CPU: reads wait on object storage as much
    # as they decode. Seen with Ray 2.60's default V2 Parquet reader: one ListFiles block, hence a
    # single read task for all shards, which starved 2 actors (read 39k rows/s, actors idle).
    # The V1 datasource honours override_num_blocks.
    ctx = ray.data.DataContext.get_current()
    v2, ctx.use_datasource_v2 = ctx.use_datasource_v2, False
    ds = ray.data.read_parquet(
        [arrow_filesystem(s, storage_options)[1] for s in shards],
        filesystem=fs,
        include_paths=with_paths,
        override_num_blocks=len(shards),
        num_cpus=READ_CPUS,
    ).select_columns(columns)
    ctx.use_datasource_v2 = v2  # the dataset keeps its own copy of the context
    ds = ds.map_batches(
        _Embedder,
        fn_constructor_kwargs={
            "model_uri": model_uri,
            "input_uri": input_uri,
            "out_dir": output_uri,
            "run_key": run_key,
            "spec": spec,
            "keep": keep,
            "with_logvar": with_logvar,
            "chunk": batch_size,
            "threads": max(1, int(cpus_per_worker)),
            "device": "cuda" if use_gpu else "cpu",
            "storage_options": storage_options,
        },
        batch_size=rows_per_file,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=num_workers),
        num_cpus=cpus_per_worker,
        num_gpus=1 if use_gpu else 0,
    )
    progress(f"embedding {total:,} rows of {input_uri} with {model_uri} on {num_workers} worker(s)")
    summaries = _dedupe(_collect(ds, _Progress("embed", total, progress)))
    rows = sum(s["rows"] for s in summaries)
    if rows != total:
        raise TableError(
            f"{output_uri}: the job wrote {rows:,} rows for {total:,} input rows; not committing"
        )
    sums = np.sum([s["sum"] for s in summaries], axis=0)
    sumsq = np.sum([s["sumsq"] for s in summaries], axis=0)
    mean = sums / rows
    out_schema = pa.schema(
        [schema.field(c) for c in keep]
        + [pa.field("z_mean", pa.list_(pa.float32(), ckpt.model.latent_dim))]
        + ([pa.field("z_logvar", pa.list_(pa.float32(), ckpt.model.latent_dim))] if with_logvar else [])
    )
    record = CommitRecord(
        kind="embeddings",
        run_key=run_key,
        rows=rows,
        model={"uri": model_uri, "fingerprint": model_fp, "epoch": ckpt.meta.epoch},
        input={"uri": input_uri, "shards": len(shards), "rows": total, "fingerprint": input_fp},
        params=params,
        stats={"z_mean": {"count": rows, "mean": mean.tolist(), "var": (sumsq / rows - mean**2).tolist()}},
        night=night,
        created_at=now_iso(),
    )
    committed = _commit(output_uri, summaries, out_schema, record, mode, storage_options, progress)
    committed.job_stats = ds.stats()
    return committed


def _collect(ds: ray.data.Dataset, meter: _Progress) -> list[dict[str, Any]]:
    """Stream the per-file summaries as the actors finish them."""
    summaries: list[dict[str, Any]] = []
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for s in batch.to_pylist():
                summaries.append(s)
                meter.add(s["rows"])
    except Exception as e:  # Ray wraps the actor's exception; surface the named data error
        reraise_data_error(e)
        raise
    return summaries


# ---- generate ---------------------------------------------------------------------------------


def block_seed(seed: int, block: int) -> int:
    """A 63-bit seed for block `block` of a run seeded `seed`, independent of which actor runs it."""
    return int(np.random.SeedSequence([seed, block]).generate_state(1, dtype=np.uint64)[0] >> 1)


class _Generator:
    """Loads the checkpoint once per actor; turns one block description into one Parquet file."""

    def __init__(
        self,
        model_uri: str,
        out_dir: str,
        run_key: str,
        seed: int,
        sample_likelihood: bool,
        chunk: int,
        threads: int,
        device: str,
        storage_options: dict | None,
    ) -> None:
        ckpt = _load_for_actor(model_uri, threads, device, storage_options)
        self.model = ckpt.model
        self.transformer = ckpt.codec.transformer if ckpt.codec.kind == "tabular" else None  # type: ignore[attr-defined]
        self.data = ckpt.config.data
        schema_text = ckpt.meta.data_schema
        self.schema = decode_schema(schema_text) if schema_text else None
        self.writer, self.seed, self.sample = _Writer(out_dir, storage_options), seed, sample_likelihood
        self.run_key, self.chunk, self.device = run_key, chunk, device

    @torch.no_grad()
    def _decode(self, n: int, gen: torch.Generator) -> np.ndarray:
        parts = []
        for i in range(0, n, self.chunk):
            m = min(self.chunk, n - i)
            z = torch.randn((m, self.model.latent_dim), generator=gen)  # (m, L) on the CPU: reproducible
            params = self.model.decode(z.to(self.device))
            lik = self.model.likelihood
            x = lik.sample(params, generator=gen) if self.sample else lik.mean(params)
            parts.append(x.float().cpu().numpy())
        return np.concatenate(parts)  # (n, D)

    def _rows(self, x: np.ndarray, start: int) -> pa.Table:
        columns: dict[str, pa.Array] = {}
        if self.data.id_column:
            known = self.schema is not None and self.data.id_column in self.schema.names
            id_type = self.schema.field(self.data.id_column).type if known else pa.int64()
            ids = np.arange(start, start + len(x))
            if pa.types.is_string(id_type) or pa.types.is_large_string(id_type):
                columns[self.data.id_column] = pa.array([str(i) for i in ids], type=id_type)
            else:
                columns[self.data.id_column] = pa.array(ids, type=id_type)
        if self.transformer is not None:
            table = self.transformer.inverse(x)
            for name in table.column_names:
                columns[name] = table.column(name)
            return pa.table(columns)
        column = self.data.vector_column
        assert column is not None
        value_type = self.schema.field(column).type.value_type if self.schema else pa.float32()
        values = x * self.data.scale
        if pa.types.is_integer(value_type):  # e.g. uint8 pixels: back to the stored integer range
            info = np.iinfo(value_type.to_pandas_dtype())
            values = np.clip(np.rint(values), info.min, info.max)
        field_type = self.schema.field(column).type if self.schema else None
        if field_type is not None and not pa.types.is_fixed_size_list(field_type):
            flat = pa.array(values.reshape(-1).astype(value_type.to_pandas_dtype()), type=value_type)
            offsets = pa.array(np.arange(0, values.size + 1, values.shape[1]), type=pa.int32())
            columns[column] = pa.ListArray.from_arrays(offsets, flat).cast(field_type)
        else:
            columns[column] = _fixed_list(values.astype(value_type.to_pandas_dtype()), value_type)
        return pa.table(columns)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        files, rows, sizes = [], [], []
        for block, start, n in zip(batch["block"], batch["start"], batch["rows"], strict=True):
            gen = torch.Generator().manual_seed(block_seed(self.seed, int(block)))
            table = self._rows(self._decode(int(n), gen), int(start))
            name = _file_name(self.run_key, f"{int(block):06d}", len(table))  # a retry rewrites it
            sizes.append(self.writer.write(table, name))
            files.append(name)
            rows.append(len(table))
        return {"file": np.array(files), "rows": np.array(rows), "bytes": np.array(sizes)}


def generate_rows(
    model_uri: str,
    rows: int,
    output_uri: str,
    *,
    seed: int = 0,
    rows_per_block: int = 10_000,
    batch_size: int = 4096,
    num_workers: int = 1,
    cpus_per_worker: float = 1.0,
    use_gpu: bool = False,
    sample_likelihood: bool | None = None,
    run_key: str | None = None,
    mode: Mode = "error",
    night: str | None = None,
    storage_options: dict | None = None,
    progress: Callable[[str], None] = print,
) -> Committed:
    """Sample z ~ N(0, I), decode, and commit `rows` rows in the training schema as one version of
    the Delta table at `output_uri`.

    Rows are cut into blocks of `rows_per_block`; block b draws from a generator seeded by
    (seed, b), so the output depends on seed and rows_per_block, not on how many workers ran it.
    Tabular models give the training columns with their dtypes and categories (the transformer's
    inverse); vector models give the vector column in its stored type (e.g. uint8 pixels).
    `sample_likelihood` draws x ~ p(x | z) (default for tabular models) instead of taking its mean.
    """
    if rows < 1:
        raise ValueError(f"rows must be positive, got {rows}")
    ckpt = load_checkpoint(model_uri, storage_options=storage_options)
    if sample_likelihood is None:
        sample_likelihood = ckpt.codec.kind == "tabular"
    blocks = [
        {"block": b, "start": start, "rows": min(rows_per_block, rows - start)}
        for b, start in enumerate(range(0, rows, rows_per_block))
    ]
    params = {"rows": rows, "seed": seed, "rows_per_block": rows_per_block, "sample": sample_likelihood}
    model_fp = _model_fingerprint(model_uri, storage_options)
    run_key = run_key or fingerprint([], extra={"kind": "samples/1", "model": model_fp, **params})
    existing = _existing(output_uri, run_key, mode, storage_options, progress)
    if existing is not None:
        return existing

    compute = ComputeConfig(num_workers=num_workers, cpus_per_worker=cpus_per_worker, use_gpu=use_gpu)
    _start(compute)
    ds = ray.data.from_items(blocks, override_num_blocks=len(blocks)).map_batches(
        _Generator,
        fn_constructor_kwargs={
            "model_uri": model_uri,
            "out_dir": output_uri,
            "run_key": run_key,
            "seed": seed,
            "sample_likelihood": sample_likelihood,
            "chunk": batch_size,
            "threads": max(1, int(cpus_per_worker)),
            "device": "cuda" if use_gpu else "cpu",
            "storage_options": storage_options,
        },
        batch_size=1,
        compute=ActorPoolStrategy(size=num_workers),
        num_cpus=cpus_per_worker,
        num_gpus=1 if use_gpu else 0,
    )
    progress(f"generating {rows:,} rows with {model_uri} in {len(blocks)} blocks on {num_workers} worker(s)")
    summaries = _dedupe(_collect(ds, _Progress("generate", rows, progress)))
    written = sum(s["rows"] for s in summaries)
    if written != rows or len(summaries) != len(blocks):
        raise TableError(f"{output_uri}: the job wrote {written:,} of {rows:,} rows; not committing")
    fs, path = arrow_filesystem(join(output_uri, summaries[0]["file"]), storage_options)
    out_schema = pq.read_schema(path, filesystem=fs)
    record = CommitRecord(
        kind="samples",
        run_key=run_key,
        rows=rows,
        model={"uri": model_uri, "fingerprint": model_fp, "epoch": ckpt.meta.epoch},
        params=params,
        night=night,
        created_at=now_iso(),
    )
    committed = _commit(output_uri, summaries, out_schema, record, mode, storage_options, progress)
    committed.job_stats = ds.stats()
    return committed


def _dedupe(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return list({s["file"]: s for s in summaries}.values())
