"""What the Ray Data batch jobs (embed, generate) share: the cluster, the actors' model and file writer,
the driver's progress meter, and the one Delta commit of the files the actors reported.

Both jobs follow Ray's batch-inference pattern: a class loads the checkpoint once per actor and maps
batches. Each batch becomes one Parquet file that the actor writes itself, with one PUT, straight
into the output table's folder, under a name fixed by the run key and the batch's content (embed: a
hash of the batch's ids; generate: the file index), and returns a one-row summary (file, rows, bytes,
the actor's torch threads, and what the job adds). The driver streams the summaries, prints progress,
checks that every row was written exactly once and that every file is there, and commits them as one
Delta table version (vae_core.data.tables). Until then the files are invisible to every Delta reader;
a file left by a task that Ray retried is rewritten under the same name, and only files a summary
reported are committed.

Resuming (embed): when an actor has written all the files of one input shard it leaves the shard's
summaries in a small JSON marker, `<table>/_vaeflow/<run key>/<shard digest>.json` (a folder Delta
readers and VACUUM pass over). A rerun of the same run key after a crash takes the shards whose
marker is there and whose files are all in place with their sizes, and processes only the rest; the
commit is still one, with every file once. Markers are never deleted (a few hundred bytes a shard).

Why not `Dataset.write_delta`: its commit cannot carry the run key (Delta txn) and the job's
statistics, and the summaries give the aggregate-posterior moments of the corpus without a second
pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from ray.data import ActorPoolStrategy

from vae_core.config import ComputeConfig
from vae_core.data.dataset import is_list_type
from vae_core.data.objects import atomic_write_json, fingerprint, read_json
from vae_core.data.outputs import check_writable
from vae_core.data.s3_errors import bucket_gone
from vae_core.data.storage import absolute, check_bucket, filesystem, join
from vae_core.data.tables import (
    JOB_DIR,
    CommitRecord,
    Committed,
    DataFile,
    Mode,
    NewIds,
    commit,
    delta_schema,
    file_sizes,
    find_commit,
    now_iso,
    to_delta,
)
from vae_core.errors import ConfigError, DataError, StorageError, TableError, raise_found
from vae_core.progress import Progress
from vae_core.training.checkpoints import (
    CONFIG_FILE,
    META_FILE,
    MODEL_FILE,
    SAMPLER_FILE,
    Checkpoint,
    load_checkpoint,
)

from .cluster import check_resources, cluster_set_up, ensure_ray
from .ray_internals import native_stderr_without

Summary = dict[str, Any]  # one written file: "file", "rows", "bytes", "threads", plus the job's own keys

# Blocks a job may hold in the object store at once (read-ahead plus outputs). Without a cap Ray
# Data reads ahead up to a share of the whole object store, so memory grows with the corpus up to
# that share; with it, memory is flat in corpus size (bench/results/embed_memory.json,
# generate_memory.json).
OBJECT_STORE_BUDGET = 1 << 30
STAGING = JOB_DIR  # markers of finished input shards, per run key (see the module docstring)


def start_cluster(compute: ComputeConfig) -> None:
    """Connect to (or start) Ray sized for `compute`, check it fits, and set the jobs' Ray Data limits."""
    ensure_ray(compute)
    check_resources(compute)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(
        object_store_memory=OBJECT_STORE_BUDGET
    )
    ctx.target_max_block_size = min(ctx.target_max_block_size or 8 << 20, 8 << 20)
    ctx.enable_progress_bars = False  # the driver prints one progress line every few seconds
    ctx.print_on_execution_start = False
    # A bad row's DataError reaches the driver as itself (inside Ray's RayTaskError), not wrapped in a
    # UserCodeException whose pickled form would drop it from the cause chain.
    ctx.raise_original_map_exception = True


@dataclass(frozen=True)
class Actors:
    """What each actor of a job is built from (sent to it once): the model, the output table (folder,
    schema), the run key that names its files, the compute settings and the storage options."""

    model_uri: str
    output_uri: str
    schema: pa.Schema
    run_key: str
    compute: ComputeConfig
    storage_options: dict | None
    in_process: bool = False  # loaded by InProcess in the calling process, not by a Ray actor

    def pool(self, size: int | None = None) -> dict[str, Any]:
        """map_batches' arguments for the pool: `size` (default compute.num_workers) actors of
        `cpus_per_worker` CPUs (and a GPU each with `use_gpu`)."""
        c = self.compute
        return {
            "compute": ActorPoolStrategy(size=size or c.num_workers),
            "num_cpus": c.cpus_per_worker,
            "num_gpus": 1 if c.use_gpu else 0,
        }

    def load(self) -> tuple[Checkpoint, Writer]:
        """Once per actor: torch's intra-op threads set (compute.torch_threads, else the CPUs the actor
        reserved; in the calling process (InProcess): compute.torch_threads, else torch's own default),
        the checkpoint with its model on the job's device, and the file writer."""
        if not self.in_process:
            torch.set_num_threads(self.compute.threads_per_worker)
        elif self.compute.torch_threads:
            torch.set_num_threads(self.compute.torch_threads)
        ckpt = load_checkpoint(self.model_uri, storage_options=self.storage_options)
        ckpt.model = ckpt.model.to("cuda" if self.compute.use_gpu else "cpu").eval()
        return ckpt, Writer(self.output_uri, self.schema, self.run_key, self.storage_options)


