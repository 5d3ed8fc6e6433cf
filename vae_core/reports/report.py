"""The evaluation report of one model: metrics.json plus one self-contained HTML page.

`write_report` evaluates one checkpoint on a dataset's test split (the numbers: reports.metrics; the
figures: reports.sections; the page: reports.html). The beta study has its own report (reports.study).

metrics.json (nats per example throughout; elbo = -(recon + kl), so higher is better):
    model                 family, backbone, likelihood, latent_dim, checkpoint uri and epoch
    data                  dataset uri, rows read per split, label column used for the scatter
    test                  {"elbo", "recon", "kl", "n"}: one-sample ELBO terms on the test split
    iwae                  {"log_likelihood", "k", "n"}: importance-weighted bound on log p(x) with k
                          samples (log_likelihood is None for a deterministic AE)
    active_units          latent dims whose posterior mean varies across the test split (Cov > 0.01)
    aggregate_posterior   q(z) = mean_x q(z|x) against N(0, I): "mean" and "var" per dim, "mean_abs_mu",
                          "mean_var", "kl_moment_matched" (KL from N(mean, Cov) to N(0, I)),
                          "kl_moment_matched_diag", "mean_posterior_var", "n"
    synthetic_quality     data with table columns only: reports.quality.synthetic_quality of rows sampled
                          from the model against the real train/test splits: "column_shapes",
                          "column_pair_trends", "detection", "privacy", "ml_efficacy" (when a categorical
                          target exists), "rows"
    history               per-epoch training records from the checkpoint, when it has them
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from vae_core.data.dataset import open_dataset
from vae_core.data.objects import atomic_write_bytes
from vae_core.data.storage import join
from vae_core.progress import Progress, quiet
from vae_core.reports import plots
from vae_core.reports.html import json_safe, render_html, write_page
from vae_core.reports.metrics import sample_quality, score_model
from vae_core.reports.sections import image_sections, quality_sections, section
from vae_core.reports.splits import default_label_column, read_split
from vae_core.training.checkpoints import load_checkpoint

METRICS_FILE = "metrics.json"


@dataclass
class ReportResult:
    html_uri: str
    metrics_uri: str
    metrics: dict


def write_report(
    model_uri: str,
    out_uri: str,
    data_uri: str | None = None,
    *,
    iwae_k: int = 1000,
    max_eval_rows: int | None = None,
    progress: Progress = quiet,
    label_column: str | None = None,
    target_column: str | None = None,
    seed: int = 0,
    storage_options: dict[str, Any] | None = None,
) -> ReportResult:
    """Evaluate the checkpoint at model_uri on data_uri (default: its config's data.uri) and write
    out_uri/report.html and out_uri/metrics.json (keys in the module docstring).

    storage_options open the checkpoint, the data and the output. Without them the checkpoint is
    opened with the environment's credentials and the data with the checkpoint config's options,
    which config.json stores redacted: options that held secrets must be passed again.

    max_eval_rows caps the rows read per split (test, and train for the synthetic quality of table
    columns). label_column colours the latent scatter (default: 'label' if the data have it, else the
    last categorical feature); target_column is the ML-efficacy target among the categorical columns
    (default: the same column).
    """
    ck = load_checkpoint(model_uri, storage_options=storage_options)
    cfg, codec, model = ck.config, ck.codec, ck.model.eval()
    update: dict[str, Any] = {"uri": data_uri} if data_uri else {}
    if storage_options is not None:
        update["storage_options"] = storage_options
    data = cfg.data.model_copy(update=update)
    if not data.uri:
        raise ValueError(f"{model_uri}: the checkpoint's config has no data.uri; pass data_uri (--input)")
    _, schema, spec = open_dataset(data, "test")
    label = label_column or default_label_column(spec, schema)
    test = read_split(data, "test", codec, label, max_eval_rows)
    progress(f"evaluating on {len(test.x):,} test rows of {data.uri}")
    scores = score_model(model, test.x, iwae_k, seed, progress)
    metrics: dict[str, Any] = {
        "model": {
            "uri": model_uri,
            "family": cfg.model.family,
            "backbone": cfg.model.backbone,
            "likelihood": cfg.model.likelihood,
            "latent_dim": cfg.model.latent_dim,
            "epoch": ck.meta.epoch,
        },
        "data": {"uri": data.uri, "test_rows": len(test.x), "label_column": label},
        "test": scores.test.to_dict(),
        "iwae": scores.iwae,
        "active_units": scores.active_units,
        "aggregate_posterior": scores.aggregate_posterior,
    }
    figures = []
    history = ck.meta.history
    if history:
        metrics["history"] = history
        figures.append(
            section(
                "Training curves",
                "Per-epoch means over the training data (and the validation ELBO when recorded).",
                plots.training_curves({cfg.name: history}),
            )
        )
    figures += [
        section(
            "Latent space",
            "Posterior means of the test rows (the first two principal axes when the latent has more "
            f"than two dimensions), coloured by {label or 'nothing (no label column)'}.",
            plots.latent_scatters([(cfg.name, scores.mu.numpy())], test.labels),
        ),
        section(
            "Aggregate posterior against the prior",
            "Mean and variance of q(z) = mean over x of q(z|x) per latent dimension; a regular latent "
            "space matches N(0, I): means near 0, variances near 1.",
            plots.aggregate_posterior_bars({cfg.name: scores.aggregate_posterior}),
        ),
    ]
    if codec.image_shape is not None:  # x are images: show samples, reconstructions, interpolations
        figures += image_sections({cfg.name: model}, test.x, test.labels, codec.image_shape)
    # Sampled rows can be compared with real ones column by column where the data have table columns
    # (continuous, categorical); a vector column (pixels, embeddings) has none.
    if spec.continuous or spec.categorical:
        target = target_column or label
        train = read_split(data, "train", codec, None, max_eval_rows)
        quality, synthetic = sample_quality(
            model,
            codec,
            spec,
            train,
            test,
            target if target in spec.categorical else None,
            seed,
            progress,
        )
        metrics["synthetic_quality"] = quality
        metrics["data"]["train_rows"] = quality["rows"]["real_train"]
        figures += quality_sections(quality, train.table, synthetic, codec.columns, spec.continuous)
    metrics = json_safe(metrics)
    intro = (
        f"Model {model_uri} ({cfg.model.family}, {cfg.model.likelihood} likelihood, "
        f"{cfg.model.latent_dim}-d latent) on {data.uri}. Nats per example; ELBO = -(recon + KL)."
    )
    progress(f"writing {join(out_uri, 'report.html')}")
    page = render_html(f"vaeflow report: {cfg.name}", intro, figures, metrics)
    html_uri = write_page(out_uri, page, storage_options)
    metrics_uri = join(out_uri, METRICS_FILE)
    atomic_write_bytes(metrics_uri, json.dumps(metrics, indent=1).encode(), storage_options)
    return ReportResult(html_uri, metrics_uri, metrics)
