"""Inference with a trained model: embed, reconstruct, generate from the prior, interpolate."""

from __future__ import annotations

import torch

from vae_core.models.model import LatentModel


def _eval(model: LatentModel) -> LatentModel:
    # Inference never corrupts inputs or samples more than asked: always eval mode.
    return model.eval()


@torch.no_grad()
def embed(
    model: LatentModel, x: torch.Tensor, with_logvar: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
    """x: (B, D) -> posterior mean mu: (B, L); with_logvar also returns logvar (None for an AE)."""
    q = _eval(model).encode(x)
    return (q.mean, q.logvar) if with_logvar else q.mean


@torch.no_grad()
def reconstruct(model: LatentModel, x: torch.Tensor) -> torch.Tensor:
    """x: (B, D) -> mean of p(x | z = mu(x)): (B, D), in data space."""
    model = _eval(model)
    return model.likelihood.mean(model.decode(model.encode(x).mean))


@torch.no_grad()
def generate(
    model: LatentModel, n: int, seed: int, sample_likelihood: bool = False, device: str = "cpu"
) -> torch.Tensor:
    """Decode n draws z ~ N(0, I): (n, D). The likelihood mean by default, or a sample from it."""
    model = _eval(model)
    gen = torch.Generator(device=device).manual_seed(seed)
    z = torch.randn((n, model.latent_dim), generator=gen, device=device)
    params = model.decode(z)
    if sample_likelihood:
        return model.likelihood.sample(params, generator=gen)
    return model.likelihood.mean(params)


@torch.no_grad()
def interpolate(model: LatentModel, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """Decode the straight line between mu(x_a) and mu(x_b): x_a, x_b: (D,) -> (steps, D)."""
    if steps < 2:
        raise ValueError("interpolate needs at least 2 steps")
    model = _eval(model)
    mu = model.encode(torch.stack([x_a, x_b])).mean  # (2, L)
    t = torch.linspace(0, 1, steps, device=mu.device).unsqueeze(1)  # (steps, 1)
    z = (1 - t) * mu[0] + t * mu[1]
    return model.likelihood.mean(model.decode(z))
