"""Evaluation reports: metrics.json plus one self-contained HTML page (plots as base64 PNGs).

`write_report` evaluates one checkpoint on a dataset's test split; `run_beta_study` trains the beta
study (vae_core.reports.study) on a vector dataset and reports its three arms side by side.

metrics.json of `write_report` (nats per example throughout; elbo = -(recon + kl), so higher is better):
    model                 family, backbone, likelihood, latent_dim, checkpoint uri and epoch
    data                  dataset uri, rows read per split, label column used for the scatter
    test                  {"elbo", "recon", "kl", "n"}: one-sample ELBO terms on the test split
    iwae                  {"log_likelihood", "k", "n"}: importance-weighted bound on log p(x) with k
                          samples (log_likelihood is None for a deterministic AE)
    active_units          latent dims whose posterior mean varies across the test split (Cov > 0.01)
    aggregate_posterior   q(z) = mean_x q(z|x) against N(0, I): "mean" and "var" per dim, "mean_abs_mu",
                          "mean_var", "kl_moment_matched" (KL from N(mean, Cov) to N(0, I)),
                          "kl_moment_matched_diag", "mean_posterior_var", "n"
    synthetic_quality     tabular models only: reports.quality.synthetic_quality of rows sampled from the
                          model against the real train/test splits: "column_shapes", "column_pair_trends",
                          "detection", "privacy", "ml_efficacy" (when a categorical target exists), "rows"
    history               per-epoch training records from the checkpoint, when it has them
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from matplotlib.figure import Figure

from vae_core.config import DataConfig, ModelConfig, VaeflowConfig
from vae_core.data.dataset import (
    DataError,
    DatasetSpec,
    iter_batches,
    list_shards,
    open_dataset,
    read_schema,
    vector_features,
)
from vae_core.data.storage import filesystem, join
from vae_core.data.tabular import CategoricalColumn, TabularTransformer
from vae_core.models.families import DataShape
from vae_core.models.model import LatentModel
from vae_core.reports import plots
from vae_core.reports.study import StudyResult, beta_study
from vae_core.training.checkpoints import data_shape, load_checkpoint, save_checkpoint
from vae_core.training.evaluation import (
    active_units,
    aggregate_posterior,
    evaluate,
    iwae_log_likelihood,
    posterior_moments,
)
from vae_core.training.inference import generate, interpolate, reconstruct

Progress = Callable[[str], None]
EVAL_BATCH = 500


@dataclass
class ReportResult:
    html_uri: str
    metrics_uri: str
    metrics: dict


@dataclass
class SplitData:
    x: torch.Tensor  # (N, D) features as the model sees them
    table: pa.Table  # the raw feature (and label) columns of the same rows
    labels: np.ndarray | None  # (N,) values of the label column, if any


# ---- data ---------------------------------------------------------------------------------------


def read_split(
    data: DataConfig,
    split: str,
    transformer: TabularTransformer | None = None,
    label_column: str | None = None,
    max_rows: int | None = None,
) -> SplitData:
    """Read up to max_rows rows of `data.uri/split/` as model features (vector column or tabular)."""
    shards, _, spec = open_dataset(data, split)
    if spec.kind == "tabular" and transformer is None:
        raise ValueError(f"{data.uri}: tabular data needs the checkpoint's fitted tabular transformer")
    columns = [*spec.feature_columns]
    if label_column is not None and label_column not in columns:
        columns.append(label_column)
    xs, tables, n = [], [], 0
    for shard, batch in iter_batches(shards, columns, storage_options=data.storage_options):
        if max_rows is not None:
            batch = batch.slice(0, max_rows - n)
        if spec.kind == "vector":
            xs.append(vector_features(batch, spec, shard))
        else:
            xs.append(transformer.transform(batch))  # type: ignore[union-attr]
        tables.append(pa.Table.from_batches([batch]))
        n += batch.num_rows
        if max_rows is not None and n >= max_rows:
            break
    table = pa.concat_tables(tables)
    labels = table.column(label_column).to_numpy(zero_copy_only=False) if label_column else None
    return SplitData(torch.from_numpy(np.concatenate(xs)), table, labels)


def default_label_column(data: DataConfig, spec: DatasetSpec, schema: pa.Schema) -> str | None:
    """A column 'label' that is not a feature, else (tabular) the last categorical feature, else None."""
    if "label" in schema.names and "label" not in spec.feature_columns:
        return "label"
    if spec.kind == "tabular" and spec.categorical:
        return spec.categorical[-1]
    return None


def _batches(x: torch.Tensor, size: int = EVAL_BATCH) -> list[torch.Tensor]:
    return [x[i : i + size] for i in range(0, len(x), size)]


# ---- HTML ---------------------------------------------------------------------------------------

# Counts the <img> elements that decoded (complete with a natural width) once the page has loaded,
# so a headless browser's --dump-dom shows whether every plot rendered.
_IMAGE_CHECK = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images-loaded", String(ok));
  document.body.setAttribute("data-images-total", String(imgs.length));
});
</script>"""

