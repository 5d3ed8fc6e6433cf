"""`vae-evaluate`: the evaluation report (ELBO, IWAE, active units, plots) of one model."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import link, metrics_rows
from flows.tasks import markdown_artifact, table_artifact, write_model_report
from vae_core.config import VaeflowConfig


def report_markdown(title: str, report: dict[str, Any]) -> str:
    m = report["metrics"]
    test = m.get("test", {})
    lines = [
        f"# {title}",
        "",
        f"- report: {link(report['html_uri'])}",
        f"- metrics: {link(report['metrics_uri'])}",
        "",
    ]
    if test:
        lines.append(
            f"Held-out ELBO **{test['elbo']:.2f}** nats per row (recon {test['recon']:.2f}, "
            f"KL {test['kl']:.2f}) on {test['n']:,} rows."
        )
    return "\n".join(lines) + "\n"


@flow(name="vae-evaluate")
def evaluate_flow(
    model_uri: str,
    out_uri: str,
    data_uri: str | None = None,
    iwae_k: int = 1000,
    max_eval_rows: int | None = None,
    config: VaeflowConfig | None = None,
) -> dict[str, Any]:
    """Write report.html and metrics.json for the model at `model_uri` under `out_uri`.

    `config` (optional) carries `data.storage_options` to every read and write; as a flow parameter
    it is stored redacted, so a deployed run takes credentials from its environment instead.
    """
    options = config.data.storage_options if config else None
    report = write_model_report(model_uri, out_uri, data_uri, iwae_k, max_eval_rows, options)
    table_artifact("vae-evaluate-metrics", metrics_rows(report["metrics"]), f"metrics of {model_uri}")
    markdown_artifact("vae-evaluate-report", report_markdown("Evaluation report", report), model_uri)
    return report
