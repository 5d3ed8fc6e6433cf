"""Likelihood metrics: mean ELBO terms, the importance-weighted bound (IWAE), active latent units."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch

from vae_core.errors import InternalError, NoExamplesError
from vae_core.models.model import LatentModel
from vae_core.models.posterior import DiagonalGaussian, standard_normal_log_prob


@contextmanager
def evaluating(model: LatentModel) -> Iterator[LatentModel]:
    """`model` in eval mode (no corruption, no dropout) for the block; its mode is restored after,
    also when the block raises."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@dataclass
class EvalResult:
    """Per-example means in nats over n examples. elbo = -(recon + kl); for an AE kl is 0."""

    elbo: float
    recon: float
    kl: float
    n: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@torch.no_grad()
def evaluate(
    model: LatentModel, batches: Iterable[torch.Tensor], seed: int = 0, device: str = "cpu"
) -> EvalResult:
    """One-sample ELBO estimate at kl weight 1 (no corruption: the model is put in eval mode)."""
    with evaluating(model):
        gen = torch.Generator(device=device).manual_seed(seed)
        recon_sum = kl_sum = 0.0
        n = 0
        for x in batches:
            x = x.to(device)
            out = model(x, generator=gen)
            terms = model.loss(x, out)
            recon_sum += terms.recon.sum().item()
            kl_sum += terms.kl.sum().item()
            n += x.shape[0]
    if n == 0:
        raise NoExamplesError("evaluate: no examples")
    return EvalResult(elbo=-(recon_sum + kl_sum) / n, recon=recon_sum / n, kl=kl_sum / n, n=n)


def _gaussian_posterior(model: LatentModel, x: torch.Tensor) -> DiagonalGaussian:
    posterior = model.encode(x)
    if not isinstance(posterior, DiagonalGaussian):
        raise InternalError("importance-weighted likelihood needs a variational model (family 'vae')")
    return posterior


@torch.no_grad()
def iwae_log_likelihood(
    model: LatentModel,
    batches: Iterable[torch.Tensor],
    k: int = 1000,
    chunk: int = 100,
    seed: int = 0,
    device: str = "cpu",
) -> float:
    """Mean over examples of the IWAE bound with k samples (Burda et al. 2016), in nats:

    log p(x) >= log 1/k sum_i p(x|z_i) p(z_i) / q(z_i|x),  z_i ~ q(z|x).
    It is >= the ELBO and tightens as k grows. Samples are drawn `chunk` at a time to bound memory.
    """
    with evaluating(model):
        gen = torch.Generator(device=device).manual_seed(seed)
        total, n = 0.0, 0
        for x in batches:
            x = x.to(device)
            q = _gaussian_posterior(model, x)
            log_w = []
            for start in range(0, k, chunk):
                m = min(chunk, k - start)
                eps = torch.randn((m, *q.mu.shape), generator=gen, device=x.device)
                z = q.mu + torch.exp(0.5 * q.logvar) * eps  # (m, B, L)
                xs = x.repeat(m, 1)  # (m*B, D), the order of z.flatten(0, 1)
                params = model.decode(z.flatten(0, 1), xs)  # (m*B, D)
                log_px = -model.likelihood.nll(params, xs).view(m, -1)  # (m, B)
                log_w.append(log_px + standard_normal_log_prob(z) - q.log_prob(z))
            bound = torch.logsumexp(torch.cat(log_w), dim=0) - math.log(k)  # (B,)
            total += bound.sum().item()
            n += x.shape[0]
    if n == 0:
        raise NoExamplesError("iwae_log_likelihood: no examples")
    return total / n


@torch.no_grad()
def active_units(
    model: LatentModel, batches: Iterable[torch.Tensor], threshold: float = 0.01, device: str = "cpu"
) -> int:
    """Number of latent dims u with Cov_x(E_q[z_u]) > threshold (Burda et al. 2016)."""
    with evaluating(model):
        means = [model.encode(x.to(device)).mean for x in batches]
    mu = torch.cat(means)  # (N, L)
    return int((mu.var(dim=0) > threshold).sum().item())


@torch.no_grad()
def posterior_moments(
    model: LatentModel, batches: Iterable[torch.Tensor], device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """mu (N, L) and logvar (N, L) of q(z|x) over all examples; logvar is None for an AE."""
    with evaluating(model):
        mus, logvars = [], []
        for x in batches:
            q = model.encode(x.to(device))
            mus.append(q.mean.cpu())
            if q.logvar is not None:
                logvars.append(q.logvar.cpu())
    if not mus:
        raise NoExamplesError("posterior_moments: no examples")
    return torch.cat(mus), torch.cat(logvars) if logvars else None


def aggregate_posterior(mu: torch.Tensor, logvar: torch.Tensor | None = None) -> dict[str, object]:
    """Moments of the aggregate posterior q(z) = 1/N sum_n q(z|x_n) against the prior N(0, I).

    mu, logvar: (N, L). By the law of total variance, Cov[z] = Cov_x(mu) + diag(E_x[sigma^2]) (an AE
    has sigma = 0). A regular latent space has mean ~ 0 and variance ~ 1 in every dimension, so the
    KL from the moment-matched Gaussian N(m, Cov) to N(0, I),
        KL = 1/2 (tr Cov + m'm - L - log det Cov),
    is near 0; an unregularised code sits far from the prior (large or tiny scale, offsets).
    Returns per-dimension "mean" and "var" and scalar summaries.
    """
    mu = mu.double()
    n, latent = mu.shape
    m = mu.mean(0)  # (L,)
    cov = torch.cov(mu.T).reshape(latent, latent) if n > 1 else torch.zeros(latent, latent, dtype=mu.dtype)
    if logvar is not None:
        cov = cov + torch.diag(logvar.double().exp().mean(0))
    var = torch.diagonal(cov)
    # A collapsed direction (det Cov = 0) is infinitely far from N(0, I); the floor keeps it finite.
    cov_floor = cov + 1e-12 * torch.eye(latent, dtype=cov.dtype)
    _, logdet = torch.linalg.slogdet(cov_floor)
    kl_full = 0.5 * (torch.trace(cov) + m @ m - latent - logdet)
    kl_diag = 0.5 * (var + m.pow(2) - 1.0 - torch.log(var.clamp(min=1e-12))).sum()
    return {
        "mean": m.tolist(),
        "var": var.tolist(),
        "mean_abs_mu": mu.abs().mean().item(),
        "mean_var": var.mean().item(),
        "kl_moment_matched": kl_full.item(),
        "kl_moment_matched_diag": kl_diag.item(),
        "mean_posterior_var": logvar.double().exp().mean().item() if logvar is not None else 0.0,
        "n": n,
    }