_STYLE = """<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
table { border-collapse: collapse; font-size: 0.85em; }
td, th { border: 1px solid #ddd; padding: 2px 8px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
p.caption { color: #555; font-size: 0.9em; max-width: 60em; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 0.75em; max-height: 30em; }
</style>"""


@dataclass
class Section:
    heading: str
    caption: str
    png: bytes


def _figure(heading: str, caption: str, fig: Figure) -> Section:
    return Section(heading, caption, plots.to_png(fig))


def _flatten(metrics: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Scalar leaves as ('a.b.c', value); lists, per-epoch history and per-pair tables are left out."""
    rows: list[tuple[str, Any]] = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            if key not in ("pairs", "history"):
                rows.extend(_flatten(value, f"{name}."))
        elif not isinstance(value, list):
            rows.append((name, value))
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f'<td class="num">{value:.4g}</td>'
    if isinstance(value, int) and not isinstance(value, bool):
        return f'<td class="num">{value:,}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def render_html(title: str, intro: str, figures: list[Section], metrics: Mapping[str, Any]) -> str:
    """One self-contained page: figures as data URIs, a table of scalar metrics, the full JSON."""
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        _STYLE,
        "</head>",
        f'<body data-images-expected="{len(figures)}">',
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{html.escape(intro)}</p>",
    ]
    for f in figures:
        data = base64.b64encode(f.png).decode("ascii")
        parts += [
            f"<h2>{html.escape(f.heading)}</h2>",
            f'<p class="caption">{html.escape(f.caption)}</p>',
            f'<img alt="{html.escape(f.heading)}" src="data:image/png;base64,{data}">',
        ]
    rows = "".join(f"<tr><th>{html.escape(k)}</th>{_cell(v)}</tr>" for k, v in _flatten(metrics))
    parts += [
        "<h2>Metrics</h2>",
        f"<table>{rows}</table>",
        "<h2>metrics.json</h2>",
        f"<pre>{html.escape(json.dumps(metrics, indent=1, default=str))}</pre>",
        _IMAGE_CHECK,
        "</body></html>",
    ]
    return "\n".join(parts)


def _json_safe(value: Any) -> Any:
    """NaN and inf become null: metrics.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def _write(out_uri: str, page: str, metrics: dict, storage_options: dict | None = None) -> ReportResult:
    fs, root = filesystem(out_uri, storage_options)
    fs.makedirs(root, exist_ok=True)
    html_uri, metrics_uri = join(out_uri, "report.html"), join(out_uri, "metrics.json")
    with fs.open(join(root, "report.html"), "w") as f:
        f.write(page)
    with fs.open(join(root, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    return ReportResult(html_uri, metrics_uri, metrics)


# ---- one model ----------------------------------------------------------------------------------


def _pairs_with_different_labels(labels: np.ndarray | None, n_pairs: int) -> list[tuple[int, int]]:
    """Index pairs of test rows to interpolate between: different labels when there are labels."""
    if labels is None:
        return [(2 * i, 2 * i + 1) for i in range(n_pairs)]
    pairs, i = [], 0
    while len(pairs) < n_pairs and i + 1 < len(labels):
        j = next((j for j in range(i + 1, len(labels)) if labels[j] != labels[i]), None)
        if j is None:
            break
        pairs.append((i, j))
        i = j + 1
    return pairs


def _image_figures(
    models: Mapping[str, LatentModel], x: torch.Tensor, labels: np.ndarray | None, image_shape: tuple
) -> list[Section]:
    """Prior samples, reconstructions and interpolation strips for each named model."""
    samples = {name: generate(m, 32, seed=0).numpy() for name, m in models.items()}
    recon = {"input": x[:16].numpy(), **{name: reconstruct(m, x[:16]).numpy() for name, m in models.items()}}
    strips = {}
    for a, b in _pairs_with_different_labels(labels, 2):
        pair = f"{labels[a]}→{labels[b]}" if labels is not None else f"{a}→{b}"
        for name, m in models.items():
            strips[f"{name}\n{pair}"] = interpolate(m, x[a], x[b], steps=12).numpy()
    return [
        _figure(
            "Samples from the prior",
            "Decoder means at z ~ N(0, I): in a complete latent space a random point decodes to "
            "something that looks like data.",
            plots.image_rows(samples, image_shape, ncols=16),
        ),
        _figure(
            "Inputs and reconstructions",
            "First row: test inputs; below: the decoder mean at z = mu(x).",
            plots.image_rows(recon, image_shape),
        ),
        _figure(
            "Interpolation",
            "Decoded points on the straight line between mu(x_a) and mu(x_b): in a continuous latent "
            "space nearby codes decode to similar images all along the path.",
            plots.image_rows(strips, image_shape),
        ),
    ]


def _tabular_quality(
    model: LatentModel,
    transformer: TabularTransformer,
    data: DataConfig,
    test: SplitData,
    target: str | None,
    max_rows: int | None,
    seed: int,
    progress: Progress,
) -> tuple[dict, list[Section]]:
    from vae_core.reports.quality import synthetic_quality

    train = read_split(data, "train", transformer, None, max_rows)
    n = train.table.num_rows
    progress(
        f"synthetic quality: sampling {n:,} rows and comparing with {n:,} train / {len(test.x):,} test rows"
    )
    synthetic = transformer.inverse(generate(model, n, seed=seed, sample_likelihood=True).numpy())
    continuous = [c.name for c in transformer.columns if not isinstance(c, CategoricalColumn)]
    categorical = [c.name for c in transformer.columns if isinstance(c, CategoricalColumn)]
    quality = synthetic_quality(
        train.table, test.table, synthetic, continuous, categorical, target=target, seed=seed
    )
    names = transformer.column_names
    real_cols = {c: _column_values(train.table, c) for c in names}
    synth_cols = {c: _column_values(synthetic, c) for c in names}
    figures = [
        _figure(
            "Column shapes",
            "Per-column similarity of synthetic to real training rows: 1 - KS statistic (continuous), "
            "1 - total variation distance (categorical).",
            plots.column_scores(quality["column_shapes"]["columns"], "column shape similarity"),
        ),
        _figure(
            "Column pair trends",
            "1 - |r_real - r_synth| / 2 for continuous pairs; 1 - total variation distance of the joint "
            "frequencies (continuous columns in quantile bins) for the others.",
            plots.pair_heatmap(quality["column_pair_trends"]["pairs"], names, "pair trend similarity"),
        ),
        _figure(
            "Marginals",
            "Real training rows against rows sampled from the model (z ~ N(0, I), x ~ p(x|z)).",
            plots.marginals(real_cols, synth_cols, continuous),
        ),
    ]
    return quality, figures


def _column_values(table: pa.Table, name: str) -> np.ndarray:
    col = table.column(name)
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        return col.cast(pa.float64()).fill_null(math.nan).to_numpy()
    return np.asarray(col.to_pylist(), dtype=object)


def write_report(
    model_uri: str,
    out_uri: str,
    data_uri: str | None = None,
    *,
    iwae_k: int = 1000,
    max_eval_rows: int | None = None,
    progress: Progress | None = None,
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

    max_eval_rows caps the rows read per split (test, and train for tabular quality). label_column
    colours the latent scatter (default: 'label' if the data have it, else the last categorical
    feature); target_column is the ML-efficacy target of tabular models (default: the same column).
    """
    say = progress or (lambda _msg: None)
    ck = load_checkpoint(model_uri, storage_options=storage_options)
    cfg, model = ck.config, ck.model.eval()
    update: dict[str, Any] = {"uri": data_uri} if data_uri else {}
    if storage_options is not None:
        update["storage_options"] = storage_options
    data = cfg.data.model_copy(update=update)
    if not data.uri:
        raise ValueError(f"{model_uri}: the checkpoint's config has no data.uri; pass data_uri (--data)")
    shape = data_shape(ck)
    _, schema, spec = open_dataset(data, "test")
    label = label_column or default_label_column(data, spec, schema)
    test = read_split(data, "test", ck.transformer, label, max_eval_rows)
    say(f"evaluating on {len(test.x):,} test rows of {data.uri}")
    batches = _batches(test.x)
    result = evaluate(model, batches, seed=seed)
    iwae: dict[str, Any] = {"log_likelihood": None, "k": iwae_k, "n": 0}
    if model.is_variational:
        say(f"importance-weighted bound with k = {iwae_k}")
        ll = iwae_log_likelihood(model, _batches(test.x, 250), k=iwae_k, chunk=min(iwae_k, 100), seed=seed)
        iwae = {"log_likelihood": ll, "k": iwae_k, "n": len(test.x)}
    mu, logvar = posterior_moments(model, batches)
    latent = aggregate_posterior(mu, logvar)
    metrics: dict[str, Any] = {
        "model": {
            "uri": model_uri,
            "family": cfg.model.family,
            "backbone": cfg.model.backbone,
            "likelihood": cfg.model.likelihood,
            "latent_dim": cfg.model.latent_dim,
            "epoch": ck.meta.get("epoch"),
        },
        "data": {"uri": data.uri, "test_rows": len(test.x), "label_column": label},
        "test": result.to_dict(),
        "iwae": iwae,
        "active_units": active_units(model, batches),
        "aggregate_posterior": latent,
    }
    figures = []
    history = ck.meta.get("history")
    if history:
        metrics["history"] = history
        figures.append(
            _figure(
                "Training curves",
                "Per-epoch means over the training data (and the validation ELBO when recorded).",
                plots.training_curves({cfg.name: history}),
            )
        )
    figures += [
        _figure(
            "Latent space",
            "Posterior means of the test rows (the first two principal axes when the latent has more "
            f"than two dimensions), coloured by {label or 'nothing (no label column)'}.",
            plots.latent_scatters([(cfg.name, mu.numpy())], test.labels),
        ),
        _figure(
            "Aggregate posterior against the prior",
            "Mean and variance of q(z) = mean over x of q(z|x) per latent dimension; a regular latent "
            "space matches N(0, I): means near 0, variances near 1.",
            plots.aggregate_posterior_bars({cfg.name: latent}),
        ),
    ]
    if shape.image_shape is not None:
        figures += _image_figures({cfg.name: model}, test.x, test.labels, shape.image_shape)
    if ck.transformer is not None:
        target = target_column or label
        categorical = [c.name for c in ck.transformer.columns if isinstance(c, CategoricalColumn)]
        quality, tab_figures = _tabular_quality(
            model,
            ck.transformer,
            data,
            test,
            target if target in categorical else None,
            max_eval_rows,
            seed,
            say,
        )
        metrics["synthetic_quality"] = quality
        metrics["data"]["train_rows"] = quality["rows"]["real_train"]
        figures += tab_figures
    metrics = _json_safe(metrics)
    intro = (
        f"Model {model_uri} ({cfg.model.family}, {cfg.model.likelihood} likelihood, "
        f"{cfg.model.latent_dim}-d latent) on {data.uri}. Nats per example; ELBO = -(recon + KL)."
    )
    say(f"writing {join(out_uri, 'report.html')}")
    page = render_html(f"vaeflow report: {cfg.name}", intro, figures, metrics)
    return _write(out_uri, page, metrics, storage_options)


# ---- the beta study ------------------------------------------------------------------------------


def _vector_data_config(data: DataConfig) -> DataConfig:
    """Fill in the vector column of a dataset whose config leaves it open: its one numeric list
    column, scaled by 255 when it holds uint8, shaped (1, s, s) when its fixed length is a square."""
    if data.vector_column is not None or data.columns is not None:
        return data
    schema = read_schema(list_shards(join(data.uri, "train"), data.storage_options), data.storage_options)
    lists = [
        f
        for f in schema
        if pa.types.is_list(f.type) or pa.types.is_large_list(f.type) or pa.types.is_fixed_size_list(f.type)
    ]
    if len(lists) != 1:
        raise DataError(
            f"{data.uri}: the beta study needs one vector column; found {[f.name for f in lists]} "
            "(set data.vector_column)"
        )
    field = lists[0]
    update: dict[str, Any] = {"vector_column": field.name}
    if field.type.value_type == pa.uint8() and data.scale == 1.0:
        update["scale"] = 255.0
    size = field.type.list_size if pa.types.is_fixed_size_list(field.type) else None
    if size and data.image_shape is None and math.isqrt(size) ** 2 == size:
        update["image_shape"] = (1, math.isqrt(size), math.isqrt(size))
    return data.model_copy(update=update)


def write_beta_study_report(
    study: StudyResult,
    out_uri: str,
    x_test: torch.Tensor,
    labels: np.ndarray | None,
    image_shape: tuple[int, int, int] | None,
    extra: Mapping[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> ReportResult:
    """The three arms side by side: latent scatters with their metrics, aggregate posteriors, samples,
    reconstructions, interpolations (recon only vs ELBO) and training curves."""
    names = [a.arm.name for a in study.arms]
    panels = [
        (
            f"{a.arm.name}\ntest recon {a.test.recon:.1f}, KL {a.test.kl:.2f} nats\n"
            f"KL(moment-matched q(z) || N(0,I)) {a.latent['kl_moment_matched']:.2f}",
            a.mu.numpy(),
        )
        for a in study.arms
    ]
    figures = [
        _figure(
            "Latent space per objective",
            "Posterior means of test rows under each objective. Reconstruction only: clusters anywhere, "
            "at any scale. KL only: everything collapses onto the prior, no structure. ELBO: structure "
            "within N(0, I).",
            plots.latent_scatters(panels, labels),
        ),
        _figure(
            "Aggregate posterior against the prior",
            "Per-dimension mean and variance of q(z) = mean over x of q(z|x); the prior is 0 and 1.",
            plots.aggregate_posterior_bars({a.arm.name: a.latent for a in study.arms}),
        ),
        _figure(
            "Training curves",
            "Reconstruction and KL terms (at weight 1) and the ELBO per epoch, for each objective.",
            plots.training_curves({a.arm.name: [s.to_dict() for s in a.history] for a in study.arms}),
        ),
    ]
    if image_shape is not None:
        models = {a.arm.name: a.model for a in study.arms}
        figures += _image_figures(models, x_test, labels, image_shape)
    metrics = _json_safe({**study.metrics(), **(extra or {})})
    intro = (
        f"The same architecture trained three ways: {', '.join(names)}. The KL term is what makes the "
        "latent space regular: complete (prior samples decode to data) and continuous (interpolations "
        "change smoothly). Nats per example on the test split."
    )
    return _write(
        out_uri, render_html("vaeflow beta study", intro, figures, metrics), metrics, storage_options
    )


def run_beta_study(
    data_uri: str,
    out_uri: str,
    *,
    config: VaeflowConfig | None = None,
    latent_dim: int = 2,
    hidden: list[int] | None = None,
    epochs: int = 10,
    max_train_rows: int | None = None,
    max_test_rows: int | None = None,
    label_column: str | None = None,
    progress: Progress | None = None,
) -> ReportResult:
    """Train the three arms of the beta study on a vector dataset, save each model under
    out_uri/models/<arm>/ and write out_uri/report.html and out_uri/metrics.json.

    config supplies data settings, batch size, lr and seed (its model section is replaced by an MLP
    VAE with `hidden` and `latent_dim`; Bernoulli for features in [0, 1], else Gaussian). Its
    data.storage_options open the data and out_uri alike.
    """
    say = progress or (lambda _msg: None)
    base = config or VaeflowConfig()
    data = _vector_data_config(base.data.model_copy(update={"uri": data_uri}))
    _, schema, spec = open_dataset(data, "train")
    if spec.kind != "vector":
        raise DataError(f"{data_uri}: the beta study runs on a vector column (images), not tabular data")
    label = label_column or default_label_column(data, spec, schema)
    train = read_split(data, "train", None, None, max_train_rows)
    test = read_split(data, "test", None, label, max_test_rows)
    binary_range = bool(train.x.min() >= 0 and train.x.max() <= 1)
    model_cfg = ModelConfig(
        family="vae",
        backbone="mlp",
        hidden=hidden or [256],
        latent_dim=latent_dim,
        likelihood="bernoulli" if binary_range else "gaussian",
    )
    shape = DataShape(spec.dim, data.image_shape)
    say(f"beta study: {len(train.x):,} train / {len(test.x):,} test rows, {epochs} epochs per objective")
    study = beta_study(
        train.x,
        test.x,
        model_cfg,
        shape,
        epochs=epochs,
        batch_size=base.train.batch_size,
        lr=base.train.lr,
        seed=base.train.seed,
        progress=say,
    )
    checkpoints = {}
    for arm in study.arms:
        slug = "".join(ch if ch.isalnum() else "-" for ch in arm.arm.name.lower()).strip("-")
        slug = "-".join(p for p in slug.split("-") if p)
        cfg = VaeflowConfig(
            name=f"beta-study-{slug}",
            data=data,
            model=model_cfg,
            train=base.train.model_copy(update={"epochs": epochs, "beta": arm.arm.beta}),
            compute=base.compute,
        )
        uri = join(out_uri, "models", slug)
        history = [s.to_dict() for s in arm.history]
        meta = {"epoch": epochs, "history": history, "recon_weight": arm.arm.recon_weight}
        checkpoints[arm.arm.name] = save_checkpoint(
            uri, arm.model, cfg, shape, meta=meta, storage_options=data.storage_options
        )
    extra = {
        "data": {
            "uri": data_uri,
            "train_rows": len(train.x),
            "test_rows": len(test.x),
            "label_column": label,
        },
        "model": model_cfg.model_dump(),
        "epochs": epochs,
        "checkpoints": checkpoints,
    }
    say(f"writing {join(out_uri, 'report.html')}")
    return write_beta_study_report(
        study, out_uri, test.x, test.labels, data.image_shape, extra, data.storage_options
    )