def marker_uri(table_uri: str, run_key: str, shard: str) -> str:
    """Where the marker of input `shard` of run `run_key` goes."""
    return join(table_uri, STAGING, run_key, hashlib.sha256(shard.encode()).hexdigest()[:24] + ".json")


class Writer:
    """Writes the Parquet files of one job into its table folder (filesystem resolved once per actor)."""

    def __init__(
        self, folder_uri: str, schema: pa.Schema, run_key: str, storage_options: dict | None
    ) -> None:
        self.schema, self.run_key = delta_schema(schema), run_key  # every file as the commit declares it
        self.folder_uri, self.storage_options = folder_uri, storage_options
        self.fs, self.folder = filesystem(folder_uri, storage_options)
        try:
            self.fs.makedirs(self.folder, exist_ok=True)  # a local table folder; S3: checks the bucket
        except StorageError as e:  # the driver found the bucket before any actor started: it went since
            bucket = folder_uri.removeprefix("s3://").split("/", 1)[0]
            if not str(e).startswith(f"s3://{bucket}: no such bucket"):
                raise
            raise bucket_gone(folder_uri, bucket) from e

    def mark_done(self, shard: str, summaries: list[Summary]) -> None:
        """Record that every file of input `shard` is written (its summaries), for a rerun to reuse."""
        marker = {"shard": shard, "files": summaries}
        atomic_write_json(marker_uri(self.folder_uri, self.run_key, shard), marker, self.storage_options)

    def write(self, table: pa.Table, content: str) -> Summary:
        """Write one file named by the run key and `content` (what it holds: a retried batch rewrites the
        same file instead of adding one); returns its summary for the driver.

        The file is serialized in memory and stored with one PUT (s3fs uses a single request below
        100 MB): a killed writer leaves no incomplete multipart upload behind.
        """
        table = to_delta(table)
        if table.schema != self.schema:
            table = table.cast(self.schema)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        data = sink.getvalue().to_pybytes()
        # Run key first (two jobs never share a name), then what the file holds.
        name = f"part-{self.run_key[:16]}-{content}-{len(table)}.parquet"
        self.fs.pipe_file(f"{self.folder.rstrip('/')}/{name}", data)
        return {"file": name, "rows": len(table), "bytes": len(data), "threads": torch.get_num_threads()}


class Meter:
    """One progress line every `every` seconds: rows done, share, rate."""

    def __init__(self, what: str, total: int, progress: Progress, every: float = 5.0) -> None:
        self.what, self.total, self.progress, self.every = what, total, progress, every
        self.done, self.t0 = 0, time.perf_counter()
        self.last = self.t0

    def add(self, rows: int) -> None:
        self.done += rows
        now = time.perf_counter()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            self.progress(
                f"{self.what}: {self.done:,}/{self.total:,} rows ({100 * self.done / self.total:.0f}%), "
                f"{rate:,.0f} rows/s"
            )


def model_record(model_uri: str, ckpt: Checkpoint, storage_options: dict | None) -> dict[str, Any]:
    """The model as a commit records it (uri, fingerprint, epoch); the fingerprint also keys the run:
    meta.json is written last, so a rewritten checkpoint changes it."""
    names = [MODEL_FILE, CONFIG_FILE, *([SAMPLER_FILE] if ckpt.sampler is not None else []), META_FILE]
    files = [join(model_uri, f) for f in names]
    return {"uri": model_uri, "fingerprint": fingerprint(files, storage_options), "epoch": ckpt.meta.epoch}


def resumable(
    table_uri: str, run_key: str, shards: list[str], storage_options: dict | None
) -> dict[str, list[Summary]]:
    """Input shard -> its file summaries, for the shards an earlier attempt of `run_key` finished: its
    marker is there and every file it names is in the table folder with the size it reported."""
    fs, folder = filesystem(join(table_uri, STAGING, run_key), storage_options)
    fs.invalidate_cache(folder)
    if not fs.exists(folder):
        return {}
    with ThreadPoolExecutor(max_workers=8) as pool:
        uris = [marker_uri(table_uri, run_key, s) for s in shards]
        markers = list(pool.map(lambda uri: read_json(uri, storage_options), uris))
    sizes = file_sizes(table_uri, storage_options)
    return {
        shard: marker["files"]
        for shard, marker in zip(shards, markers, strict=True)
        if marker is not None
        and marker.get("shard") == shard
        and all(sizes.get(f["file"]) == f["bytes"] for f in marker["files"])
    }


