"""Tabular transformer fit over >= 2M rows in >= 40 shards: peak RSS must stay <= 1.5 GB.

The rows are Adult train rows resampled with jittered integers (real marginals, 2M rows), written
shard by shard to a temporary folder. The fit runs in a fresh subprocess so its peak RSS is its own;
for scale, the same subprocess measurement is taken for pq.read_table of the whole dataset.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench._results import write_result
from vae_core.data.importers import read_adult

ROWS_PER_SHARD, SHARDS = 50_000, 40
JITTER = {"age": 2, "fnlwgt": 5000, "hours_per_week": 3}


def make_data(folder: Path, seed: int = 0) -> None:
    adult = read_adult("train")
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(SHARDS):
        idx = rng.integers(0, adult.num_rows, ROWS_PER_SHARD)
        shard = adult.take(pa.array(idx))
        for name, amount in JITTER.items():
            col = shard.column(name).to_numpy() + rng.integers(-amount, amount + 1, ROWS_PER_SHARD)
            shard = shard.set_column(shard.column_names.index(name), name, pa.array(np.maximum(col, 1)))
        ids = pa.array(np.arange(i * ROWS_PER_SHARD, (i + 1) * ROWS_PER_SHARD, dtype=np.int64))
        pq.write_table(shard.add_column(0, "id", ids), folder / f"part-{i:05d}.parquet")


FIT = """
import json, resource, sys, time
from vae_core.config import DataConfig
from vae_core.data.dataset import count_rows, iter_batches, open_dataset
from vae_core.data.tabular import TabularTransformer
t0 = time.perf_counter()
shards, schema, spec = open_dataset(DataConfig(uri=sys.argv[1]))
tr = TabularTransformer.fit(
    (b for _, b in iter_batches(shards, spec.feature_columns)), spec.continuous, spec.categorical, schema
)
print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - t0, "rows": count_rows(shards),
                  "shards": len(shards), "dim": tr.dim}))
"""

LOAD_ALL = """
import json, resource, sys
import pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rows": t.num_rows}))
"""


def _run(code: str, folder: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code, str(folder)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "adult2m"
        t0 = time.perf_counter()
        make_data(folder)
        print(
            f"  wrote {SHARDS} shards x {ROWS_PER_SHARD:,} rows in {time.perf_counter() - t0:.0f}s",
            flush=True,
        )
        fit = _run(FIT, folder)
        whole = _run(LOAD_ALL, folder)
    write_result(
        "tabular_fit_memory",
        value=fit["rss_mb"],
        unit="MB peak RSS (fit subprocess)",
        target=1536.0,
        better="lower",
        setting={
            "rows": fit["rows"],
            "shards": fit["shards"],
            "source": "Adult train resampled + jitter",
            "storage": "local folder",
            "columns": 15,
        },
        fit_seconds=fit["seconds"],
        feature_dim=fit["dim"],
        reference_rss_mb_read_whole_table=whole["rss_mb"],
    )


if __name__ == "__main__":
    main()
