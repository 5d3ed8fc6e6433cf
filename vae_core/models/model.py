"""The one model contract every family shares: encode -> Posterior, decode -> likelihood params, loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vae_core.models.backbones import AutoregressiveDecoder
from vae_core.models.likelihoods import Likelihood, MixedTabular
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

    @property
    def is_autoregressive(self) -> bool:
        return isinstance(self.decoder, AutoregressiveDecoder)

    def decode(self, z: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """z: (B, L) -> likelihood parameters (B, D). An autoregressive decoder's parameters of p(x | z)
        for a given x (B, D) (teacher forcing; x is ignored by a factorised decoder); without x, those
        of the row it draws at each column's mode (`draw(z, sample=False)`)."""
        if not self.is_autoregressive:
            return self.decoder(z)
        if x is None:
            return self._draw(z, sample=False)[1]
        return self.decoder(z, x)

    def draw(
        self, z: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """z: (B, L) -> x in data space: a sample of p(x | z), or (sample False) its mean; for an
        autoregressive decoder, each column drawn given the ones before it, the mean of its
        distribution given the modes of the columns before it."""
        if not self.is_autoregressive:
            params = self.decoder(z)
            return self.likelihood.sample(params, generator) if sample else self.likelihood.mean(params)
        x, params = self._draw(z, sample, generator)
        return x if sample else self.likelihood.mean(params)

    def _draw(
        self, z: torch.Tensor, sample: bool, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Column by column: params given the columns filled so far, then the next column filled. The
        last pass's params are those every column was drawn from (a column's params do not depend on
        itself or on the columns after it)."""
        decoder, lik = self.decoder, self.likelihood
        assert isinstance(decoder, AutoregressiveDecoder) and isinstance(lik, MixedTabular)
        h = decoder.hidden(z)
        x = z.new_zeros((z.shape[0], lik.dim))
        for blocks in decoder.columns:
            lik.fill(decoder.params(h, x), x, blocks, sample, generator)
        return x, decoder.params(h, x)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> ModelOutput:
        x_in = self.corruption(x) if (self.corruption is not None and self.training) else x
        posterior = self.encode(x_in)
        z = posterior.sample(generator)
        return ModelOutput(posterior, z, self.decode(z, x))

    def loss(
        self, x: torch.Tensor, out: ModelOutput, kl_weight: float = 1.0, recon_weight: float = 1.0
    ) -> LossOutput:
        """Weighted negative ELBO, batch mean: recon_weight * E_q[-log p(x|z)] + kl_weight * KL(q || p)."""
        recon = self.likelihood.nll(out.params, x)  # (B,)
        kl = out.posterior.kl()  # (B,)
        loss = (recon_weight * recon + kl_weight * kl).mean()
        return LossOutput(loss, recon, kl)
