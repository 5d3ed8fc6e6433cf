"""Shared fixtures: small models and data made on the spot."""

from __future__ import annotations

import pytest
import torch

from vae_core.config import ModelConfig
from vae_core.models.families import DataShape, build_model
from vae_core.models.model import LatentModel


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def small_model(family: str = "vae", dim: int = 16, latent: int = 4, **kw) -> LatentModel:
    if family == "dae":
        kw.setdefault("corruption", "gaussian")
    cfg = ModelConfig(family=family, hidden=[32], latent_dim=latent, **kw)
    return build_model(cfg, DataShape(dim, kw.pop("image_shape", None) if "image_shape" in kw else None))


def binary_data(n: int = 512, dim: int = 16, seed: int = 0) -> torch.Tensor:
    """Binary x from a 2-D latent through one fixed random map: structured data a VAE can fit.

    The map is the same for every seed, so different seeds are train and test draws of one distribution.
    """
    w = torch.randn((2, dim), generator=torch.Generator().manual_seed(1234)) * 6.0
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((n, 2), generator=g)
    return torch.bernoulli(torch.sigmoid(z @ w), generator=g)
