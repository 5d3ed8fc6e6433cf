"""The one model contract every family shares: encode -> Posterior, decode -> likelihood params, loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vae_core.models.likelihoods import Likelihood
from vae_core.models.posterior import DiagonalGaussian, PointMass, Posterior


class PointHead(nn.Module):
    """h -> a deterministic code (autoencoder)."""

    def __init__(self, hidden: int, latent_dim: int) -> None:
        super().__init__()
        self.mu = nn.Linear(hidden, latent_dim)

    def forward(self, h: torch.Tensor) -> PointMass:
        return PointMass(self.mu(h))


class GaussianHead(nn.Module):
    """h -> (mu, logvar) of a diagonal Gaussian (VAE). `mu` matches PointHead's so weights transfer."""

    def __init__(self, hidden: int, latent_dim: int) -> None:
        super().__init__()
        self.mu = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)

    def forward(self, h: torch.Tensor) -> DiagonalGaussian:
        return DiagonalGaussian(self.mu(h), self.logvar(h))


class GaussianNoise(nn.Module):
    """Additive N(0, std^2) corruption of the input."""

    def __init__(self, std: float) -> None:
        super().__init__()
        self.std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.std * torch.randn_like(x)


class MaskNoise(nn.Module):
    """Masking corruption: each input feature is set to 0 with probability p (no rescaling)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (torch.rand_like(x) >= self.p).to(x.dtype)


@dataclass
class ModelOutput:
    posterior: Posterior
    z: torch.Tensor  # (B, L) the code the decoder saw
    params: torch.Tensor  # (B, D) likelihood parameters


@dataclass
class LossOutput:
    """loss is the scalar to minimise; recon and kl are per example (B,), in nats."""

    loss: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor

    @property
    def elbo(self) -> torch.Tensor:
        """Per-example ELBO = -(recon + KL) at kl weight 1, whatever weight the loss used."""
        return -(self.recon + self.kl)


class LatentModel(nn.Module):
    """encoder body -> posterior head -> z -> decoder -> likelihood; optional input corruption (DAE).

    Corruption applies only in training mode, and the reconstruction target is always the clean x.
    """

    def __init__(
        self,
        encoder: nn.Module,
        head: nn.Module,
        decoder: nn.Module,
        likelihood: Likelihood,
        corruption: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.decoder = decoder
        self.likelihood = likelihood
        self.corruption = corruption

    @property
    def latent_dim(self) -> int:
        return self.head.mu.out_features

    @property
    def is_variational(self) -> bool:
        return isinstance(self.head, GaussianHead)

    def encode(self, x: torch.Tensor) -> Posterior:
        """x: (B, D) -> q(z|x)."""
        return self.head(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, L) -> likelihood parameters (B, D)."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> ModelOutput:
        x_in = self.corruption(x) if (self.corruption is not None and self.training) else x
        posterior = self.encode(x_in)
        z = posterior.sample(generator)
        return ModelOutput(posterior, z, self.decode(z))

    def loss(
        self, x: torch.Tensor, out: ModelOutput, kl_weight: float = 1.0, recon_weight: float = 1.0
    ) -> LossOutput:
        """Weighted negative ELBO, batch mean: recon_weight * E_q[-log p(x|z)] + kl_weight * KL(q || p)."""
        recon = self.likelihood.nll(out.params, x)  # (B,)
        kl = out.posterior.kl()  # (B,)
        loss = (recon_weight * recon + kl_weight * kl).mean()
        return LossOutput(loss, recon, kl)
