"""Experiment tracking in MLflow when MLFLOW_TRACKING_URI is set: a training run's parameters, one
metric point per epoch, and the model's report as artifacts. Nothing is tracked without the variable.

One vaeflow training run is one MLflow run in the experiment named after the config (`name`), tagged
`vaeflow.run_name`: a relaunch that resumes the training run continues the same MLflow run. The
MLflow run id is recorded in every checkpoint's meta (`extra["mlflow_run_id"]`), so a report written
later on that checkpoint, or on its copy in the registry, lands in the run that trained it.

The client talks to the server over HTTP (`mlflow-skinny`, the `tracking` extra); credentials for it
come from MLflow's own environment (MLFLOW_TRACKING_TOKEN, ...). Parameters are the config as
`vaeflow config` prints it: storage secrets redacted.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from vae_core.config import VaeflowConfig
from vae_core.data.objects import read_json
from vae_core.data.storage import filesystem, join
from vae_core.training.checkpoints import META_FILE
from vae_core.training.records import EpochRecord, Record

ENV = "MLFLOW_TRACKING_URI"
RUN_TAG = "vaeflow.run_name"
RUN_ID_KEY = "mlflow_run_id"  # in CheckpointMeta.extra
REPORT_FILES = ("report.html", "metrics.json")


def enabled() -> bool:
    return bool(os.environ.get(ENV))


def _client() -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=os.environ[ENV])


def _leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            yield from _leaves(v, f"{prefix}{k}.")
    else:
        yield prefix.rstrip("."), value


def config_params(cfg: VaeflowConfig) -> dict[str, str]:
    """The config's settings as MLflow parameters: dotted keys, JSON values, secrets redacted."""
    return {k: json.dumps(v) if not isinstance(v, str) else v for k, v in _leaves(json.loads(cfg.to_json()))}


class TrainingRun:
    """The MLflow run of one vaeflow training run (`start`), fed one record per epoch (`record`)."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    @classmethod
    def start(cls, cfg: VaeflowConfig, run_name: str) -> TrainingRun:
        """The run tagged `run_name` in experiment `cfg.name` (created with the config's parameters
        when there is none; a resumed training run finds its own)."""
        from mlflow.entities import Param

        client = _client()
        experiment = client.get_experiment_by_name(cfg.name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(cfg.name)
        found = client.search_runs([experiment_id], f"tags.`{RUN_TAG}` = '{run_name}'", max_results=1)
        if found:
            client.update_run(found[0].info.run_id, status="RUNNING")
            return cls(client, found[0].info.run_id)
        run = client.create_run(experiment_id, run_name=run_name, tags={RUN_TAG: run_name})
        params = [Param(k, v[:6000]) for k, v in config_params(cfg).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters a call
            client.log_batch(run.info.run_id, params=params[i : i + 100])
        return cls(client, run.info.run_id)

    def record(self, record: Record) -> None:
        """An epoch record of the trainer: one point per metric, at step = the epoch."""
        from mlflow.entities import Metric

        if not isinstance(record, EpochRecord):
            return
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, record.epoch) for k, v in record.metrics().items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def end(self, ok: bool, checkpoint_uri: str | None = None) -> None:
        """Mark the run finished (tagged with its latest checkpoint) or failed; best effort: a server
        gone since the start does not turn a finished training run into a failed one."""
        with contextlib.suppress(Exception):
            if checkpoint_uri:
                self.client.set_tag(self.run_id, "vaeflow.checkpoint", checkpoint_uri)
            self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


def log_report(model_uri: str, report_uri: str, storage_options: dict[str, Any] | None = None) -> str | None:
    """Log report.html and metrics.json under `report_uri` as artifacts (folder `report`) of the MLflow
    run that trained the checkpoint at `model_uri`; returns the run id, None when tracking is off or
    the checkpoint was trained without it."""
    if not enabled():
        return None
    run_id = (read_json(join(model_uri, META_FILE), storage_options) or {}).get(RUN_ID_KEY)
    if not run_id:
        return None
    client = _client()
    with tempfile.TemporaryDirectory(prefix="vaeflow-report-") as d:
        for name in REPORT_FILES:
            fs, path = filesystem(join(report_uri, name), storage_options)
            if fs.exists(path):
                fs.get(path, os.path.join(d, name))
                client.log_artifact(run_id, os.path.join(d, name), artifact_path="report")
    return run_id
