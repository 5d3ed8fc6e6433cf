"""Model families: each is a small builder from ModelConfig and DataShape to a LatentModel.

The catalogue of names is `vae_core.config.FAMILIES` (torch-free, so validating a config stays
light); adding a family is one builder here plus its line there. The training loop never changes.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from vae_core.config import FAMILIES
from vae_core.data.layout import Block
from vae_core.errors import ConfigError
from vae_core.models.backbones import (
    AutoregressiveDecoder,
    ConvDecoder,
    ConvEncoder,
    MLPDecoder,
    MLPEncoder,
)
from vae_core.models.likelihoods import Bernoulli, Gaussian, Likelihood, MixedTabular
from vae_core.models.model import GaussianHead, GaussianNoise, LatentModel, MaskNoise, PointHead

if TYPE_CHECKING:
    from vae_core.config import ModelConfig
    from vae_core.data.codecs.base import Codec

Builder = Callable[["ModelConfig", "DataShape"], LatentModel]


@dataclass
class DataShape:
    """What a model needs to know of its x (DataShape.of(codec)): the feature count, an image shape for
    the conv backbone, the block layout of mixed continuous / one-hot features, and the likelihood that
    fits the data (the codec's: tabular for tables, bernoulli for features in [0, 1], else gaussian;
    None: tabular with a layout, else bernoulli)."""

    dim: int
    image_shape: tuple[int, int, int] | None = None
    layout: list[Block] | None = None
    likelihood: str | None = None

    def __post_init__(self) -> None:
        if self.image_shape is not None and math.prod(self.image_shape) != self.dim:
            raise ConfigError(f"data.image_shape {self.image_shape} does not hold the {self.dim} features")

    @classmethod
    def of(cls, codec: Codec) -> DataShape:
        """The shape of the x a codec encodes: (N, codec.dim), as its image (C, H, W) or table blocks."""
        return cls(codec.dim, codec.image_shape, codec.layout, codec.likelihood)

    @property
    def fitting_likelihood(self) -> str:
        return self.likelihood or ("tabular" if self.layout is not None else "bernoulli")


def _body(cfg: ModelConfig, shape: DataShape) -> tuple[nn.Module, nn.Module]:
    if cfg.decoder == "autoregressive":
        _check_decoder(cfg, shape)
        assert shape.layout is not None  # _check_decoder's
        decoder = AutoregressiveDecoder(cfg.latent_dim, cfg.hidden, shape.layout)
        return MLPEncoder(shape.dim, cfg.hidden), decoder
    if cfg.backbone == "conv":
        if shape.image_shape is None:
            raise ConfigError("model.backbone 'conv' needs data.image_shape (C, H, W)")
        return (
            ConvEncoder(shape.image_shape, cfg.conv_channels, cfg.hidden),
            ConvDecoder(cfg.latent_dim, shape.image_shape, cfg.conv_channels, cfg.hidden),
        )
    return MLPEncoder(shape.dim, cfg.hidden), MLPDecoder(cfg.latent_dim, cfg.hidden, shape.dim)


def likelihood_name(cfg: ModelConfig, shape: DataShape) -> str:
    """The likelihood a model of `cfg` on `shape` has: model.likelihood, or with "auto" (the default)
    the one that fits the data."""
    return shape.fitting_likelihood if cfg.likelihood == "auto" else cfg.likelihood


def _check_decoder(cfg: ModelConfig, shape: DataShape) -> None:
    if cfg.decoder == "autoregressive" and (
        cfg.backbone != "mlp" or likelihood_name(cfg, shape) != "tabular" or shape.layout is None
    ):
        raise ConfigError(
            "model.decoder 'autoregressive' draws a table column by column: it needs table data "
            "(data.codec tabular), model.likelihood tabular (or auto) and model.backbone mlp"
        )


def check_likelihood(cfg: ModelConfig, shape: DataShape) -> str:
    """Before training: the likelihood to train with; an explicit model.likelihood that does not fit the
    data is a ConfigError (tables need "tabular"; "bernoulli" needs every feature in [0, 1]), and so is
    an autoregressive model.decoder on data that is not a table."""
    name, fits = likelihood_name(cfg, shape), shape.fitting_likelihood
    if name == fits or (name == "gaussian" and fits == "bernoulli"):
        _check_decoder(cfg, shape)
        return name
    data = {
        "tabular": "table columns (one-hot and normalized blocks)",
        "gaussian": "features outside [0, 1] (check data.scale)",
        "bernoulli": "features in [0, 1]",
    }[fits]
    raise ConfigError(
        f"model.likelihood {name!r} does not fit this data, {data}: use model.likelihood=auto "
        f"(here {fits!r})" + (" or gaussian" if fits == "bernoulli" else "")
    )


def _likelihood(cfg: ModelConfig, shape: DataShape) -> Likelihood:
    name = likelihood_name(cfg, shape)
    if name == "bernoulli":
        return Bernoulli()
    if name == "gaussian":
        return Gaussian(shape.dim, cfg.gaussian_sigma)
    if shape.layout is None:
        raise ConfigError(
            "model.likelihood 'tabular' needs the block layout of a table codec (data.codec tabular)"
        )
    return MixedTabular(shape.layout)


def build_ae(cfg: ModelConfig, shape: DataShape) -> LatentModel:
    encoder, decoder = _body(cfg, shape)
    return LatentModel(encoder, PointHead(cfg.hidden[-1], cfg.latent_dim), decoder, _likelihood(cfg, shape))


def build_dae(cfg: ModelConfig, shape: DataShape) -> LatentModel:
    model = build_ae(cfg, shape)
    model.corruption = (
        GaussianNoise(cfg.noise_std) if cfg.corruption == "gaussian" else MaskNoise(cfg.mask_prob)
    )
    return model


def build_vae(cfg: ModelConfig, shape: DataShape) -> LatentModel:
    encoder, decoder = _body(cfg, shape)
    head = GaussianHead(cfg.hidden[-1], cfg.latent_dim)
    return LatentModel(encoder, head, decoder, _likelihood(cfg, shape))


def build_model(cfg: ModelConfig, shape: DataShape) -> LatentModel:
    """Look the family's builder up in config.FAMILIES (validated by ModelConfig) and build it."""
    module, _, name = FAMILIES[cfg.family][0].partition(":")
    builder: Builder = getattr(importlib.import_module(module), name)
    return builder(cfg, shape)
