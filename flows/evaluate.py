"""`vae-evaluate`: the evaluation report (ELBO, IWAE, active units, plots) of one model."""

from __future__ import annotations

from prefect import flow

from flows.common import link, metrics_rows
from flows.tasks import markdown_artifact, table_artifact, write_model_report
from vae_core.config import VaeflowConfig
from vae_core.reports.report import ReportResult
from vae_core.training.model_report import ModelReport


def report_markdown(title: str, html_uri: str | None, metrics_uri: str, report: ModelReport) -> str:
    lines = [f"# {title}", "", f"- report: {link(html_uri)}", f"- metrics: {link(metrics_uri)}", ""]
    if report.test is not None:
        test = report.test
        lines.append(
            f"Held-out ELBO **{test.elbo:.2f}** nats per row (recon {test.recon:.2f}, "
            f"KL {test.kl:.2f}) on {test.n:,} rows."
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
) -> ReportResult:
    """Write report.html and metrics.json for the model at `model_uri` under `out_uri`.

    `config` (optional) carries `data.storage_options` to every read and write; as a flow parameter
    it is stored redacted, so a deployed run takes credentials from its environment instead.
    """
    options = config.data.storage_options if config else None
    report = write_model_report(model_uri, out_uri, data_uri, iwae_k, max_eval_rows, options)
    table_artifact("vae-evaluate-metrics", metrics_rows(report.report), f"metrics of {model_uri}")
    markdown = report_markdown("Evaluation report", report.html_uri, report.metrics_uri, report.report)
    markdown_artifact("vae-evaluate-report", markdown, model_uri)
    return report
