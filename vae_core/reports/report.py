"""The evaluation report of one model: metrics.json (a vae_core.training.model_report.ModelReport,
whose docstring lists its keys) plus one self-contained HTML page.

`write_report` evaluates one checkpoint on a dataset's test split: the numbers come from
reports.metrics, the captioned figures from reports.sections, the page from reports.html. The beta
study has its own report (reports.study).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vae_core.config import DataConfig
from vae_core.data.dataset import open_dataset
from vae_core.data.storage import join
from vae_core.errors import ConfigError
from vae_core.models.families import DataShape, likelihood_name
from vae_core.progress import Progress, quiet
from vae_core.reports import plots
from vae_core.reports.html import render_html, write_page
from vae_core.reports.metrics import LatentScores, sample_quality, score_model
from vae_core.reports.sections import Section, image_sections, quality_sections, section
from vae_core.reports.splits import EVAL_ROWS, default_label_column, read_split
from vae_core.reports.verdict import verdict
from vae_core.training.checkpoints import load_checkpoint
from vae_core.training.model_report import DataInfo, ModelInfo, ModelReport, save_model_report


@dataclass
class ReportResult:
    html_uri: str
    metrics_uri: str
    report: ModelReport  # what metrics.json holds


def write_report(
    model_uri: str,
    out_uri: str,
    data_uri: str | None = None,
    *,
    max_eval_rows: int | None = EVAL_ROWS,
    label_column: str | None = None,
    target_column: str | None = None,
    iwae_k: int = 1000,
    seed: int = 0,
    latent_scale: float = 1.0,
    progress: Progress = quiet,
    storage_options: dict[str, Any] | None = None,
) -> ReportResult:
    """Evaluate the checkpoint at model_uri on data_uri (default: its config's data.uri) and write
    out_uri/report.html and out_uri/metrics.json (a ModelReport; its keys: training.model_report).

    The rows: max_eval_rows caps the rows read per split (test, and train for the synthetic quality
    of table columns): a larger split gives a uniform random sample of that many rows, drawn with
    `seed` (splits.read_split), and the page says which; None reads every row.
    label_column colours the latent scatter (default: 'label' if the data have it, else the last
    categorical feature); target_column is the ML-efficacy target among the categorical
    columns (default: the same column). The evaluation: the IWAE bound takes iwae_k samples per row;
    seed fixes every sample drawn; the sampled rows draw z at `latent_scale`, as `vaeflow generate
    --latent-scale` does.

    storage_options open the checkpoint, the data and the output. Without them the checkpoint is
    opened with the environment's credentials and the data with the checkpoint config's options,
    which config.json stores redacted: options that held secrets must be passed again.
    """
    ck = load_checkpoint(model_uri, storage_options=storage_options)
    cfg, codec, model = ck.config, ck.codec, ck.model.eval()
    data = _data_config(cfg.data, data_uri, storage_options, model_uri)
    _, schema, spec = open_dataset(data, "test")
    label = label_column or default_label_column(spec, schema)
    test = read_split(data, "test", codec, label, max_eval_rows, seed)
    iwae = f", importance-weighted bound with k = {iwae_k}" if model.is_variational else ""
    progress(f"evaluating on test rows of {data.uri}: {test.sampling}{iwae}")
    scores = score_model(model, test.x, iwae_k, seed, progress)
    history = [r.to_dict() for r in ck.meta.history]
    figures = _latent_sections(cfg.name, history, scores, test.labels, label)
    if codec.image_shape is not None:  # x are images: show samples, reconstructions, interpolations
        figures += image_sections({cfg.name: model}, test.x, test.labels, codec.image_shape)
    data_info: dict[str, Any] = {
        "uri": data.uri,
        "test_rows": len(test.x),
        "test_rows_in_split": test.rows_in_split,
        "label_column": label,
        "sampling": {"test": test.sampling},
    }
    found: dict[str, Any] = {"history": history} if history else {}
    # Sampled rows can be compared with real ones column by column where the data have table columns
    # (continuous, categorical); a vector column (pixels, embeddings) has none.
    if spec.continuous or spec.categorical:
        target = target_column or label
        train = read_split(data, "train", codec, None, max_eval_rows, seed)
        progress(f"real training rows to compare with: {train.sampling}")
        quality, synthetic = sample_quality(
            model,
            codec,
            spec,
            train,
            test,
            target if target in spec.categorical else None,
            seed,
            progress,
            ck.sampler,
            latent_scale,
        )
        found["synthetic_quality"] = quality
        data_info["train_rows"] = quality["rows"]["real_train"]
        data_info["train_rows_in_split"] = train.rows_in_split
        data_info["sampling"]["train"] = train.sampling
        figures += quality_sections(quality, train.table, synthetic, codec.columns, spec.continuous)
    report = ModelReport(
        model=ModelInfo(
            uri=model_uri,
            family=cfg.model.family,
            backbone=cfg.model.backbone,
            likelihood=likelihood_name(cfg.model, DataShape.of(codec)),
            latent_dim=cfg.model.latent_dim,
            epoch=ck.meta.epoch,
        ),
        data=DataInfo(**data_info),
        test=scores.test,
        iwae=scores.iwae,
        active_units=scores.active_units,
        aggregate_posterior=scores.aggregate_posterior,
        **found,
    )
    intro = (
        f"Model {model_uri} ({cfg.model.family}, {cfg.model.likelihood} likelihood, "
        f"{cfg.model.latent_dim}-d latent) on {data.uri}. Nats per example; ELBO = -(recon + KL)."
    )
    progress(f"writing {join(out_uri, 'report.html')}")
    # The page shows the metrics as metrics.json holds them (non-finite numbers as null).
    metrics = report.to_json_dict()
    page = render_html(f"vaeflow report: {cfg.name}", intro, figures, metrics, verdict(metrics))
    html_uri = write_page(out_uri, page, storage_options)
    return ReportResult(html_uri, save_model_report(out_uri, report, storage_options), report)


def _data_config(
    data: DataConfig, data_uri: str | None, storage_options: dict[str, Any] | None, model_uri: str
) -> DataConfig:
    """The checkpoint's data section, at data_uri and with storage_options when they are given."""
    update: dict[str, Any] = {"uri": data_uri} if data_uri else {}
    if storage_options is not None:
        update["storage_options"] = storage_options
    data = data.model_copy(update=update)
    if not data.uri:
        raise ConfigError(f"{model_uri}: the checkpoint's config has no data.uri; pass data_uri (--input)")
    return data


def _latent_sections(
    name: str,
    history: list[dict[str, Any]],
    scores: LatentScores,
    labels: np.ndarray | None,
    label: str | None,
) -> list[Section]:
    """Training curves (when the checkpoint recorded them), the latent scatter coloured by `label`
    (labels: (N,) or None) and the aggregate posterior against the prior."""
    figures = []
    if history:
        figures.append(
            section(
                "Training curves",
                "Per-epoch means over the training data (and the validation ELBO when recorded).",
                plots.training_curves({name: history}),
            )
        )
    return [
        *figures,
        section(
            "Latent space",
            "Posterior means of the test rows (the first two principal axes when the latent has more "
            f"than two dimensions), coloured by {label or 'nothing (no label column)'}.",
            plots.latent_scatters([(name, scores.mu.numpy())], labels),
        ),
        section(
            "Aggregate posterior against the prior",
            "Mean and variance of q(z) = mean over x of q(z|x) per latent dimension; a regular latent "
            "space matches N(0, I): means near 0, variances near 1.",
            plots.aggregate_posterior_bars({name: scores.aggregate_posterior}),
        ),
    ]
