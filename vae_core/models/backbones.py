"""Encoder and decoder bodies: an MLP for vectors and tables, a mirrored conv net for C x H x W images.

Both keep the model boundary flat: encoders take x: (B, D), decoders return parameters: (B, D_out).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn


def _mlp(sizes: list[int], final_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if final_activation or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """x: (B, D) -> h: (B, hidden[-1])."""

    def __init__(self, in_dim: int, hidden: list[int]) -> None:
        super().__init__()
        self.out_dim = hidden[-1]
        self.net = _mlp([in_dim, *hidden], final_activation=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MLPDecoder(nn.Module):
    """z: (B, L) -> params: (B, out_dim), hidden sizes mirrored from the encoder."""

    def __init__(self, latent_dim: int, hidden: list[int], out_dim: int) -> None:
        super().__init__()
        self.net = _mlp([latent_dim, *reversed(hidden), out_dim], final_activation=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def _conv_sizes(hw: tuple[int, int], n: int) -> list[tuple[int, int]]:
    """Spatial size after each stride-2 conv with k=3, p=1: ceil(s / 2)."""
    sizes = [hw]
    for _ in range(n):
        h, w = sizes[-1]
        sizes.append((math.ceil(h / 2), math.ceil(w / 2)))
    return sizes


class ConvEncoder(nn.Module):
    """x: (B, C*H*W) -> h: (B, hidden[-1]); each conv halves H and W."""

    def __init__(self, image_shape: tuple[int, int, int], channels: list[int], hidden: list[int]):
        super().__init__()
        c, h, w = image_shape
        self.image_shape = image_shape
        convs: list[nn.Module] = []
        for c_in, c_out in zip([c, *channels[:-1]], channels, strict=True):
            convs += [nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1), nn.ReLU()]
        self.convs = nn.Sequential(*convs)
        fh, fw = _conv_sizes((h, w), len(channels))[-1]
        self.fc = _mlp([channels[-1] * fh * fw, *hidden], final_activation=True)
        self.out_dim = hidden[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(x.shape[0], *self.image_shape)  # (B, C, H, W)
        return self.fc(self.convs(x).flatten(1))


class ConvDecoder(nn.Module):
    """z: (B, L) -> params: (B, C*H*W), the encoder mirrored with transposed convs."""

    def __init__(
        self, latent_dim: int, image_shape: tuple[int, int, int], channels: list[int], hidden: list[int]
    ) -> None:
        super().__init__()
        c, h, w = image_shape
        sizes = _conv_sizes((h, w), len(channels))  # [(H, W), ..., (fh, fw)]
        self.start = (channels[-1], *sizes[-1])
        self.fc = _mlp(
            [latent_dim, *reversed(hidden), channels[-1] * sizes[-1][0] * sizes[-1][1]],
            final_activation=True,
        )
        deconvs: list[nn.Module] = []
        outs = [*reversed(channels[:-1]), c]
        for i, (c_in, c_out) in enumerate(zip(reversed(channels), outs, strict=True)):
            (ih, iw), (th, tw) = sizes[-1 - i], sizes[-2 - i]
            # output_padding picks the exact pre-conv size back: out = 2 * in - 1 + output_padding.
            pad = (th - (2 * ih - 1), tw - (2 * iw - 1))
            deconvs.append(nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=pad))
            if i < len(channels) - 1:
                deconvs.append(nn.ReLU())
        self.deconvs = nn.Sequential(*deconvs)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(z.shape[0], *self.start)  # (B, C_last, fh, fw)
        return self.deconvs(h).flatten(1)
