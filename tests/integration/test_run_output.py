"""`vaeflow run` as a person sees it: a short terminal transcript, no Ray noise, the summary last."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest

from tests.faults._helpers import write_dataset

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(420)]


def test_vaeflow_run_prints_its_own_lines_and_ends_with_the_summary(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_dataset(fsspec.filesystem("file"), str(root / "data"), train_rows=1_000, test_rows=200, shards=2)
    config = {
        "name": "quiet",
        "data": {"uri": str(root / "data"), "vector_column": "x"},
        "model": {"family": "vae", "hidden": [32], "latent_dim": 4},
        "train": {"epochs": 2, "batch_size": 100, "runs_uri": str(root / "runs")},
        "compute": {"num_workers": 1, "cpus_per_worker": 1, "data_cpus": 1, "torch_threads": 1},
    }
    (tmp_path / "quiet.json").write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PREFECT_", "MLFLOW_"))}
    env["PREFECT_HOME"] = str(root / "prefect")
    exe = Path(sys.executable).with_name("vaeflow")
    overrides = [
        "pipeline.iwae_k=10",
        "pipeline.max_eval_rows=100",
        "generate.rows=100",
        "embed.passthrough=[]",
    ]
    cmd = [str(exe), "run", "--root", str(root), "--config", str(tmp_path / "quiet.json"), *overrides]
    # stdout and stderr in one pipe, in the order a terminal shows them.
    done = subprocess.run(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=400, check=False
    )
    out = done.stdout
    assert done.returncode == 0, out[-4000:]
    lines = out.strip().splitlines()
    assert len(lines) <= 40, f"{len(lines)} lines:\n{out}"
    assert "PlacementGroupCleaner" not in out and "Failed to query" not in out, out
    assert "TrainingReport" not in out and "Finished in state Completed(" not in out, out
    epochs = [line for line in lines if " - epoch " in line]
    assert [line.split(" - epoch ")[1].split()[0] for line in epochs] == ["1/2", "2/2"], out
    # The summary closes the transcript: its heading, then only its indented lines.
    start = max(i for i, line in enumerate(lines) if line.startswith("vae-nightly "))
    assert "finished in" in lines[start] and len(lines) - start >= 8, out
    assert all(line.startswith("  ") for line in lines[start + 1 :]), out
    assert any(
        "embeddings" in line and "1,000 rows embedded, 0 carried over" in line for line in lines[start:]
    )
