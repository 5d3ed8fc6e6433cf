"""Embed night after night, S3 -> S3: a rerun after a crash, and a night with one new shard.

Writes bench/results/embed_resume.json and embed_incremental.json. The corpus is 20 Parquet shards of
MNIST rows (10,000 each; VAEFLOW_BENCH_SCALE scales them) on a moto S3 server in its own process; each
job is the command a user runs, `vaeflow embed ... --workers 2`, in its own process with its own local
Ray cluster.

- Resume: the job is SIGKILLed, with every process it started (its Ray cluster too), once about half
  of the shards are finished (their markers under <table>/_vaeflow/<run key>/), then run again. Value:
  rows the rerun processed (its commit's stats.rows_embedded) / input rows; target <= 0.55.
- Incremental: `--incremental` over the 20 shards, one shard added, the same command again. Value:
  rows the second night processed / rows of the new shard; target <= 1.05.
Both check that the final table holds every id once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import s3fs

from bench._results import write_result
from bench.batch_jobs import save_model
from tests.servers import local_s3_server, make_bucket
from vae_core.data.packaged import mnist_table
from vae_core.data.storage import arrow_filesystem
from vae_core.data.tables import history, read_table

SCALE = float(os.environ.get("VAEFLOW_BENCH_SCALE", "1"))
SHARDS, SHARD_ROWS = 20, max(100, int(10_000 * SCALE))
VAEFLOW = os.path.join(os.path.dirname(sys.executable), "vaeflow")


def write_shards(folder: str, first: int, count: int) -> None:
    """Shards first .. first + count - 1 of SHARD_ROWS MNIST rows each (ids k * SHARD_ROWS on)."""
    base = mnist_table("train")
    for k in range(first, first + count):
        ids = pa.array(np.arange(k * SHARD_ROWS, (k + 1) * SHARD_ROWS, dtype=np.int64))
        start = (k * SHARD_ROWS) % (base.num_rows - SHARD_ROWS)
        fs, path = arrow_filesystem(f"{folder}/part-{k:05d}.parquet")
        pq.write_table(base.slice(start, SHARD_ROWS).set_column(0, "id", ids), path, filesystem=fs)


def embed(model: str, corpus: str, out: str, *flags: str) -> subprocess.Popen:
    return subprocess.Popen(
        [VAEFLOW, "embed", "--model", model, "--input", corpus, "--output", out, "--workers", "2", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen, what: str) -> float:
    t0 = time.perf_counter()
    out, _ = proc.communicate(timeout=1200)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{out[-3000:]}")
    print(out.strip().splitlines()[-1], flush=True)
    return time.perf_counter() - t0


def kill_tree(proc: subprocess.Popen) -> int:
    """SIGKILL the job and every process it started (its Ray cluster); returns how many."""
    victims = [proc.pid, *(p.pid for p in psutil.Process(proc.pid).children(recursive=True))]
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)
    return len(victims)


def markers(fs: s3fs.S3FileSystem, table: str) -> int:
    fs.invalidate_cache()
    return len(fs.glob(f"{table.removeprefix('s3://')}/_vaeflow/*/*.json"))


def check_table(table: str, rows: int) -> dict[str, Any]:
    ids = read_table(table, columns=["id"]).column("id").to_numpy()
    assert len(ids) == rows and len(np.unique(ids)) == rows, (len(ids), len(np.unique(ids)), rows)
    return {"rows": len(ids), "unique_ids": len(np.unique(ids))}


def resume(fs: s3fs.S3FileSystem, model: str, corpus: str, bucket: str) -> None:
    table, total = f"{bucket}/embeddings-resume", SHARDS * SHARD_ROWS
    first = embed(model, corpus, table)
    t0 = time.perf_counter()
    while markers(fs, table) < SHARDS // 2:
        if first.poll() is not None:
            raise RuntimeError(f"the job ended before it was killed:\n{first.stdout.read()[-3000:]}")
        time.sleep(0.2)
    done_at_kill = markers(fs, table)
    killed = kill_tree(first)
    killed_after = time.perf_counter() - t0
    seconds = finish(embed(model, corpus, table), "the rerun")
    version, record, processed = _last_commit(table)
    write_result(
        "embed_resume",
        processed / total,
        "rows processed by the rerun / input rows",
        0.55,
        "lower",
        {"shards": SHARDS, "rows": total, "workers": 2, "store": "moto S3 (own process)"},
        baseline=float(total),
        rows_processed=processed,
        rows_resumed=record.stats["rows_resumed"],
        shards_finished_at_kill=done_at_kill,
        killed_after_s=round(killed_after, 1),
        processes_killed=killed,
        rerun_seconds=round(seconds, 1),
        table_version=version,
        table=check_table(table, total),
    )


def _last_commit(table: str) -> tuple[int, Any, int]:
    """The table's latest version, its commit record and the rows that commit's job embedded."""
    (version, record), *_ = history(table)
    return version, record, record.stats["rows_embedded"]


def incremental(fs: s3fs.S3FileSystem, model: str, corpus: str, bucket: str) -> None:
    table = f"{bucket}/embeddings-nightly"
    first_s = finish(embed(model, corpus, table, "--incremental"), "night 1")
    write_shards(corpus, SHARDS, 1)  # one new shard beside the 20
    second_s = finish(embed(model, corpus, table, "--incremental"), "night 2")
    version, record, processed = _last_commit(table)
    write_result(
        "embed_incremental",
        processed / SHARD_ROWS,
        "rows processed on night 2 / rows of the new shard",
        1.05,
        "lower",
        {"shards": SHARDS, "new_shards": 1, "shard_rows": SHARD_ROWS, "workers": 2, "store": "moto S3"},
        baseline=float(SHARD_ROWS),
        rows_processed=processed,
        rows_carried=record.stats["rows_carried"],
        night_seconds={"first (20 shards)": round(first_s, 1), "second (1 new)": round(second_s, 1)},
        table_version=version,
        table=check_table(table, (SHARDS + 1) * SHARD_ROWS),
    )


def main() -> None:
    with local_s3_server(separate_process=True):
        bucket = make_bucket("bench")
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        write_shards(f"{bucket}/corpus-a", 0, SHARDS)
        write_shards(f"{bucket}/corpus-b", 0, SHARDS)  # its own copy: night 2 adds a shard to it
        model = f"{bucket}/model"
        save_model(model, mnist_table("train").schema)
        resume(fs, model, f"{bucket}/corpus-a", bucket)
        incremental(fs, model, f"{bucket}/corpus-b", bucket)


if __name__ == "__main__":
    main()
