"""Inference with a trained model: embed, reconstruct, generate from the prior, interpolate."""

from __future__ import annotations

import torch

from vae_core.errors import InternalError
from vae_core.models.model import LatentModel
from vae_core.models.sampler import LatentMixture


def _eval(model: LatentModel) -> LatentModel:
    # Inference never corrupts inputs or samples more than asked: always eval mode.
    return model.eval()


def _device(model: LatentModel) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def embed(
    model: LatentModel, x: torch.Tensor, with_logvar: bool = False, chunk_rows: int | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
    """x: (B, D) -> posterior mean mu: (B, L); with_logvar also returns logvar (None for an AE).

    x goes to the model's device `chunk_rows` rows at a time (all at once by default), so a GPU holds
    one chunk's activations; the results come back on x's device.
    """
    model, device, chunk = _eval(model), _device(model), chunk_rows or max(len(x), 1)
    qs = [model.encode(x[i : i + chunk].to(device)) for i in range(0, max(len(x), 1), chunk)]
    mu = torch.cat([q.mean for q in qs]).to(x.device)  # (B, L)
    if not with_logvar:
        return mu
    logvar = None if qs[0].logvar is None else torch.cat([q.logvar for q in qs]).to(x.device)
    return mu, logvar


@torch.no_grad()
def reconstruct(model: LatentModel, x: torch.Tensor) -> torch.Tensor:
    """x: (B, D) -> mean of p(x | z = mu(x)): (B, D), in data space."""
    model = _eval(model)
    return model.likelihood.mean(model.decode(model.encode(x).mean))


@torch.no_grad()
def generate(
    model: LatentModel,
    n: int,
    seed: int,
    sample_likelihood: bool = False,
    chunk_rows: int | None = None,
    sampler: LatentMixture | None = None,
    latent_scale: float = 1.0,
) -> torch.Tensor:
    """Decode n draws of z: (n, D) on the model's device. z ~ N(0, I), or from `sampler` (a mixture
    fitted to the aggregate posterior, vae_core.models.sampler), their noise times `latent_scale`; the
    likelihood mean by default, or a sample from it.

    One generator seeded `seed` draws z and the likelihood samples, `chunk_rows` rows per decoder
    pass (all at once by default): the rows depend on (seed, n, chunk_rows) and the device type.
    """
    model, device, chunk = _eval(model), _device(model), chunk_rows or max(n, 1)
    gen = torch.Generator(device=device).manual_seed(seed)
    parts = []
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        if sampler is None:
            z = torch.randn((m, model.latent_dim), generator=gen, device=device) * latent_scale  # (m, L)
        else:
            z = sampler.sample(m, gen, device, latent_scale)
        parts.append(model.draw(z, sample_likelihood, gen))
    return torch.cat(parts)  # (n, D)


@torch.no_grad()
def interpolate(model: LatentModel, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """Decode the straight line between mu(x_a) and mu(x_b): x_a, x_b: (D,) -> (steps, D)."""
    if steps < 2:
        raise InternalError("interpolate needs at least 2 steps")
    model = _eval(model)
    mu = model.encode(torch.stack([x_a, x_b])).mean  # (2, L)
    t = torch.linspace(0, 1, steps, device=mu.device).unsqueeze(1)  # (steps, 1)
    z = (1 - t) * mu[0] + t * mu[1]
    return model.likelihood.mean(model.decode(z))
