"""`vae-nightly`: train -> evaluate -> register -> gate and promote -> embed -> generate, with artifacts.

The Prefect run is the driver: Ray Train and Ray Data jobs run inside ordinary tasks of the sub-flows.
The champion is read once, at the start; the candidate is gated against that record and promoted by
compare-and-swap on it, and the night embeds and generates with exactly one version: the promoted
candidate, else that champion (or `pipeline.model_version` when one is pinned). A candidate that
fails the gate is registered (for inspection) and the champion stays. When another run promoted
meanwhile, the candidate is not promoted and the night ends Failed with nothing embedded or generated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Completed, Failed, State

from flows.common import locations_markdown, metrics_rows, night, run_id
from flows.embed import embed_flow
from flows.evaluate import evaluate_flow, report_markdown
from flows.generate import generate_flow
from flows.tasks import (
    ensure_dataset,
    gate_and_promote,
    markdown_artifact,
    read_champion,
    register_model,
    resolve_model,
    table_artifact,
)
from flows.train import train_flow
from vae_core.config import VaeflowConfig
from vae_core.data.storage import join
from vae_core.operations.drift import DriftRecord
from vae_core.operations.pipeline import PipelineConfig
from vae_core.operations.registry import new_version, version_uri
from vae_core.training.model_report import METRICS_FILE, ModelReport
from vae_core.training.records import EpochRecord


@dataclass
class NightlyResult:
    night: str
    candidate: str  # the version trained tonight
    candidate_uri: str
    promoted: bool
    gate_reason: str
    champion: str | None  # the champion after tonight
    champion_uri: str | None
    model_version: str | None  # the version tonight's embeddings and samples come from
    report_uri: str | None  # tonight's candidate report (report.html in the registry)
    elbo: float  # the candidate's held-out ELBO, nats per row
    embeddings: dict[str, str] = field(default_factory=dict)  # split -> location
    embedded: dict[str, tuple[int, int]] = field(default_factory=dict)  # split -> (embedded, carried over)
    drift: DriftRecord | None = None  # None when nothing was embedded
    samples_uri: str | None = None

    def locations(self) -> dict[str, str | None]:
        return {
            "candidate model": self.candidate_uri,
            "champion model": self.champion_uri,
            "report": self.report_uri,
            **{f"embeddings ({split})": uri for split, uri in self.embeddings.items()},
            "samples": self.samples_uri,
        }


def _training_metrics(history: list[EpochRecord], init: float) -> dict[str, Any]:
    last = history[-1]
    return {
        "epochs": last.epoch,
        "val_elbo": last.val_elbo,
        "val_elbo_best": max(h.val_elbo for h in history if h.val_elbo is not None),
        "val_elbo_untrained": init,
    }


def _heldout_elbo(report: ModelReport) -> float:
    """The candidate's held-out ELBO for the summary; NaN when its report has none (the gate failed it)."""
    return math.nan if report.heldout_elbo is None else float(report.heldout_elbo)


def _night_artifacts(name: str, report_md: str, result: NightlyResult) -> None:
    markdown_artifact(f"{name}-report", report_md, f"nightly {result.night}")
    outputs = locations_markdown(f"Outputs {result.night}", result.locations())
    markdown_artifact(f"{name}-outputs", outputs, f"nightly {result.night}")


