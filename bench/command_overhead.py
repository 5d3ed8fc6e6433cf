"""Fixed cost of a short command: wall seconds of `vaeflow train` for 1 epoch on 2,000 MNIST rows
(local Parquet), the command starting its own local Ray cluster, median of 3 runs.

Each run's output lines are timestamped as they arrive, which splits the wall time into phases:
start-up with the codec fit beside the cluster start and, once the cluster is up, Ray Train's start (the
"fitted" line comes once the fit and the cluster start are done), the run record, the Ray Train run up
to its first epoch line (its workers waited for the fitted codec), and the rest (checkpoint, result,
shutdown).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._results import write_result
from vae_core.data.importers import ShardWriter
from vae_core.data.packaged import mnist_table

TRAIN_ROWS, TEST_ROWS, RUNS = 2000, 500, 3
VAEFLOW = str(Path(sys.executable).with_name("vaeflow"))
# Phase ends, each the first output line starting with its marker.
MARKS = {"codec_fitted": "fitted the ", "cluster_up": "training ", "epoch_1_done": "epoch 1/1"}


def write_data(root: Path) -> None:
    table = mnist_table("train")
    for split, start, n in (("train", 0, TRAIN_ROWS), ("test", TRAIN_ROWS, TEST_ROWS)):
        writer = ShardWriter(str(root / split), rows_per_shard=1000)
        writer.add(table.slice(start, n))
        writer.close()


def run_once(config: Path, name: str) -> dict:
    """One `vaeflow train`, its wall seconds and when each phase's line appeared."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [VAEFLOW, "train", "--config", str(config), "--run-name", name],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    seen: dict[str, float] = {}
    lines = 0
    assert proc.stdout is not None
    for line in proc.stdout:
        lines += 1
        text = line.split("[vaeflow] ", 1)[-1]
        for mark, prefix in MARKS.items():
            if mark not in seen and text.startswith(prefix):
                seen[mark] = time.perf_counter() - t0
    if proc.wait() != 0:
        raise RuntimeError(f"vaeflow train exited {proc.returncode}")
    return {"wall_seconds": time.perf_counter() - t0, "lines": lines, "at": seen}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="vaeflow-overhead-") as d:
        root = Path(d)
        write_data(root / "data")
        config = root / "config.json"
        config.write_text(
            json.dumps(
                {
                    "name": "overhead",
                    "data": {"uri": str(root / "data"), "vector_column": "image", "scale": 255},
                    "train": {"epochs": 1, "runs_uri": str(root / "runs")},
                }
            )
        )
        runs = [run_once(config, f"run-{i}") for i in range(RUNS)]
    for r in runs:
        print(f"  vaeflow train: {r['wall_seconds']:.1f}s, phases at {r['at']}", flush=True)
    median = statistics.median(r["wall_seconds"] for r in runs)
    typical = sorted(runs, key=lambda r: r["wall_seconds"])[RUNS // 2]
    at = typical["at"]
    phases = {
        "start_codec_fit_and_cluster_start": at.get("codec_fitted"),
        "run_record": at["cluster_up"] - at["codec_fitted"] if "codec_fitted" in at else None,
        "train_run_to_epoch_1": at["epoch_1_done"] - at["cluster_up"] if len(at) == 3 else None,
        "checkpoint_result_shutdown": typical["wall_seconds"] - at["epoch_1_done"]
        if "epoch_1_done" in at
        else None,
    }
    write_result(
        "command_overhead",
        value=median,
        unit="seconds: wall time of `vaeflow train` (1 epoch, 2,000 rows, own local cluster), median of 3",
        target=25,
        better="lower",
        setting={
            "train_rows": TRAIN_ROWS,
            "val_rows": TEST_ROWS,
            "epochs": 1,
            "storage": "local Parquet",
            "runs": RUNS,
        },
        runs=runs,
        median_run_phases_seconds=phases,
    )


if __name__ == "__main__":
    main()
