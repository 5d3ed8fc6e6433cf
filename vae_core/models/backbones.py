"""Encoder and decoder bodies: an MLP for vectors and tables, a mirrored conv net for C x H x W images.

Both keep the model boundary flat: encoders take x: (B, D), decoders return parameters: (B, D_out).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from vae_core.data.layout import Block


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


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (out, in): MADE's connectivity."""

    def __init__(self, mask: torch.Tensor, bias: bool = True) -> None:
        super().__init__(mask.shape[1], mask.shape[0], bias=bias)
        self.register_buffer("mask", mask.to(self.weight.dtype), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class AutoregressiveDecoder(nn.Module):
    """(z, x) -> params (B, D): the factorised decoder's params from z, plus a masked MLP over x in which
    the params of table column c see only the columns before c (MADE, Germain et al. 2015, conditioned on
    z at its first layer). p(x | z) = prod_c p(x_c | z, x_<c): a column's distribution can depend on
    the other columns' values themselves, not only through z (a label on the row's other columns, as
    an autoregressive synthesizer such as TabularARGN models it).

    Training sees the observed x (teacher forcing: one pass); drawing x goes column by column
    (`LatentModel.draw`): `hidden(z)` once, then `params(h, x)` per column with the columns drawn so far.
    """

    def __init__(self, latent_dim: int, hidden: list[int], layout: list[Block]) -> None:
        super().__init__()
        dim, sizes = layout[-1].stop, list(reversed(hidden))
        self.body = _mlp([latent_dim, *sizes], final_activation=True)
        self.out = nn.Linear(sizes[-1], dim)
        columns = sorted({b.column for b in layout})
        rank = {c: i for i, c in enumerate(columns)}
        # slot -> its column's place in the order; the order in which draw() fills the columns
        slot = torch.empty(dim, dtype=torch.long)
        for b in layout:
            slot[b.start : b.stop] = rank[b.column]
        self.columns = [[b for b in layout if rank[b.column] == i] for i in range(len(columns))]
        steps = max(len(columns) - 1, 1)
        # hidden unit k of each layer has a degree in [0, C-2], spread evenly: it sees the slots of
        # columns <= its degree, and feeds the params of columns > its degree.
        degrees = [torch.arange(n) * steps // n for n in sizes]
        self.context = nn.Linear(sizes[-1], sizes[0])
        layers, previous = [], slot
        for i, d in enumerate(degrees):
            # (out, in): unit k sees input j (a slot, then a unit of the layer before) iff deg(j) <= deg(k)
            layers.append(MaskedLinear(previous.unsqueeze(0) <= d.unsqueeze(1), bias=i > 0))
            previous = d
        self.layers = nn.ModuleList(layers)
        self.head = MaskedLinear(slot.unsqueeze(1) > previous.unsqueeze(0), bias=False)

    def hidden(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, L) -> the z part shared by every column's params: (B, hidden[0])."""
        return self.body(z)

    def params(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """h = hidden(z), x: (B, D) -> params (B, D); column c's params depend on x's columns < c only."""
        a = F.relu(self.layers[0](x) + self.context(h))
        for layer in self.layers[1:]:
            a = F.relu(layer(a))
        return self.out(h) + self.head(a)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.params(self.hidden(z), x)


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
