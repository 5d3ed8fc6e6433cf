"""Approximate posteriors q(z|x): a diagonal Gaussian (VAE) and a point mass (AE)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_LOG_2PI = math.log(2 * math.pi)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the latent axis: (B, L) -> (B,)."""
    return -0.5 * (z.pow(2) + _LOG_2PI).sum(-1)


@dataclass
class DiagonalGaussian:
    """q(z|x) = N(mu, diag(exp(logvar))); mu, logvar: (B, L)."""

    mu: torch.Tensor
    logvar: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        return self.mu

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        # Reparameterisation trick: z = mu + sigma * eps keeps z differentiable in (mu, logvar).
        eps = torch.randn(self.mu.shape, generator=generator, device=self.mu.device, dtype=self.mu.dtype)
        return self.mu + torch.exp(0.5 * self.logvar) * eps

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z|x) for z: (..., B, L) -> (..., B)."""
        return -0.5 * ((z - self.mu).pow(2) / self.logvar.exp() + self.logvar + _LOG_2PI).sum(-1)

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) in closed form, per example: (B,).

        KL = 1/2 * sum_j (mu_j^2 + sigma_j^2 - log sigma_j^2 - 1)  (Kingma & Welling, appendix B).
        """
        return 0.5 * (self.mu.pow(2) + self.logvar.exp() - self.logvar - 1.0).sum(-1)


@dataclass
class PointMass:
    """A deterministic code z = f(x): the autoencoder's 'posterior'. Its KL term is zero."""

    z: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        return self.z

    @property
    def logvar(self) -> None:
        return None

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.z

    def kl(self) -> torch.Tensor:
        return self.z.new_zeros(self.z.shape[0])


Posterior = DiagonalGaussian | PointMass
