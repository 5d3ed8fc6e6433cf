"""A year of nights on S3: incremental embedding, the nightly's table maintenance, a champion a night.

Each night adds one shard of SHARD_ROWS rows (an id and a 16-float vector) to a corpus on a moto S3
server in its own process, embeds it incrementally with a small VAE (`embed_corpus`, the nightly's
job; a night's shard is embedded in this process, embed.local_rows: the same files and commit as on
Ray, without a cluster start a night), maintains the table as the nightly does
(`data.maintenance.maintain`, keep_nights 7, a VACUUM a week with the retention a real schedule gives:
RETENTION_HOURS) and promotes one of two registry versions (the champion
series grows by a record a night). After the last night it measures, against a table and a registry
of one night built then by the same code and read in turn with them (medians of READS):
  - reading the table's latest version (open the Delta table anew, read every row), value: the ratio
    NIGHTS nights / one night, target <= 1.5;
  - the data files of the latest version (target <= 2x night 1's), the `_delta_log` JSON commits
    after the last checkpoint (target <= 100);
  - reading the champion record (registry.champion_record) at record NIGHTS / at record 1 (<= 2).
The data files of night 1 are counted at night 1.
After the last night every retained version (those the maintenance kept, and the latest) is read:
each holds the ids of the nights up to it, every id exactly once.

Run: python -m bench year_of_nights (VAEFLOW_BENCH_NIGHTS for fewer nights).
"""

from __future__ import annotations

import os
import statistics
import time
from datetime import date, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from bench._results import write_result
from tests.servers import local_s3_server, make_bucket
from vae_core.config import ComputeConfig, EmbedConfig, VaeflowConfig
from vae_core.data.codecs.vector import VectorCodec
from vae_core.data.maintenance import last_checkpoint, maintain
from vae_core.data.storage import arrow_filesystem, filesystem, join
from vae_core.data.tables import LOG_DIR, _open, read_table
from vae_core.distributed.embed import embed_corpus
from vae_core.models.families import DataShape, build_model
from vae_core.operations.pipeline import PipelineConfig
from vae_core.operations.registry import champion_record, promote, publish_version
from vae_core.training.checkpoints import CheckpointMeta, save_checkpoint
from vae_core.training.evaluation import EvalResult
from vae_core.training.model_report import IwaeBound, ModelReport

NIGHTS = int(os.environ.get("VAEFLOW_BENCH_NIGHTS", "365"))
# The benchmark's nights are seconds apart, not a day: VACUUM's retention of the nightly's 24 hours
# would keep every file ever removed. 0 stands for "removed on an earlier night" (what 24 hours are
# on a real schedule); the keep_nights versions still keep their files, which the end checks.
RETENTION_HOURS = 0
VACUUM_EVERY = PipelineConfig.model_fields["vacuum_every"].default  # the nightly's: weekly
VACUUMED: list[int] = []  # files each night's VACUUM deleted
SHARD_ROWS, FEATURES, KEEP_NIGHTS, READS = 200, 16, 7, 5
FIRST_NIGHT = date(2026, 1, 1)


def save_model(uri: str, seed: int) -> None:
    cfg = VaeflowConfig.model_validate(
        {"name": "year", "data": {"uri": "unused", "vector_column": "x"},
         "model": {"family": "vae", "hidden": [32], "latent_dim": 4}}
    )  # fmt: skip
    codec = VectorCodec("x", FEATURES, "float32")
    torch.manual_seed(seed)
    save_checkpoint(
        uri, build_model(cfg.model, DataShape.of(codec)), cfg, codec, meta=CheckpointMeta(epoch=1)
    )


def write_shard(corpus: str, night: int) -> None:
    rng = np.random.default_rng(night)
    ids = np.arange(night * SHARD_ROWS, (night + 1) * SHARD_ROWS, dtype=np.int64)
    x = pa.FixedSizeListArray.from_arrays(
        pa.array(rng.normal(size=SHARD_ROWS * FEATURES), pa.float32()), FEATURES
    )
    fs, path = arrow_filesystem(f"{corpus}/part-{night:05d}.parquet")
    pq.write_table(pa.table({"id": ids, "x": x}), path, filesystem=fs)


def _interleaved_s(*fns) -> list[float]:
    """Median seconds of each of `fns`, called in turn READS times (the machine's speed drifts)."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(READS):
        for t, fn in zip(times, fns, strict=True):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def shape(table: str, root: str) -> dict[str, Any]:
    """The table's latest version: data files, JSON commits (after the last checkpoint); the champion."""
    fs, log = filesystem(join(table, LOG_DIR))
    fs.invalidate_cache(log)
    checkpoint = last_checkpoint(table)
    commits = [int(p.rsplit("/", 1)[-1][:20]) for p in fs.ls(log, detail=False) if p.endswith(".json")]
    return {
        "data_files": len(_open(table, None).file_uris()),
        "json_commits": len(commits),
        "json_after_checkpoint": sum(1 for v in commits if checkpoint is None or v > checkpoint),
        "last_checkpoint": checkpoint,
        "version": _open(table, None).version(),
        "champion_seq": champion_record(root, "year").seq,
    }


