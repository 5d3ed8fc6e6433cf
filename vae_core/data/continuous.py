"""How a continuous column becomes the model's features: Gaussian modes or quantile bins, fitted on a
uniform sample of the column (vae_core.data.tabular keeps the sample while it streams the rows).

Both give a block [alpha, one-hot(k)]: k a mode of a Bayesian Gaussian mixture with alpha the
standardised distance to its mean (`fit_modes`, CTGAN/TVAE's mode-specific normalisation), or k a
quantile bin with alpha the value's rank within it (`fit_bins`, `bin_ranks`, `bin_values`).
"""

from __future__ import annotations

import warnings

import numpy as np

BIN_POINTS = 33  # quantiles kept per bin (its lowest and highest value among them): the within-bin shape


def fit_modes(sample: np.ndarray, max_modes: int, seed: int) -> tuple[list[float], list[float], list[float]]:
    from sklearn.mixture import BayesianGaussianMixture
    from threadpoolctl import threadpool_limits

    distinct = np.unique(sample)
    if len(distinct) <= 1:
        return [float(distinct[0]) if len(distinct) else 0.0], [1.0], [1.0]
    n = min(max_modes, len(distinct))
    gmm = BayesianGaussianMixture(
        n_components=n,
        weight_concentration_prior_type="dirichlet_process",
        weight_concentration_prior=0.001,  # as TVAE: few modes survive
        max_iter=100,
        n_init=1,
        random_state=seed,
    )
    # One BLAS/OpenMP thread: on one column the fit is a long series of small array operations, and a
    # second thread only spins, on the core that the cluster's start beside the fit (trainer._alongside)
    # needs. The fitted modes agree to rounding, and rows encode to the same float32 features.
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore")  # ConvergenceWarning on near-discrete columns is expected
        gmm.fit(sample.reshape(-1, 1))
    keep = gmm.weights_ > 0.005
    means = gmm.means_.ravel()[keep]
    stds = np.sqrt(gmm.covariances_.ravel()[keep])
    # A floor on sigma keeps alpha finite for (near-)discrete modes; relative to the column's spread.
    stds = np.maximum(stds, 1e-3 * max(float(sample.std()), 1e-6))
    weights = gmm.weights_[keep] / gmm.weights_[keep].sum()
    return means.tolist(), stds.tolist(), weights.tolist()


def fit_bins(sample: np.ndarray, max_bins: int) -> list[dict[str, list[float]]]:
    """Up to about `max_bins` bins of about equal count over a sample of a column, lowest first: a
    value with at least a bin's share of the sample is a bin of its own, and equal values never
    straddle two bins. A bin of at most BIN_POINTS distinct values keeps them exactly, with their
    cumulative shares (`values`, `cdf`): capital gains of 2174 and 2202 stay what they are. A bin of
    more keeps its values' quantiles at BIN_POINTS evenly spaced ranks (`values` alone)."""
    values, counts = np.unique(sample, return_counts=True)
    share = len(sample) / max_bins
    groups: list[tuple[int, int]] = []  # [first, last) indices into values
    first, filled = 0, 0
    for i, count in enumerate(counts):
        if count >= share and filled:  # a spike: close the bin before it
            groups.append((first, i))
            first, filled = i, 0
        filled += count
        if filled >= share:
            groups.append((first, i + 1))
            first, filled = i + 1, 0
    if first < len(values):
        groups.append((first, len(values)))
    bins = []
    for lo, hi in groups:
        if hi - lo <= BIN_POINTS:
            cdf = np.cumsum(counts[lo:hi]) / counts[lo:hi].sum()
            bins.append({"values": values[lo:hi].tolist(), "cdf": cdf.tolist()})
        else:
            members = np.repeat(values[lo:hi], counts[lo:hi])
            bins.append({"values": np.quantile(members, np.linspace(0.0, 1.0, BIN_POINTS)).tolist()})
    return bins


def bin_ranks(bins: list[dict[str, list[float]]], v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each value's bin (the last bin starting at or below it; the first for values below all) and
    alpha = 2 u - 1, u its rank within the bin: in a bin of exact values, the middle of the value's
    share of the bin (a value between them: the nearest one below); in a bin of quantiles,
    interpolated between them. Values outside their bin clip to its ends."""
    starts = np.asarray([b["values"][0] for b in bins])
    mode = np.clip(np.searchsorted(starts, v, side="right") - 1, 0, len(bins) - 1)
    u = np.full(len(v), 0.5)
    for k in np.unique(mode):
        points, rows = np.asarray(bins[k]["values"]), np.flatnonzero(mode == k)
        x = np.clip(v[rows], points[0], points[-1])
        if "cdf" in bins[k]:
            cdf = np.asarray(bins[k]["cdf"])
            at = np.clip(np.searchsorted(points, x, side="right") - 1, 0, len(points) - 1)
            u[rows] = (cdf[at] + np.r_[0.0, cdf[:-1]][at]) / 2
        else:
            u[rows] = np.interp(x, points, np.linspace(0.0, 1.0, len(points)))
    return mode, 2 * u - 1


def bin_values(bins: list[dict[str, list[float]]], mode: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The inverse of bin_ranks: bin `mode`'s value at rank u = (alpha + 1) / 2 (clipped to [0, 1]):
    the first exact value whose cumulative share reaches u, or the quantiles interpolated at u."""
    u = np.clip((alpha + 1) / 2, 0.0, 1.0)
    v = np.empty(len(mode))
    for k in np.unique(mode):
        points, rows = np.asarray(bins[k]["values"]), np.flatnonzero(mode == k)
        if "cdf" in bins[k]:
            at = np.searchsorted(np.asarray(bins[k]["cdf"]), u[rows], side="left")
            v[rows] = points[np.minimum(at, len(points) - 1)]
        else:
            v[rows] = np.interp(u[rows], np.linspace(0.0, 1.0, len(points)), points)
    return v
