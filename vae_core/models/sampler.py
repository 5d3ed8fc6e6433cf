"""An ex-post latent sampler: a Gaussian mixture fitted to a trained VAE's aggregate posterior.

A VAE trained with the KL to N(0, I) does not make its aggregate posterior q(z) = E_x q(z | x) equal
to the prior: draws from N(0, I) land in regions no training row encodes to ("holes"), and decode to
rows unlike the data. Fitting a density to codes of the training rows after training and sampling
from it instead (Ghosh et al. 2020, "From variational to deterministic autoencoders", ex-post density
estimation) gives rows closer to the data, with the same decoder.

The mixture is fitted to draws z ~ q(z | x) of training rows, on the latent dimensions the encoder
uses (active: the variance of the posterior means across rows above ACTIVE_VARIANCE); the other
dimensions carry no information about x, q(z) there is the prior, and they are drawn from N(0, 1).
Full covariances over the active dimensions keep their correlations. Saved next to the weights as
safetensors (never pickle).

Three fits (train.latent_prior). `posterior`, the default: the aggregate posterior itself, one
diagonal Gaussian per training row, its posterior mean and standard deviation (`fit_latent_posterior`;
the best density any fit could reach, and instant). `clusters`: one diagonal Gaussian per k-means
cluster of the posterior means, one cluster per CLUSTER_ROWS training rows (at most MAX_CLUSTERS),
its variance the spread of its rows' means plus their mean posterior variance, its weight its share
of the rows (`fit_latent_clusters`). `mixture`: full covariances by EM, `train.latent_mixture`
components or a third of that. On the held-out fifths of Adult and COMPAS a gradient-boosted detector
told rows decoded from `posterior` draws from real ones least often (bench/adult_selection.py), and
their distances to the closest training row matched unseen real rows'. The posterior's width is the
KL term's doing: at a small train.beta the draws crowd training rows' codes and decode to
near-copies, which the report's privacy section (DCR) shows.

The mixture is fitted by EM in torch (`fit_gmm`): sklearn's GaussianMixture algorithm (k-means start,
the same M and E steps, reg_covar, stop when the mean log-likelihood moves by less than `tol`) with the
per-row work in float32 matmuls and the covariances factorised in float64: faster than sklearn, to
the same held-out log-likelihood.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

ACTIVE_VARIANCE = 0.01  # Var_x[mu(x)_j] above this: dimension j is used (Burda et al. 2016 activity)
COMPONENTS = 30  # train.latent_mixture's default: 30 or 10 components, by held-out likelihood
ROWS_PER_COMPONENT = 100  # fewer training rows than this per component: fewer components
MAX_ROWS = 20_000  # training rows encoded for the fit at most (a uniform sample of them)
REG_COVAR = 1e-4  # added to each covariance's diagonal: keeps it invertible
# EM stops when the mean log-likelihood of the codes moves by less than this (nats per code). sklearn's
# default is 1e-3, but the iterations down to it only fit the training codes more closely: they take
# most of the time and score held-out codes no better.
TOL = 1e-2
CLUSTER_ROWS, MAX_CLUSTERS = 100, 1000  # fit_latent_clusters: training rows per cluster, clusters at most
CLUSTER_MAX_ROWS = 50_000  # training rows encoded for the clusters at most


@dataclass
class LatentMixture:
    """weights (K,), means (K, A), scale_tril (K, A, A) over the active dimensions `active` (A,) of
    a latent_dim-dimensional space; the other dimensions are N(0, 1). A diagonal mixture (clusters,
    posterior) keeps only the standard deviations: scale_tril (K, A)."""

    latent_dim: int
    active: torch.Tensor  # (A,) int64
    weights: torch.Tensor  # (K,)
    means: torch.Tensor  # (K, A)
    scale_tril: torch.Tensor  # (K, A, A), or (K, A) standard deviations of diagonal Gaussians
    # Components tried -> mean log-likelihood of held-out training codes (the fit's choice; not saved).
    heldout: dict[int, float] = field(default_factory=dict)

    def sample(
        self, n: int, generator: torch.Generator, device: torch.device, scale: float = 1.0
    ) -> torch.Tensor:
        """n draws z: (n, latent_dim) on `device`, all randomness from `generator`; `scale` multiplies
        the noise of each draw around its component's mean (generate.latent_scale)."""
        z = torch.randn((n, self.latent_dim), generator=generator, device=device) * scale
        if len(self.active) == 0:
            return z
        weights, means, tril = (t.to(device) for t in (self.weights, self.means, self.scale_tril))
        k = torch.multinomial(weights, n, replacement=True, generator=generator)  # (n,)
        if tril.dim() == 2:  # diagonal
            eps = torch.randn((n, len(self.active)), generator=generator, device=device)
            z[:, self.active.to(device)] = means[k] + tril[k] * (scale * eps)
        else:
            eps = torch.randn((n, len(self.active), 1), generator=generator, device=device)
            z[:, self.active.to(device)] = means[k] + scale * (tril[k] @ eps).squeeze(-1)
        return z

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "latent_dim": torch.tensor([self.latent_dim]),
            "active": self.active,
            "weights": self.weights,
            "means": self.means,
            "scale_tril": self.scale_tril,
        }

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> LatentMixture:
        return cls(int(t["latent_dim"][0]), t["active"], t["weights"], t["means"], t["scale_tril"])