@dataclass
class InProcess:
    """A job's map run in the calling process, one item after the other, where Run.execute would run a
    Ray Dataset: for jobs too small to be worth starting a cluster (generate.local_rows). `fn` is the
    actor class's constructor (built once, here), `items` the rows the Dataset would hold."""

    fn: Callable[..., Callable[[dict[str, np.ndarray]], pa.Table]]
    args: tuple
    items: list[dict[str, Any]]

    def iter_batches(self) -> Iterator[pa.Table]:
        mapper = self.fn(*self.args)
        for item in self.items:
            yield mapper({k: np.asarray([v]) for k, v in item.items()})

    def stats(self) -> str:
        return f"{len(self.items)} batches mapped in the calling process, no Ray Dataset"


def runs_here(rows: int, local_rows: int, compute: ComputeConfig) -> bool:
    """Whether a job of `rows` rows runs in the calling process (InProcess) rather than on Ray: a CPU
    job of at most `local_rows` rows when no cluster is set up (generate.local_rows, embed.local_rows)."""
    return rows <= local_rows and not compute.use_gpu and not cluster_set_up()


def mapped(
    fn: Callable[..., Any], args: tuple, items: list[dict[str, Any]], actors: Actors, setting: str
) -> tuple[ray.data.Dataset | InProcess, str]:
    """`items` mapped one at a time by actors of class `fn` built from `args`: in this process when
    actors.in_process, else on Ray's actor pool; and where, for the progress line (`setting` names
    the limit that kept it here)."""
    if actors.in_process:
        return InProcess(fn, args, items), f"in this process ({setting}; no Ray cluster set up)"
    start_cluster(actors.compute)
    workers = min(actors.compute.num_workers, len(items))  # an actor per item at most
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        fn, fn_constructor_args=args, batch_size=1, **actors.pool(workers)
    )
    if workers < actors.compute.num_workers:
        return ds, (
            f"on {workers} worker(s), not {actors.compute.num_workers}: the input has {len(items)} "
            f"file{'s' if len(items) != 1 else ''} and a worker takes a file at a time (more files use "
            "more workers: vaeflow data import --rows-per-file)"
        )
    return ds, f"on {workers} worker(s)"


@dataclass
class Run:
    """One run of a batch job as the driver sees it: the table it commits to, its run key (a rerun of
    a committed key does nothing) and the commit's options."""

    job: str  # its name in progress lines: "embed" | "generate"
    kind: str  # CommitRecord.kind: "embeddings" | "samples"
    output_uri: str
    run_key: str
    mode: Mode
    night: str | None
    storage_options: dict | None
    progress: Progress

    def earlier(self, schema: pa.Schema) -> Committed | None:
        """The earlier commit of this run key (a rerun then does nothing); refuse early what cannot commit
        (outputs.check_writable: the output's folder holds other files, or a table of other columns)."""
        found = find_commit(self.output_uri, self.run_key, self.mode, self.storage_options)
        if found is not None:
            version, record = found
            self.progress(
                f"{self.output_uri}: run {self.run_key} already committed version {version} "
                f"({record.rows:,} rows)"
            )
            return Committed(self.output_uri, version, record, files=[], skipped=True)
        check_bucket(self.output_uri, self.storage_options)
        check_writable(self.output_uri, self.mode, self.storage_options, schema)
        return None

    def execute(
        self,
        ds: ray.data.Dataset | InProcess | None,
        rows: int,
        schema: pa.Schema,
        model: dict[str, Any],
        params: dict[str, Any],
        inputs: dict[str, Any] | None = None,
        stats: Callable[[list[Summary]], dict[str, Any]] | None = None,
        resumed: list[Summary] | None = None,
        new_ids: NewIds | None = None,
    ) -> Committed:
        """Run `ds` (its actors, or InProcess's mapper, write the files and summarize them), check that
        they and `resumed` (files an earlier attempt of this run key wrote) hold `rows` rows, and commit
        them all as one table version of `schema` (`ds` None: everything was resumed). The commit's
        record holds `model` (model_record), `params` (the settings that key the run), `inputs` and
        `stats(summaries)`. An append's `new_ids` are checked again at the commit (tables.commit)."""
        resumed = resumed or []
        earlier = sum(s["rows"] for s in resumed)
        summaries = resumed + (self._collect(ds, rows - earlier) if ds is not None else [])
        commit_record = CommitRecord(
            kind=self.kind,
            run_key=self.run_key,
            rows=rows,
            mode=self.mode,
            model=model,
            input=inputs or {},
            params=params,
            stats=stats(summaries) if stats else {},
            night=self.night,
            created_at=now_iso(),
        )
        files = [DataFile(s["file"], s["rows"], s["bytes"]) for s in summaries]
        version = commit(
            self.output_uri, files, schema, commit_record, self.mode, self.storage_options, new_ids
        )
        threads = ", ".join(map(str, sorted({s["threads"] for s in summaries})))
        where = "this process" if isinstance(ds, InProcess) else "actors"
        self.progress(
            f"committed {rows:,} rows in {len(files)} file{'s' if len(files) != 1 else ''} as version "
            f"{version} of {self.output_uri} "
            f"({where} ran torch with {threads} thread(s))"
        )
        uris = [join(self.output_uri, f.path) for f in files]
        job_stats = ds.stats() if ds is not None else ""
        return Committed(self.output_uri, version, commit_record, uris, skipped=False, job_stats=job_stats)

    def _collect(self, ds: ray.data.Dataset | InProcess, rows: int) -> list[Summary]:
        """Stream the per-file summaries as the actors finish them, one per file (a retried batch
        reports its file again), and check that they hold `rows` rows.

        A DataError raised in an actor (a bad row, named by file, column and row) comes back as a DataError.
        """
        meter, summaries = Meter(self.job, rows, self.progress), {}
        in_process = isinstance(ds, InProcess)
        try:
            with contextlib.nullcontext() if in_process else native_stderr_without():
                batches = (
                    ds.iter_batches()
                    if in_process
                    else ds.iter_batches(batch_size=None, batch_format="pyarrow")
                )
                for batch in batches:
                    for s in batch.to_pylist():
                        summaries[s["file"]] = s
                        meter.add(s["rows"])
        except Exception as e:  # Ray wraps the actor's exception; surface the named data error
            raise_found(e, DataError)
            raise
        written = sum(s["rows"] for s in summaries.values())
        if written != rows:
            raise TableError(f"{self.output_uri}: the job wrote {written:,} of {rows:,} rows; not committing")
        return sorted(summaries.values(), key=lambda s: s["file"])


