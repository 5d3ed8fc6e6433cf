"""`vae-embed`: embed the corpus with the champion (or a given version) and check the latent drift."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from prefect import flow

from flows.common import locations_markdown, night
from flows.tasks import (
    Output,
    embed_split,
    maintain_table,
    markdown_artifact,
    record_drift,
    resolve_model,
    table_artifact,
)
from vae_core.config import VaeflowConfig
from vae_core.data.storage import join
from vae_core.operations.drift import DriftRecord
from vae_core.operations.pipeline import PipelineConfig, drift_uri, embeddings_uri


@dataclass
class EmbedResult:
    model_version: str
    outputs: dict[str, Output]  # split -> published embeddings
    drift: DriftRecord  # what drift.json holds


def drift_markdown(drift: DriftRecord) -> str:
    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    v = drift.verdict
    return (
        f"# Latent drift {drift.night}: {'**ALERT**' if v.alert else 'ok'}\n\n"
        f"Model {drift.model_version}, {drift.stats.count:,} rows; previous night "
        f"{drift.previous_night or '-'} (model {drift.previous_model_version or '-'}).\n\n"
        "| measure | nats |\n|---|---|\n"
        f"| KL(tonight ‖ N(0, I)) | {num(v.kl_prior)} |\n"
        f"| change since the previous night | {num(v.prior_change)} |\n"
        f"| KL(tonight ‖ previous night) | {num(v.kl_previous)} |\n"
        f"| threshold | {v.threshold:g} |\n\n" + "\n".join(f"- {r}" for r in v.reasons) + "\n"
    )


@flow(name="vae-embed")
def embed_flow(config: VaeflowConfig, pipeline: PipelineConfig, run_date: date | None = None) -> EmbedResult:
    """Embed each split of the corpus as tonight's version of the Delta table
    <root>/embeddings/<name>/<split>/ (then maintain it: compaction, checkpoints, VACUUM keeping
    pipeline.keep_nights nights) and record the latent drift under <root>/drift/<name>/<date>/."""
    day = night(run_date)
    model = resolve_model(pipeline.root, config.name, pipeline.model_version, config.data.storage_options)
    corpus = pipeline.embed_uri or config.data.uri
    outputs = {
        split: embed_split(
            model.uri,
            join(corpus, split),
            embeddings_uri(pipeline.root, config.name, split),
            config,
            day.isoformat(),
        )
        for split in pipeline.embed_splits
    }
    for out in outputs.values():
        maintain_table(out.uri, pipeline.keep_nights, pipeline.vacuum_every, config.data.storage_options)
    drift = record_drift(
        drift_uri(pipeline.root, config.name, day),
        drift_uri(pipeline.root, config.name),
        day,
        model,
        outputs,
        pipeline.drift_threshold,
        config.data.storage_options,
    )
    rows = [
        {
            "split": s,
            "rows": o.rows,
            "embedded": o.embedded,
            "carried over": o.carried,
            "version": o.version,
            "table": o.uri,
        }
        for s, o in outputs.items()
    ]
    table_artifact(f"{config.name}-embeddings", rows, f"embeddings by {model.version} for {day}")
    markdown_artifact(f"{config.name}-drift", drift_markdown(drift), f"latent drift for {day}")
    markdown_artifact(
        f"{config.name}-embed-outputs",
        locations_markdown(f"Embeddings {day}", {s: o.uri for s, o in outputs.items()}),
        "output locations",
    )
    return EmbedResult(model.version, outputs, drift)
