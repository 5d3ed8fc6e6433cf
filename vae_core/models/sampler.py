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
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

ACTIVE_VARIANCE = 0.01  # Var_x[mu(x)_j] above this: dimension j is used (Burda et al. 2016 activity)
COMPONENTS = 30  # train.latent_mixture's default: 30 or 10 components, by held-out likelihood
ROWS_PER_COMPONENT = 100  # fewer training rows than this per component: fewer components
MAX_ROWS = 20_000  # training rows encoded for the fit at most (a uniform sample of them)


@dataclass
class LatentMixture:
    """weights (K,), means (K, A), scale_tril (K, A, A) over the active dimensions `active` (A,) of
    a latent_dim-dimensional space; the other dimensions are N(0, 1)."""

    latent_dim: int
    active: torch.Tensor  # (A,) int64
    weights: torch.Tensor  # (K,)
    means: torch.Tensor  # (K, A)
    scale_tril: torch.Tensor  # (K, A, A)
    # Components tried -> mean log-likelihood of held-out training codes (the fit's choice; not saved).
    heldout: dict[int, float] = field(default_factory=dict)

    def sample(self, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """n draws z: (n, latent_dim) on `device`, all randomness from `generator`."""
        z = torch.randn((n, self.latent_dim), generator=generator, device=device)
        if len(self.active) == 0:
            return z
        weights, means, tril = (t.to(device) for t in (self.weights, self.means, self.scale_tril))
        k = torch.multinomial(weights, n, replacement=True, generator=generator)  # (n,)
        eps = torch.randn((n, len(self.active), 1), generator=generator, device=device)
        z[:, self.active.to(device)] = means[k] + (tril[k] @ eps).squeeze(-1)
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


@torch.no_grad()
def fit_latent_mixture(
    model: torch.nn.Module, x: torch.Tensor, seed: int, components: int = COMPONENTS
) -> LatentMixture | None:
    """A mixture of full-covariance Gaussians fitted (sklearn, EM) to one draw z ~ q(z | x) per row of
    `x` (at most MAX_ROWS of them, sampled with `seed`), over the active dimensions; None for a model
    without a posterior variance (an autoencoder has no q(z | x) to aggregate).

    Its size: `components` (fewer for small data: one per ROWS_PER_COMPONENT rows) or a third of
    that, whichever gives the held-out fifth of the codes the higher likelihood (`heldout`). Nothing
    but the training rows is looked at."""
    from sklearn.mixture import GaussianMixture

    gen = torch.Generator().manual_seed(seed)
    if len(x) > MAX_ROWS:
        x = x[torch.randperm(len(x), generator=gen)[:MAX_ROWS].to(x.device)]
    was_training = model.training
    model.eval()
    q = model.encode(x)
    model.train(was_training)
    if q.logvar is None:
        return None
    mu, std = q.mean.float().cpu(), torch.exp(0.5 * q.logvar.float().cpu())
    z = (mu + std * torch.randn(mu.shape, generator=gen)).double().numpy()  # (N, L)
    active = np.flatnonzero(mu.double().var(0).numpy() > ACTIVE_VARIANCE)
    latent_dim = mu.shape[1]
    if len(active) == 0:
        empty = torch.zeros((1, 0))
        return LatentMixture(
            latent_dim, torch.zeros(0, dtype=torch.int64), torch.ones(1), empty, torch.zeros((1, 0, 0))
        )
    # The size is chosen on the training rows' own codes: each candidate is fitted on 80% of them and
    # scored by the mean log-likelihood of the other 20%; the best one is kept.
    codes = z[:, active][np.random.default_rng(seed).permutation(len(z))]
    cut = int(0.8 * len(codes))
    most = max(1, min(components, cut // ROWS_PER_COMPONENT))
    fits, heldout = {}, {}
    for k in sorted({max(1, most // 3), most}):
        gmm = GaussianMixture(
            n_components=k, covariance_type="full", reg_covar=1e-4, max_iter=200, random_state=seed
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning: the last EM state is still a mixture
            gmm.fit(codes[:cut])
        fits[k], heldout[k] = gmm, float(gmm.score(codes[cut:])) if cut < len(codes) else 0.0
    gmm = fits[max(heldout, key=heldout.get)]
    tril = np.linalg.cholesky(gmm.covariances_)
    return LatentMixture(
        latent_dim,
        torch.as_tensor(active, dtype=torch.int64),
        torch.as_tensor(gmm.weights_, dtype=torch.float32),
        torch.as_tensor(gmm.means_, dtype=torch.float32),
        torch.as_tensor(tril, dtype=torch.float32),
        heldout,
    )
