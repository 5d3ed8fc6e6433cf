"""TabularARGN with MOSTLY AI's open-source engine (PyPI `mostlyai-engine`, Apache 2.0), its defaults:
fit on a Parquet table, write as many synthetic rows as asked. Run by bench.adult_vs_peers with the
engine's own venv (`make argn`: its pins differ from the project's), so this file imports nothing of
vaeflow.

Usage: python bench/argn_fit.py TRAIN_PARQUET OUT_PARQUET ROWS SEED WORKSPACE
Prints one JSON line: the seconds of each phase.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
from mostlyai import engine


def main(train: str, out: str, rows: int, seed: int, workspace: str) -> None:
    df = pd.read_parquet(train)
    ws = Path(workspace)
    shutil.rmtree(ws, ignore_errors=True)
    engine.init_logging()
    engine.set_random_state(seed)
    t0 = time.perf_counter()
    engine.split(tgt_data=df, workspace_dir=ws)  # its own training / validation split
    engine.analyze(workspace_dir=ws)
    engine.encode(workspace_dir=ws)
    prepare_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine.train(workspace_dir=ws)  # defaults: model MOSTLY_AI/Medium, early stopping on its validation
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine.generate(workspace_dir=ws, sample_size=rows)
    generate_s = time.perf_counter() - t0
    synthetic = pd.read_parquet(ws / "SyntheticData")
    synthetic.to_parquet(out, index=False)
    times = {"prepare_s": prepare_s, "train_s": train_s, "generate_s": generate_s, "rows": len(synthetic)}
    print(json.dumps(times), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