@dataclass
class Gaussians:
    """A fitted mixture: weights (K,), means (K, A), cholesky factors of the covariances (K, A, A)."""

    weights: torch.Tensor
    means: torch.Tensor
    chol: torch.Tensor  # float64

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) per row of x (N, A), in x's dtype."""
        k, a = self.means.shape
        eye = torch.eye(a, dtype=self.chol.dtype).expand(k, a, a)
        # (x - mu) L^-T: its squared norm is the Mahalanobis distance (sklearn's precisions_cholesky).
        prec = torch.linalg.solve_triangular(self.chol, eye, upper=False).transpose(1, 2).to(x.dtype)
        means = self.means.to(x.dtype)
        log_p = torch.empty((len(x), k), dtype=x.dtype)
        for j in range(k):  # one (N, A) x (A, A) matmul per component: no (K, N, A) temporary
            y = (x - means[j]) @ prec[j]
            log_p[:, j] = -0.5 * (y * y).sum(1)
        log_det = torch.log(torch.diagonal(self.chol, dim1=1, dim2=2)).sum(1)  # half log det covariance
        norm = 0.5 * a * math.log(2 * math.pi) + log_det
        return log_p - norm.to(x.dtype) + torch.log(self.weights.to(x.dtype))

    def score(self, x: torch.Tensor) -> float:
        """Mean log-likelihood of the rows of x (sklearn's GaussianMixture.score)."""
        return float(torch.logsumexp(self.log_prob(x).double(), 1).mean())


def fit_gmm(
    x: torch.Tensor, k: int, seed: int, reg_covar: float = REG_COVAR, max_iter: int = 200, tol: float = TOL
) -> Gaussians:
    """k full-covariance Gaussians fitted to the rows of x (N, A) by EM from a k-means partition: the
    algorithm of sklearn's GaussianMixture(covariance_type="full", init_params="kmeans"), run as torch
    matmuls in x's dtype. It stops when the mean log-likelihood moves by less than tol, or after
    max_iter iterations (the last state is still a mixture)."""
    from sklearn.cluster import KMeans

    a = x.shape[1]
    labels = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(x.double().numpy()).labels_
    resp = torch.nn.functional.one_hot(torch.as_tensor(labels, dtype=torch.long), k).to(x.dtype)
    eye = torch.eye(a, dtype=torch.float64)
    previous = -math.inf
    for _ in range(max_iter):
        mixture = _m_step(x, resp, reg_covar, eye)
        log_p = mixture.log_prob(x)
        norm = torch.logsumexp(log_p, 1)
        resp = torch.exp(log_p - norm[:, None])
        mean_ll = float(norm.double().mean())
        if abs(mean_ll - previous) < tol:
            break
        previous = mean_ll
    return _m_step(x, resp, reg_covar, eye)


def _m_step(x: torch.Tensor, resp: torch.Tensor, reg_covar: float, eye: torch.Tensor) -> Gaussians:
    nk = resp.sum(0) + 10 * torch.finfo(x.dtype).eps
    means = (resp.T @ x) / nk[:, None]
    covs = torch.empty((len(nk), *eye.shape), dtype=torch.float64)
    for j in range(len(nk)):
        d = x - means[j]
        covs[j] = ((resp[:, j, None] * d).T @ d).double() / float(nk[j]) + reg_covar * eye
    return Gaussians(nk / len(x), means, torch.linalg.cholesky(covs))


def _posterior(model: torch.nn.Module, x: torch.Tensor, gen: torch.Generator, max_rows: int):
    """q(z | x) of the rows x in eval mode (at most max_rows of them, a uniform sample drawn with gen)."""
    if len(x) > max_rows:
        x = x[torch.randperm(len(x), generator=gen)[:max_rows].to(x.device)]
    was_training = model.training
    model.eval()
    q = model.encode(x)
    model.train(was_training)
    return q


def _no_active(latent_dim: int) -> LatentMixture:
    """The mixture of an encoder that uses no dimension: every dimension N(0, 1)."""
    empty = torch.zeros((1, 0))
    return LatentMixture(
        latent_dim, torch.zeros(0, dtype=torch.int64), torch.ones(1), empty, torch.zeros((1, 0, 0))
    )


