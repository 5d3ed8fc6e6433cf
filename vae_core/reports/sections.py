"""Captioned figures of a report page: what each picture shows and why it matters (plots.py draws them)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from matplotlib.figure import Figure

from vae_core.models.model import LatentModel
from vae_core.reports import plots
from vae_core.training.inference import generate, interpolate, reconstruct


@dataclass
class Section:
    heading: str
    caption: str
    png: bytes


def section(heading: str, caption: str, fig: Figure) -> Section:
    return Section(heading, caption, plots.to_png(fig))


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


def image_sections(
    models: Mapping[str, LatentModel],
    x: torch.Tensor,
    labels: np.ndarray | None,
    image_shape: tuple[int, int, int],
) -> list[Section]:
    """Prior samples, reconstructions and interpolation strips for each named model.

    x: (N, C*H*W) test images; labels: (N,) or None, to interpolate between different classes.
    """
    samples = {name: generate(m, 32, seed=0).numpy() for name, m in models.items()}
    recon = {"input": x[:16].numpy(), **{name: reconstruct(m, x[:16]).numpy() for name, m in models.items()}}
    strips = {}
    for a, b in _pairs_with_different_labels(labels, 2):
        pair = f"{labels[a]}→{labels[b]}" if labels is not None else f"{a}→{b}"
        for name, m in models.items():
            strips[f"{name}\n{pair}"] = interpolate(m, x[a], x[b], steps=12).numpy()
    return [
        section(
            "Samples from the prior",
            "Decoder means at z ~ N(0, I): in a complete latent space a random point decodes to "
            "something that looks like data.",
            plots.image_rows(samples, image_shape, ncols=16),
        ),
        section(
            "Inputs and reconstructions",
            "First row: test inputs; below: the decoder mean at z = mu(x).",
            plots.image_rows(recon, image_shape),
        ),
        section(
            "Interpolation",
            "Decoded points on the straight line between mu(x_a) and mu(x_b): in a continuous latent "
            "space nearby codes decode to similar images all along the path.",
            plots.image_rows(strips, image_shape),
        ),
    ]


def _column_values(table: pa.Table, name: str) -> np.ndarray:
    col = table.column(name)
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        return col.cast(pa.float64()).fill_null(math.nan).to_numpy()
    return np.asarray(col.to_pylist(), dtype=object)


def quality_sections(
    quality: Mapping[str, Any],
    real: pa.Table,
    synthetic: pa.Table,
    columns: Sequence[str],
    continuous: Sequence[str],
) -> list[Section]:
    """SDMetrics' scores, correlations side by side and every column's marginal, of rows sampled from
    the model against real rows.

    quality: reports.quality.synthetic_quality of `synthetic` against `real` (the training split).
    """

    def shown(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    q, d = quality["quality"], quality["diagnostic"]
    scores = ", ".join(f"{k} {shown(v)}" for k, v in {**q["properties"], **d["properties"]}.items())
    numeric = [c for c in columns if c in continuous]
    trends = quality["column_pair_trends"]
    limits = trends["thresholds"]
    figures = [
        section(
            "Column shapes (SDMetrics)",
            f"QualityReport score {shown(q['score'])}, DiagnosticReport score {shown(d['score'])} "
            f"({scores}). "
            "Per column: KSComplement (continuous) or TVComplement (categorical) of synthetic against "
            "real training rows.",
            plots.column_scores(quality["column_shapes"]["columns"], "column shape similarity"),
        ),
        section(
            "Column pair trends (SDMetrics)",
            "Every pair: CorrelationSimilarity (1 - |r_real - r_synth| / 2) for pairs of continuous "
            "columns, ContingencySimilarity of the joint frequencies for the others. The "
            f"QualityReport's score counts {trends['scored_by_quality_report']} of these "
            f"{len(trends['pairs'])} pairs: those whose real rows correlate (|r| > {limits['correlation']}) "
            f"or associate (Cramer's V > {limits['association']}).",
            plots.pair_heatmap(quality["column_pair_trends"]["pairs"], columns, "pair trend similarity"),
        ),
    ]
    det = quality["detection"]
    detectors = ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in det["detectors"].items())
    figures.append(
        section(
            "Detection: real against synthetic rows",
            f"ROC AUC of classifiers telling real training rows from sampled ones ({det['rows_each']:,} "
            f"of each, 3-fold cross-validation; 0.5 = indistinguishable): {detectors}. Bars: gradient "
            "boosting on one column alone, the columns that give the sampled rows away most on top.",
            plots.column_scores(det["by_column"], "detection AUC, one column at a time", "ROC AUC"),
        )
    )
    if len(numeric) >= 2:
        figures.append(
            section(
                "Correlations, real and synthetic",
                "Pearson correlation of each pair of continuous columns in the real training rows (left) "
                "and in the sampled rows (right).",
                plots.correlations_side_by_side(quality["column_pair_trends"]["correlations"], numeric),
            )
        )
    figures.append(
        section(
            "Marginals",
            "Every column: real training rows against rows sampled from the model (x ~ p(x|z)).",
            plots.marginals(
                {c: _column_values(real, c) for c in columns},
                {c: _column_values(synthetic, c) for c in columns},
                continuous,
            ),
        )
    )
    return figures
