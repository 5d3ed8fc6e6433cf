"""Pictures of a trained model: latent scatters, samples, reconstructions, interpolations, curves (headless).

Every function returns a matplotlib Figure built with the object-oriented API (no pyplot, no display),
rendered to PNG bytes by `to_png`. Images arrive as flat (N, D) arrays plus their (C, H, W) shape.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

Array = np.ndarray


TAB10 = [f"C{i}" for i in range(10)]  # matplotlib's default cycle: tab10, distinct at a glance


def to_png(fig: Figure, dpi: int = 90) -> bytes:
    """Render a figure to PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def project_2d(mu: Array) -> tuple[Array, str]:
    """(N, L) codes -> (N, 2) for a scatter: as they are for L = 2, else the first two principal axes."""
    if mu.shape[1] == 2:
        return mu, "z"
    if mu.shape[1] == 1:
        return np.c_[mu[:, 0], np.zeros(len(mu))], "z"
    from sklearn.decomposition import PCA

    return PCA(n_components=2, random_state=0).fit_transform(mu), "PC"


def _label_codes(labels: Array) -> tuple[Array, list[str]]:
    names, codes = np.unique(np.asarray(labels).astype(str), return_inverse=True)
    return codes, [str(n) for n in names]


def latent_scatters(
    panels: Sequence[tuple[str, Array]], labels: Array | None = None, max_points: int = 5_000
) -> Figure:
    """Side-by-side scatters of posterior means, one panel per (title, mu (N, L)), coloured by label."""
    fig = Figure(figsize=(4.2 * len(panels), 4.0), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    codes, names = _label_codes(labels) if labels is not None else (None, [])
    for ax, (title, mu) in zip(axes, panels, strict=True):
        xy, axis = project_2d(np.asarray(mu, dtype=np.float64)[:max_points])
        c = codes[:max_points] if codes is not None else None
        if c is not None and len(names) <= 10:  # one tab10 colour per class, in order: two classes are
            c = np.asarray(TAB10)[c]  # blue and orange (a colour map over 0..1 gave blue and cyan)
        cmap = "viridis" if c is not None and len(names) > 10 else None
        ax.scatter(xy[:, 0], xy[:, 1], c=c, s=3, cmap=cmap, alpha=0.7, linewidths=0)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(f"{axis}1")
        ax.set_ylabel(f"{axis}2")
    if codes is not None and len(names) <= 10:
        handles = [axes[-1].scatter([], [], color=TAB10[i], s=12, label=name) for i, name in enumerate(names)]
        axes[-1].legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


def _tile(images: Array, image_shape: tuple[int, int, int], ncols: int) -> Array:
    """(N, C*H*W) -> one (rows*H, ncols*W[, C]) canvas, one pixel of padding between tiles."""
    c, h, w = image_shape
    n = len(images)
    rows = max(1, -(-n // ncols))
    canvas = np.ones((rows * (h + 1), ncols * (w + 1), c))
    for i, img in enumerate(np.asarray(images, dtype=np.float64).reshape(n, c, h, w)):
        r, k = divmod(i, ncols)
        canvas[r * (h + 1) : r * (h + 1) + h, k * (w + 1) : k * (w + 1) + w] = img.transpose(1, 2, 0)
    return np.clip(canvas[..., 0] if c == 1 else canvas, 0.0, 1.0)


def image_rows(
    rows: Mapping[str, Array], image_shape: tuple[int, int, int], ncols: int | None = None, title: str = ""
) -> Figure:
    """One labelled image grid per entry (name -> (N, D) images in [0, 1]), stacked vertically.

    Serves prior samples (one grid per model), inputs vs reconstructions, and interpolation strips.
    """
    _, h, w = image_shape
    width = 10.0
    # Height of each grid at the figure's width, so tiles keep their aspect without blank bands.
    heights = [
        width * (-(-len(v) // (ncols or len(v)))) * (h + 1) / ((ncols or len(v)) * (w + 1)) + 0.15
        for v in rows.values()
    ]
    fig = Figure(figsize=(width, sum(heights) + (0.4 if title else 0.1)), layout="constrained")
    axes = fig.subplots(len(rows), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, (name, images) in zip(axes, rows.items(), strict=True):
        ax.imshow(_tile(images, image_shape, ncols or len(images)), cmap="gray", vmin=0, vmax=1)
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def training_curves(histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> Figure:
    """Reconstruction, KL and ELBO per epoch (nats per example), one line per run.

    histories: run name -> per-epoch records with "epoch", "recon", "kl", "elbo" (and "val_elbo" on
    the epochs the run validated).
    """
    fig = Figure(figsize=(12, 3.4), layout="constrained")
    axes = fig.subplots(1, 3)
    for name, history in histories.items():
        epochs = [h["epoch"] for h in history]
        axes[0].plot(epochs, [h["recon"] for h in history], marker=".", label=name)
        axes[1].plot(epochs, [h["kl"] for h in history], marker=".", label=name)
        axes[2].plot(epochs, [h["elbo"] for h in history], marker=".", label=f"{name} train")
        validated = [h for h in history if "val_elbo" in h]
        if validated:
            axes[2].plot(
                [h["epoch"] for h in validated],
                [h["val_elbo"] for h in validated],
                ls="--",
                label=f"{name} validation",
            )
    for ax, what in zip(axes, ["reconstruction -log p(x|z)", "KL(q(z|x) || p(z))", "ELBO"], strict=True):
        ax.set_title(what, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("nats per example")
    axes[2].legend(fontsize=7)
    return fig


def aggregate_posterior_bars(stats: Mapping[str, Mapping[str, Any]], max_dims: int = 32) -> Figure:
    """Per-dimension mean and variance of each model's aggregate posterior against the prior's 0 and 1.

    stats: model name -> the dict of vae_core.training.evaluation.aggregate_posterior.
    """
    fig = Figure(figsize=(12, 3.4), layout="constrained")
    ax_m, ax_v = fig.subplots(1, 2)
    width = 0.8 / max(1, len(stats))
    for i, (name, s) in enumerate(stats.items()):
        mean, var = np.asarray(s["mean"])[:max_dims], np.asarray(s["var"])[:max_dims]
        dims = np.arange(len(mean)) + i * width
        ax_m.bar(dims, mean, width=width, label=name)
        ax_v.bar(dims, var, width=width, label=name)
    ax_m.axhline(0.0, color="k", lw=0.8)
    ax_v.axhline(1.0, color="k", lw=0.8, ls="--", label="prior N(0, I)")
    all_var = np.concatenate([np.asarray(s["var"])[:max_dims] for s in stats.values()])
    positive = all_var[all_var > 0]
    if len(positive) and positive.max() / positive.min() > 100:  # linear where the values sit near 1
        ax_v.set_yscale("log")
    ax_m.set_title("aggregate posterior mean per latent dim (prior: 0)", fontsize=10)
    ax_v.set_title("aggregate posterior variance per latent dim (prior: 1)", fontsize=10)
    for ax in (ax_m, ax_v):
        ax.set_xlabel("latent dimension")
    ax_v.legend(fontsize=7)
    return fig


def column_scores(
    scores: Mapping[str, float], title: str, xlabel: str = "similarity (1 = identical)"
) -> Figure:
    """Horizontal bars of per-column scores in [0, 1], in the order given."""
    names = list(scores)
    fig = Figure(figsize=(7, 0.3 * len(names) + 1.0), layout="constrained")
    ax = fig.subplots()
    ax.barh(names, [np.nan if scores[n] is None else scores[n] for n in names], color="tab:blue")
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    return fig


def pair_heatmap(pairs: Mapping[str, float], columns: Sequence[str], title: str) -> Figure:
    """Matrix of column-pair similarity scores keyed 'a|b' (correlation or contingency similarity)."""
    index = {c: i for i, c in enumerate(columns)}
    grid = np.full((len(columns), len(columns)), np.nan)
    for key, value in pairs.items():
        a, b = key.split("|", 1)
        grid[index[a], index[b]] = grid[index[b], index[a]] = np.nan if value is None else value
    fig = Figure(figsize=(0.45 * len(columns) + 2.5, 0.45 * len(columns) + 1.5), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(columns)), columns, rotation=90, fontsize=8)
    ax.set_yticks(range(len(columns)), columns, fontsize=8)
    fig.colorbar(image, ax=ax, label="similarity")
    ax.set_title(title, fontsize=10)
    return fig


def correlations_side_by_side(
    correlations: Mapping[str, Mapping[str, float]], columns: Sequence[str]
) -> Figure:
    """Two correlation matrices, real (left) and synthetic (right), from {"a|b": {"real", "synthetic"}}."""
    index = {c: i for i, c in enumerate(columns)}
    grids = {side: np.eye(len(columns)) for side in ("real", "synthetic")}
    for key, value in correlations.items():
        a, b = key.split("|", 1)
        for side, grid in grids.items():
            r = np.nan if value[side] is None else value[side]  # None: a constant column has no r
            grid[index[a], index[b]] = grid[index[b], index[a]] = r
    size = 0.45 * len(columns) + 1.5
    fig = Figure(figsize=(2 * size + 1.0, size), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, (side, grid) in zip(axes, grids.items(), strict=True):
        image = ax.imshow(grid, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_xticks(range(len(columns)), columns, rotation=90, fontsize=8)
        ax.set_yticks(range(len(columns)), columns, fontsize=8)
        ax.set_title(side, fontsize=10)
    fig.colorbar(image, ax=list(axes), label="Pearson r")
    return fig


def marginals(real: Mapping[str, Array], synthetic: Mapping[str, Array], continuous: Sequence[str]) -> Figure:
    """Real vs synthetic marginals of every column: histograms for continuous columns, frequency bars of
    the most frequent real categories for the rest."""
    names = list(real)
    ncols = min(4, len(names))
    nrows = -(-len(names) // ncols)
    fig = Figure(figsize=(3.2 * ncols, 2.6 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, name in zip(axes, names, strict=False):
        r, s = np.asarray(real[name]), np.asarray(synthetic[name])
        if name in continuous:
            r, s = r[~np.isnan(r)], s[~np.isnan(s)]
            bins = np.histogram_bin_edges(r, bins=30)
            ax.hist(r, bins=bins, alpha=0.5, density=True, label="real")
            ax.hist(s, bins=bins, alpha=0.5, density=True, label="synthetic")
        else:
            cats, counts = np.unique(r.astype(str), return_counts=True)
            top = cats[np.argsort(-counts)][:8]
            x = np.arange(len(top))
            freq_r = [np.mean(r.astype(str) == c) for c in top]
            freq_s = [np.mean(s.astype(str) == c) for c in top]
            ax.bar(x - 0.2, freq_r, width=0.4, label="real")
            ax.bar(x + 0.2, freq_s, width=0.4, label="synthetic")
            ax.set_xticks(x, [c[:12] for c in top], rotation=60, fontsize=7)
        ax.set_title(name, fontsize=9)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    return fig
