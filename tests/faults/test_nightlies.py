"""Two nightlies at once on one root: the champion moves at most once and each output has one writer.

Two `vaeflow run` processes start together on the same root and night, each with its own local Ray
cluster and its own ephemeral Prefect API (nothing serializes them, unlike the deployment's
concurrency limit). Both read "no champion" at their start and both candidates pass the gate; the
champion series' create-only record decides: one promotion lands, the other run ends Failed
before it embeds or generates anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import fsspec
import pytest

from tests.faults._helpers import ROOT, finish, write_dataset
from vae_core.data.tables import history, read_table
from vae_core.operations.registry import champion_record, champion_uri, list_versions

pytestmark = [pytest.mark.faults, pytest.mark.timeout(420)]

NAME = "race"


def _config(root: Path) -> Path:
    config = {
        "name": NAME,
        "data": {"uri": str(root / "data"), "vector_column": "x"},
        "model": {"family": "vae", "hidden": [32], "latent_dim": 4},
        "train": {"epochs": 1, "batch_size": 64, "runs_uri": str(root / "runs")},
        "compute": {"num_workers": 1, "cpus_per_worker": 1, "data_cpus": 1, "torch_threads": 1},
    }
    path = root / "race.json"
    path.write_text(json.dumps(config))
    return path


def _launch(root: Path, config: Path, i: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PREFECT_"))}
    env["PREFECT_HOME"] = str(root / f"prefect-{i}")  # two ephemeral APIs, one SQLite file each
    env["VAEFLOW_RAY_TMPDIR"] = tempfile.mkdtemp(prefix=f"vf-race{i}-", dir="/tmp")  # two clusters
    exe = Path(sys.executable).with_name("vaeflow")
    overrides = [
        "pipeline.iwae_k=10",
        "pipeline.max_eval_rows=200",
        "generate.rows=100",
        'pipeline.embed_splits=["test"]',
        "embed.passthrough=[]",
    ]
    return subprocess.Popen(
        [str(exe), "run", "--root", str(root), "--config", str(config), "--date", "2026-03-01", *overrides],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env=env,
    )


@pytest.mark.scenario(8, "two nightlies at once on one root -> one writer per output, champion moves once")
def test_two_nightlies_at_once_move_the_champion_once_and_write_each_output_once(tmp_path, scenario):
    root = tmp_path / "root"
    write_dataset(fsspec.filesystem("file"), str(root / "data"), train_rows=1_200, test_rows=300, shards=2)
    config = _config(root)
    runs = [_launch(root, config, i) for i in (1, 2)]
    results = [finish(p, timeout=360) for p in runs]
    outputs = "\n----\n".join(out[-3000:] for _, out in results)
    codes = sorted(rc for rc, _ in results)
    assert None not in codes, f"a nightly hung:\n{outputs}"
    assert codes == [0, 1], f"expected one promoting run and one refused run, got {codes}:\n{outputs}"
    loser = next(out for rc, out in results if rc == 1)
    assert "promoted meanwhile" in loser or "champion moved" in loser, loser[-3000:]

    registry_root = str(root)
    records = sorted(p.name for p in Path(champion_uri(registry_root, NAME)).iterdir())
    assert records == ["0000000000.json"], f"the champion moved {len(records)} times: {records}"
    winner = champion_record(registry_root, NAME)
    assert len(list_versions(registry_root, NAME)) == 2  # both candidates registered for inspection

    for table in (root / "embeddings" / NAME / "test", root / "samples" / NAME):
        commits = [record for _, record in history(str(table)) if record is not None]
        assert len(commits) == 1, f"{table}: {len(commits)} writers"
        assert winner.version in commits[0].model["uri"], (commits[0].model, winner.version)
    ids = read_table(str(root / "embeddings" / NAME / "test")).column("id").to_pylist()
    scenario.rows_lost = 300 - len(set(ids))
    scenario.rows_duplicated = len(ids) - len(set(ids))
    assert scenario.rows_lost == 0 and scenario.rows_duplicated == 0