@flow(name="vae-nightly")
def nightly_flow(config: VaeflowConfig, pipeline: PipelineConfig, run_date: date | None = None) -> State:
    """One night: a new candidate model, the gate, and the night's embeddings and samples."""
    log = get_run_logger()
    day = night(run_date)
    version = new_version(day, run_id())
    ensure_dataset(config, pipeline.bootstrap)
    # Read once: the gate compares with this record, the promotion swaps it, the night serves it.
    options = config.data.storage_options  # task arguments: never stored by Prefect
    start = read_champion(pipeline.root, config.name, options)
    if pipeline.model_version is not None:  # a pinned version that does not exist fails before training
        resolve_model(pipeline.root, config.name, pipeline.model_version, options)

    if config.train.init_from == "champion":  # warm start: from the champion read above, if any
        init = version_uri(pipeline.root, config.name, start.version) if start else None
        log.info(
            f"warm start from champion {start.version}"
            if start
            else "no champion yet: training starts from random weights"
        )
        config = config.model_copy(update={"train": config.train.model_copy(update={"init_from": init})})
    trained = train_flow(config, day, run_name=f"{config.name}-{version}")
    report = evaluate_flow(
        trained.best_checkpoint_uri,
        join(config.train.runs_uri, trained.run_name, "report"),
        config.data.uri,
        pipeline.iwae_k,
        pipeline.max_eval_rows,
        config,
    )
    # The registered metrics.json: the evaluation report plus a summary of the training run.
    training = _training_metrics(trained.history, trained.val_elbo_init)
    metrics = ModelReport.from_dict({**report.report.to_dict(), "training": training})
    candidate = register_model(
        pipeline.root,
        config.name,
        version,
        trained.best_checkpoint_uri,
        metrics,
        report.metrics_uri.rsplit("/", 1)[0],
        {"run_date": day.isoformat(), "flow_run_id": run_id(), "train_run": trained.run_name},
        options,
    )
    decision = gate_and_promote(
        pipeline.root,
        config.name,
        candidate,
        start,
        pipeline.gate_margin,
        day.isoformat(),
        run_id(),
        options,
    )
    champion = decision.champion
    champion_uri = version_uri(pipeline.root, config.name, champion) if champion else None
    served = pipeline.model_version or (version if decision.promoted else decision.compared_with)

    table_artifact(
        f"{config.name}-metrics",
        metrics_rows(metrics, decision.champion_report),
        f"candidate {version} vs champion {decision.compared_with or '(none)'}",
    )
    title = f"Nightly report {day}: candidate {version}"
    registered_metrics = join(candidate.uri, METRICS_FILE)
    report_md = report_markdown(title, candidate.report_uri, registered_metrics, metrics) + (
        f"\n**Gate {'passed' if decision.passed else 'FAILED'}**: {decision.reason}\n\n"
        f"Champion: {champion or '(none)'}\n"
    )
    result = NightlyResult(
        night=day.isoformat(),
        candidate=version,
        candidate_uri=candidate.uri,
        report_uri=candidate.report_uri,
        elbo=_heldout_elbo(metrics),
        promoted=decision.promoted,
        gate_reason=decision.reason,
        champion=champion,
        champion_uri=champion_uri,
        model_version=served,
    )

    if decision.conflict:
        result.model_version = None
        _night_artifacts(config.name, report_md, result)
        return Failed(
            message=f"candidate {version} passed the gate against champion "
            f"{decision.compared_with or '(none)'} but was not promoted: {champion} was promoted "
            "meanwhile by another run, so nothing was embedded or generated",
            data=result,
        )
    if served is None:
        _night_artifacts(config.name, report_md, result)
        return Failed(
            message=f"candidate {version} rejected: {decision.reason}; there is no champion yet, "
            "so nothing was embedded or generated",
            data=result,
        )

    # Both sub-flows get the one version decided above, never a second champion lookup.
    tonight = pipeline.model_copy(update={"model_version": served})
    embedded = embed_flow(config, tonight, day)
    generated = generate_flow(config, tonight, day)
    result.embeddings = {split: o.uri for split, o in embedded.outputs.items()}
    result.embedded = {split: (o.embedded, o.carried) for split, o in embedded.outputs.items()}
    result.drift = embedded.drift
    result.samples_uri = generated.output.uri

    drift = embedded.drift.verdict
    report_md += (
        f"\n**Latent drift {'ALERT' if drift.alert else 'ok'}**: {'; '.join(drift.reasons)} "
        f"(KL to N(0, I) {drift.kl_prior:.2f} nats)\n"
    )
    _night_artifacts(config.name, report_md, result)
    for split, (rows, carried) in result.embedded.items():
        log.info(f"embeddings ({split}): {rows:,} rows embedded, {carried:,} carried over")

    parts = [
        f"promoted {version}"
        if decision.promoted
        else f"candidate {version} rejected: {decision.reason}; champion stays {champion}"
    ]
    if drift.alert:
        parts.append(f"latent drift alert: {'; '.join(drift.reasons)}")
    return Completed(message="; ".join(parts), data=result)
