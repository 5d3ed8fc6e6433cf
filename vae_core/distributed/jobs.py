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

Why not `Dataset.write_delta`: its commit cannot carry the run key (Delta txn) and the job's
statistics, and the summaries give the aggregate-posterior moments of the corpus without a second
pass.
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from ray.data import ActorPoolStrategy

from vae_core.config import ComputeConfig
from vae_core.data.objects import fingerprint
from vae_core.data.storage import filesystem, join
from vae_core.data.tables import (
    CommitRecord,
    Committed,
    DataFile,
    Mode,
    TableError,
    check_writable,
    commit,
    delta_schema,
    find_commit,
    to_delta,
)
from vae_core.progress import Progress
from vae_core.training.checkpoints import CONFIG_FILE, META_FILE, MODEL_FILE, Checkpoint, load_checkpoint

from .cluster import check_resources, ensure_ray
from .errors import reraise_data_error

Summary = dict[str, Any]  # one written file: "file", "rows", "bytes", "threads", plus the job's own keys

# Blocks a job may hold in the object store at once (read-ahead plus outputs). Without a cap Ray
# Data reads ahead up to a share of the whole object store, so memory grew with the corpus up to
# that share (seen: 4.7 GB at 200k rows, 7.3 GB at 1M); with it, memory is flat in corpus size.
OBJECT_STORE_BUDGET = 1 << 30


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


def actor_pool(compute: ComputeConfig) -> dict[str, Any]:
    """The map_batches arguments of a job's actors: `num_workers` actors of `cpus_per_worker` CPUs (and a
    GPU each with `use_gpu`)."""
    return {
        "compute": ActorPoolStrategy(size=compute.num_workers),
        "num_cpus": compute.cpus_per_worker,
        "num_gpus": 1 if compute.use_gpu else 0,
    }


def load_for_actor(model_uri: str, compute: ComputeConfig, storage_options: dict | None) -> Checkpoint:
    """Once per actor: torch's intra-op threads set (compute.torch_threads, else the CPUs the actor
    reserved), then the checkpoint with its model on the job's device."""
    torch.set_num_threads(compute.torch_threads or max(1, int(compute.cpus_per_worker)))
    ckpt = load_checkpoint(model_uri, storage_options=storage_options)
    ckpt.model = ckpt.model.to("cuda" if compute.use_gpu else "cpu").eval()
    return ckpt


def model_fingerprint(model_uri: str, storage_options: dict | None) -> str:
    """Identifies a checkpoint for run keys: meta.json is written last, so a rewrite changes it."""
    return fingerprint([join(model_uri, f) for f in (MODEL_FILE, CONFIG_FILE, META_FILE)], storage_options)


def file_name(run_key: str, content: str, rows: int) -> str:
    """Run key first (two jobs never share a name), then what the file holds (a retry reuses it)."""
    return f"part-{run_key[:16]}-{content}-{rows}.parquet"


class Writer:
    """Writes Parquet files of one schema into one table folder; the filesystem is resolved once per actor."""

    def __init__(self, folder_uri: str, schema: pa.Schema, storage_options: dict | None) -> None:
        self.schema = delta_schema(schema)  # every file as the commit declares it
        self.fs, self.folder = filesystem(folder_uri, storage_options)
        self.fs.makedirs(self.folder, exist_ok=True)  # a local table folder; a no-op on object stores

    def write(self, table: pa.Table, name: str) -> int:
        """Write (or rewrite: a retried batch has the same name) one file; returns its size.

        The file is serialized in memory and stored with one PUT (s3fs uses a single request below
        100 MB): a killed writer leaves no incomplete multipart upload behind.
        """
        table = to_delta(table)
        if table.schema != self.schema:
            table = table.cast(self.schema)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        data = sink.getvalue().to_pybytes()
        self.fs.pipe_file(f"{self.folder.rstrip('/')}/{name}", data)
        return len(data)


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


def existing_commit(
    output_uri: str, run_key: str, mode: Mode, storage_options: dict | None, progress: Progress
) -> Committed | None:
    """The earlier commit of this run key (a rerun then does nothing); refuse early what cannot commit."""
    found = find_commit(output_uri, run_key, mode, storage_options)
    if found is not None:
        version, record = found
        progress(f"{output_uri}: run {run_key} already committed version {version} ({record.rows:,} rows)")
        return Committed(output_uri, version, record, files=[], skipped=True)
    check_writable(output_uri, mode, storage_options)
    return None


def collect(
    ds: ray.data.Dataset, what: str, total: int, output_uri: str, progress: Progress
) -> list[Summary]:
    """Run the job: stream the per-file summaries as the actors finish them, one per file (a retried
    batch reports its file again), and check that they hold `total` rows.

    A DataError raised in an actor (a bad row, named by file, column and row) comes back as a DataError.
    """
    meter, summaries, threads = Meter(what, total, progress), {}, set()
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for s in batch.to_pylist():
                summaries[s["file"]] = s
                threads.add(s["threads"])
                meter.add(s["rows"])
    except Exception as e:  # Ray wraps the actor's exception; surface the named data error
        reraise_data_error(e)
        raise
    rows = sum(s["rows"] for s in summaries.values())
    if rows != total:
        raise TableError(f"{output_uri}: the {what} job wrote {rows:,} of {total:,} rows; not committing")
    progress(f"{what}: actors ran torch with {', '.join(map(str, sorted(threads)))} thread(s)")
    return sorted(summaries.values(), key=lambda s: s["file"])


def commit_files(
    output_uri: str,
    summaries: list[Summary],
    schema: pa.Schema,
    record: CommitRecord,
    mode: Mode,
    storage_options: dict | None,
    progress: Progress,
) -> Committed:
    """Commit the files the summaries name as one version of the Delta table at `output_uri`."""
    files = [DataFile(s["file"], s["rows"], s["bytes"]) for s in summaries]
    version = commit(output_uri, files, schema, record, mode, storage_options)
    progress(f"committed {record.rows:,} rows in {len(files)} files as version {version} of {output_uri}")
    return Committed(output_uri, version, record, [join(output_uri, f.path) for f in files], skipped=False)