def _kind(t: pa.DataType) -> str:
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return "number"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_fixed_size_list(t):
        return f"list of {_kind(t.value_type)} x {t.list_size}"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"list of {_kind(t.value_type)}"
    return str(t)


def _compatible(was: pa.DataType, now: pa.DataType) -> bool:
    """Lists: the same kind of values and, where both are fixed-size, the same length (a variable-length
    list is checked row by row by the codec); anything else: the same kind."""
    if is_list_type(was) and is_list_type(now):
        fixed = pa.types.is_fixed_size_list(was) and pa.types.is_fixed_size_list(now)
        same_size = not fixed or was.list_size == now.list_size
        return _kind(was.value_type) == _kind(now.value_type) and same_size
    return _kind(was) == _kind(now)


def check_input_schema(trained: pa.Schema | None, schema: pa.Schema, columns: list[str], source: str) -> None:
    """Each column the model reads has, in the input `schema`, the kind of type it had in training
    (numbers stay numbers, strings strings, a vector its length), else a DataError naming the column,
    both types and `source`. Widths within a kind (int32 / int64, float / double) may differ."""
    if trained is None:
        return
    for name in columns:
        if name not in trained.names or name not in schema.names:
            continue
        was, now = trained.field(name).type, schema.field(name).type
        if not _compatible(was, now):
            raise DataError(
                f"{source}: column {name!r} is {now} ({_kind(now)}), but the model was trained on {was} "
                f"({_kind(was)})"
            )


def _inside(uri: str, folder: str) -> bool:
    a, b = uri.rstrip("/"), folder.rstrip("/")
    return a == b or a.startswith(b + "/")


def keep_out_of(model_uri: str, ckpt: Checkpoint) -> dict[str, str]:
    """What a job's output may neither be in nor hold: the model and the splits it was trained and
    validated on (a sample or an embedding there would be read by the next training)."""
    data = absolute(ckpt.config.data.uri)
    return {
        "model": model_uri,
        "training_split": f"{data}/train",
        "validation_split": f"{data}/{ckpt.config.train.val_split}",
    }


def check_output_place(output_uri: str, **keep_out: str) -> None:
    """The output may be neither inside nor around any of `keep_out` (name -> URI: the job's input, the
    model's training data): a ConfigError naming both, before anything is written."""
    for what, uri in keep_out.items():
        if uri and (_inside(output_uri, uri) or _inside(uri, output_uri)):
            raise ConfigError(
                f"--output {output_uri} overlaps the {what.replace('_', ' ')} {uri}: write the output to "
                "a folder of its own"
            )
