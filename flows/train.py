"""`vae-train`: fit the configured model with Ray Train; the checkpoint stays under train.runs_uri."""

from __future__ import annotations

from datetime import date

from prefect import flow

from flows.common import night, run_id
from flows.tasks import TrainSummary, table_artifact, train_model
from vae_core.config import VaeflowConfig
from vae_core.operations.registry import new_version

HISTORY_COLUMNS = ("epoch", "loss", "recon", "kl", "val_elbo", "samples_per_s", "seconds")


@flow(name="vae-train")
def train_flow(
    config: VaeflowConfig, run_date: date | None = None, run_name: str | None = None
) -> TrainSummary:
    """Train with Ray Train. The run name defaults to <name>-<date>-<run id>; a given name that has a
    run resumes it (its data/model/train settings must match; train.epochs may grow to extend it)."""
    name = run_name or f"{config.name}-{new_version(night(run_date), run_id())}"
    summary = train_model(config, name)
    rows = [{k: getattr(h, k) for k in HISTORY_COLUMNS} for h in summary.history]
    table_artifact(f"{config.name}-training", rows, f"Ray Train run {name}: one row per epoch")
    return summary
