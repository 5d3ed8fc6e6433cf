"""`vae-generate`: synthetic rows in the training schema from the champion (or a given version)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from prefect import flow

from flows.common import locations_markdown, night
from flows.tasks import Output, generate_samples, maintain_table, markdown_artifact, resolve_model
from vae_core.config import VaeflowConfig
from vae_core.operations.pipeline import PipelineConfig, samples_uri


@dataclass
class GenerateResult:
    model_version: str
    output: Output


@flow(name="vae-generate")
def generate_flow(
    config: VaeflowConfig, pipeline: PipelineConfig, run_date: date | None = None
) -> GenerateResult:
    """Decode `config.generate.rows` draws from N(0, I) as tonight's version of the Delta table
    <root>/samples/<name>/, then maintain it (flows.tasks.maintain_table)."""
    day = night(run_date)
    model = resolve_model(pipeline.root, config.name, pipeline.model_version, config.data.storage_options)
    out = generate_samples(model.uri, samples_uri(pipeline.root, config.name), config, day.isoformat())
    maintain_table(out.uri, pipeline.keep_nights, pipeline.vacuum_every, config.data.storage_options)
    markdown_artifact(
        f"{config.name}-samples",
        locations_markdown(
            f"Samples {day} ({out.rows:,} rows, model {model.version}, table version {out.version})",
            {"samples": out.uri},
        ),
        "output locations",
    )
    return GenerateResult(model.version, out)
