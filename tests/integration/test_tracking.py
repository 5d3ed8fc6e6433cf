"""MLflow tracking against a real MLflow server (SQLite backend, artifacts on local disk) on 127.0.0.1:
a Ray training run logs its parameters and one metric point per epoch, and `vaeflow report` on its
checkpoint logs report.html into the same run."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import free_port, wait_healthy
from vae_core.config import VaeflowConfig
from vae_core.data.importers import ShardWriter
from vae_core.data.objects import read_json
from vae_core.data.packaged import mnist_table

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

EPOCHS = 3


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` from its own venv (.venv/mlflow-server, made by `make test`), SQLite backend."""
    exe = Path(sys.prefix) / "mlflow-server" / "bin" / "mlflow"
    assert exe.exists(), f"{exe} is missing: `make test` installs the MLflow server there"
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = open(root / "server.log", "wb")  # closed below, after the server
    cmd = [str(exe), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    cmd += ["--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "a")]
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(f"{url}/health", server, f"mlflow server (log: {root / 'server.log'})")
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _small_mnist(root: Path) -> str:
    train, test = mnist_table("train"), mnist_table("test", id_offset=60_000)
    ShardWriter(str(root / "train"), rows_per_shard=500).write_all([train.slice(0, 1_000)])
    ShardWriter(str(root / "test"), rows_per_shard=200).write_all([test.slice(0, 200)])
    return str(root)


def test_a_training_run_logs_params_every_epoch_and_its_report_to_mlflow(
    ray_local, mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    from flows.cli import main
    from vae_core.distributed.trainer import train_on_ray
    from vae_core.operations.tracking import RUN_ID_KEY, RUN_TAG

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    cfg = VaeflowConfig.model_validate(
        {
            "name": "tracked-mnist",
            "data": {"uri": _small_mnist(tmp_path / "data"), "vector_column": "image", "scale": 255},
            "model": {"family": "vae", "hidden": [64], "latent_dim": 4},
            "train": {"epochs": EPOCHS, "batch_size": 100, "runs_uri": str(tmp_path / "runs")},
            "compute": {"num_workers": 1, "cpus_per_worker": 1, "data_cpus": 1},
        }
    )
    lines: list[str] = []
    result = train_on_ray(cfg, run_name="tracked", progress=lines.append)
    assert main(["report", "--model", result.checkpoint_uri, "--iwae-k", "5", "--max-rows", "100"]) == 0

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("tracked-mnist")
    (run,) = client.search_runs([experiment.experiment_id])
    run_id = run.info.run_id
    assert run.data.tags[RUN_TAG] == "tracked" and run.info.status == "FINISHED"
    assert run.data.tags["vaeflow.checkpoint"] == result.checkpoint_uri
    assert f"tracking in MLflow at {mlflow_server} as run {run_id}" in lines
    # Parameters: the config's settings as dotted keys.
    params = run.data.params
    assert params["model.latent_dim"] == "4" and params["train.epochs"] == "3"
    assert params["data.vector_column"] == "image" and params["model.hidden"] == "[64]"
    # One point per epoch, at step = the epoch, equal to what the trainer recorded.
    for name in ("val_elbo", "loss", "kl", "samples_per_s"):
        points = client.get_metric_history(run_id, name)
        assert [p.step for p in points] == [1, 2, 3], name
    val = [p.value for p in client.get_metric_history(run_id, "val_elbo")]
    assert val == pytest.approx([h.val_elbo for h in result.history])
    # The checkpoint names its run; the report landed in it.
    assert read_json(f"{result.checkpoint_uri}/meta.json")[RUN_ID_KEY] == run_id
    artifacts = {a.path for a in client.list_artifacts(run_id, "report")}
    assert artifacts == {"report/report.html", "report/metrics.json"}
    html = Path(client.download_artifacts(run_id, "report/report.html", str(tmp_path)))
    assert html.stat().st_size > 10_000 and b"<html" in html.read_bytes()[:2000].lower()