def night(model: str, corpus: str, table: str, root: str, n: int) -> int:
    """Night n: a shard, the incremental embed, the maintenance, a promotion; the version committed."""
    day = (FIRST_NIGHT + timedelta(days=n)).isoformat()
    write_shard(corpus, n)
    committed = embed_corpus(
        model, corpus, table, EmbedConfig(incremental=True, local_rows=SHARD_ROWS), ComputeConfig(),
        mode="overwrite", night=day, progress=lambda _: None,
    )  # fmt: skip
    done = maintain(
        table, keep_nights=KEEP_NIGHTS, retention_hours=RETENTION_HOURS, vacuum_every=VACUUM_EVERY
    )
    VACUUMED.append(len(done.vacuumed))
    promote(root, "year", f"v{n % 2}", "nightly", None if n == 0 else n - 1, night=day)
    return committed.version


def registry(bucket: str, root: str) -> str:
    report = ModelReport(
        test=EvalResult(-100.0, 95.0, 5.0, 100), iwae=IwaeBound(log_likelihood=-99.0, k=10, n=100)
    )
    for v in (0, 1):
        save_model(f"{bucket}/runs/r{v}", seed=v)
        publish_version(root, "year", f"v{v}", f"{bucket}/runs/r{v}", report)
    return f"{root}/models/year/v0"


def main() -> None:
    with local_s3_server(separate_process=True):
        bucket = make_bucket("year")
        corpus, table, root = f"{bucket}/corpus/train", f"{bucket}/embeddings", f"{bucket}/registry"
        model = registry(bucket, root)
        versions: dict[int, int] = {}  # table version -> rows it holds
        night_s: list[float] = []
        first: dict[str, Any] = {}
        t_start = time.perf_counter()
        for n in range(NIGHTS):
            t0 = time.perf_counter()
            versions[night(model, corpus, table, root, n)] = (n + 1) * SHARD_ROWS
            night_s.append(time.perf_counter() - t0)
            if n == 0:
                first = shape(table, root)
            if n % 30 == 0 or n == NIGHTS - 1:
                print(f"  night {n + 1}: {night_s[-1]:.2f} s", flush=True)
        total_s = time.perf_counter() - t_start
        # The baseline, built now so that both are read on the same machine at the same time: a table
        # and a registry of one night, the same code.
        one_corpus, one_table, one_root = (
            f"{bucket}/one/corpus",
            f"{bucket}/one/embeddings",
            f"{bucket}/one/registry",
        )
        night(registry(bucket, one_root), one_corpus, one_table, one_root, 0)
        last, one = shape(table, root), shape(one_table, one_root)
        read_last, read_one, champ_last, champ_one = _interleaved_s(
            lambda: read_table(table),
            lambda: read_table(one_table),
            lambda: champion_record(root, "year"),
            lambda: champion_record(one_root, "year"),
        )
        # Every version the maintenance keeps readable holds each id of its nights once.
        kept = maintain(table, keep_nights=KEEP_NIGHTS, retention_hours=RETENTION_HOURS, dry_run=True)
        retained = {}
        for v in [*kept.kept_versions, kept.version]:
            ids = read_table(table, version=v, columns=["id"]).column("id").to_numpy()
            expected = max(rows for version, rows in versions.items() if version <= v)
            assert len(ids) == expected == len(np.unique(ids)), (v, len(ids), len(np.unique(ids)), expected)
            assert ids.min() == 0 and ids.max() == expected - 1, (v, ids.min(), ids.max())
            retained[str(v)] = int(expected)
    ratio = read_last / read_one
    checks = {
        "read_ratio_at_most_1.5": ratio <= 1.5,
        "data_files_at_most_2x_night_1": last["data_files"] <= 2 * first["data_files"],
        "json_after_checkpoint_at_most_100": last["json_after_checkpoint"] <= 100,
        "champion_read_at_most_2x": champ_last <= 2 * champ_one,
        "every_id_once_at_every_retained_version": len(retained) >= 2,  # each asserted above
    }
    write_result(
        "year_of_nights",
        ratio,
        f"seconds to read the latest version of the table after {NIGHTS} nights / after night 1 (a "
        f"one-night table built at the end, read interleaved; medians of {READS})",
        1.5,
        "lower",
        {"nights": NIGHTS, "shard_rows": SHARD_ROWS, "features": FEATURES, "keep_nights": KEEP_NIGHTS,
         "vacuum_retention_hours": RETENTION_HOURS, "vacuum_every": VACUUM_EVERY,
         "store": "moto S3 (own process)", "embed": "embed_corpus, incremental, in process"},
        baseline=read_one,
        checks=checks,
        all_met=all(checks.values()),
        read_seconds={"last": read_last, "one_night": read_one},
        champion_read_seconds={"record_last": champ_last, "record_1": champ_one},
        champion_read_ratio=champ_last / champ_one,
        night_1=first,
        night_last=last,
        one_night_table=one,
        retained_versions=retained,
        night_seconds={"first": night_s[0], "median": statistics.median(night_s),
                       "last_30_median": statistics.median(night_s[-30:])},
        total_seconds=total_s,
        files_vacuumed=sum(VACUUMED[:NIGHTS]),
    )  # fmt: skip


if __name__ == "__main__":
    main()