@torch.no_grad()
def fit_latent_mixture(
    model: torch.nn.Module,
    x: torch.Tensor,
    seed: int,
    components: int = COMPONENTS,
    max_rows: int = MAX_ROWS,
) -> LatentMixture | None:
    """A mixture of full-covariance Gaussians fitted (fit_gmm, EM) to one draw z ~ q(z | x) per row of
    `x` (at most `max_rows` of them, sampled with `seed`), over the active dimensions; None for a model
    without a posterior variance (an autoencoder has no q(z | x) to aggregate).

    Its size: `components` (fewer for small data: one per ROWS_PER_COMPONENT rows) or a third of
    that, whichever gives the held-out fifth of the codes the higher likelihood (`heldout`). Nothing
    but the training rows is looked at."""
    gen = torch.Generator().manual_seed(seed)
    q = _posterior(model, x, gen, max_rows)
    if q.logvar is None:
        return None
    mu, std = q.mean.float().cpu(), torch.exp(0.5 * q.logvar.float().cpu())
    z = mu + std * torch.randn(mu.shape, generator=gen)  # (N, L)
    active = torch.nonzero(mu.double().var(0) > ACTIVE_VARIANCE).flatten()
    latent_dim = mu.shape[1]
    if len(active) == 0:
        return _no_active(latent_dim)
    # The size is chosen on the training rows' own codes: each candidate is fitted on 80% of them and
    # scored by the mean log-likelihood of the other 20%; the best one is kept.
    codes = z[:, active][torch.as_tensor(np.random.default_rng(seed).permutation(len(z)))]
    cut = int(0.8 * len(codes))
    most = max(1, min(components, cut // ROWS_PER_COMPONENT))
    fits, heldout = {}, {}
    for k in sorted({max(1, most // 3), most}):
        fits[k] = fit_gmm(codes[:cut], k, seed)
        heldout[k] = fits[k].score(codes[cut:]) if cut < len(codes) else 0.0
    best = fits[max(heldout, key=heldout.get)]
    return LatentMixture(
        latent_dim,
        active.to(torch.int64),
        best.weights.float(),
        best.means.float(),
        best.chol.float().contiguous(),  # linalg.cholesky returns column-major; safetensors wants rows
        heldout,
    )


@torch.no_grad()
def fit_latent_clusters(
    model: torch.nn.Module, x: torch.Tensor, seed: int, max_rows: int = CLUSTER_MAX_ROWS
) -> LatentMixture | None:
    """A mixture of diagonal Gaussians, one per k-means cluster of the posterior means of the rows
    `x` (at most `max_rows`, sampled with `seed`) over the active dimensions: one cluster per
    CLUSTER_ROWS rows, MAX_CLUSTERS at most; a cluster's variance is its means' spread plus their mean
    posterior variance, its weight its share of the rows. None for a model without a posterior
    variance (an autoencoder). Nothing but the training rows is looked at."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    q = _posterior(model, x, torch.Generator().manual_seed(seed), max_rows)
    if q.logvar is None:
        return None
    mu, var = q.mean.double().cpu(), torch.exp(q.logvar.double().cpu())
    latent_dim = mu.shape[1]
    active = torch.nonzero(mu.var(0) > ACTIVE_VARIANCE).flatten()
    if len(active) == 0:
        return _no_active(latent_dim)
    mu, var = mu[:, active], var[:, active]
    k = max(1, min(MAX_CLUSTERS, len(mu) // CLUSTER_ROWS))
    with threadpool_limits(limits=1):  # small matmuls: a second thread only spins (see continuous.fit_modes)
        labels = KMeans(n_clusters=k, n_init=1, max_iter=50, random_state=seed).fit(mu.numpy()).labels_
    labels = torch.as_tensor(labels, dtype=torch.long)
    counts = torch.bincount(labels, minlength=k).double()
    used = counts > 0
    one_hot = torch.nn.functional.one_hot(labels, k).double()  # (N, k)
    means = (one_hot.T @ mu) / counts.clamp(min=1)[:, None]
    spread = (one_hot.T @ mu**2) / counts.clamp(min=1)[:, None] - means**2
    variance = spread.clamp(min=0) + (one_hot.T @ var) / counts.clamp(min=1)[:, None] + REG_COVAR
    return LatentMixture(
        latent_dim,
        active.to(torch.int64),
        (counts[used] / counts.sum()).float(),
        means[used].float(),
        variance[used].sqrt().float().contiguous(),
    )


@torch.no_grad()
def fit_latent_posterior(
    model: torch.nn.Module, x: torch.Tensor, seed: int, max_rows: int = CLUSTER_MAX_ROWS
) -> LatentMixture | None:
    """The aggregate posterior itself, q(z) = (1/N) sum_i q(z | x_i): one diagonal Gaussian per row of
    `x` (at most `max_rows`, sampled with `seed`), its posterior mean and standard deviation, equal
    weights, over the active dimensions. No fitted density comes closer to the codes; the price is
    that every draw starts from one training row's code, so the decoder's likelihood sampling is
    what keeps a row from being that row (the benchmarks count copies and distances to the closest
    training row). None for a model without a posterior variance (an autoencoder)."""
    q = _posterior(model, x, torch.Generator().manual_seed(seed), max_rows)
    if q.logvar is None:
        return None
    mu, std = q.mean.float().cpu(), torch.exp(0.5 * q.logvar.float().cpu())
    latent_dim = mu.shape[1]
    active = torch.nonzero(mu.double().var(0) > ACTIVE_VARIANCE).flatten()
    if len(active) == 0:
        return _no_active(latent_dim)
    return LatentMixture(
        latent_dim,
        active.to(torch.int64),
        torch.full((len(mu),), 1.0 / len(mu)),
        mu[:, active].contiguous(),
        std[:, active].contiguous(),
    )
