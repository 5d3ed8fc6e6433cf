"""Observation models p(x|z): Bernoulli, Gaussian, and a mixed tabular likelihood over a column layout.

Every likelihood maps decoder parameters of shape (B, D) and data x of shape (B, D) to a negative
log-likelihood per example (B,), in nats, and can turn parameters into a mean or a sample in data space.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vae_core.data.layout import Block
from vae_core.errors import InternalError

_LOG_2PI = math.log(2 * math.pi)


class Bernoulli(nn.Module):
    """x in [0, 1]; parameters are logits. Non-binary x gives the usual 'continuous BCE' in nats."""

    def nll(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(params, x, reduction="none").sum(-1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params)

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.bernoulli(torch.sigmoid(params), generator=generator)


class Gaussian(nn.Module):
    """x real; parameters are means. sigma fixed, or a learned per-feature log-std when sigma is None."""

    def __init__(self, dim: int, sigma: float | None = None) -> None:
        super().__init__()
        self.learned = sigma is None
        log_sigma = torch.zeros(dim) if sigma is None else torch.full((dim,), math.log(sigma))
        if self.learned:
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma)

    def nll(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        log_sigma = self.log_sigma.clamp(min=-7.0)  # a floor keeps a learned std from collapsing to 0
        return (0.5 * ((x - params) / log_sigma.exp()).pow(2) + log_sigma + 0.5 * _LOG_2PI).sum(-1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return params

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn(params.shape, generator=generator, device=params.device, dtype=params.dtype)
        return params + self.log_sigma.exp() * eps


class MixedTabular(nn.Module):
    """Gaussian on continuous blocks (learned std per column), categorical cross-entropy on one-hot blocks.

    Parameters are means for continuous columns and logits for categorical blocks, laid out like x.
    The std is kept in [MIN_SIGMA, 1] as in TVAE: continuous slots are normalised to about [-1, 1],
    and a std free to shrink further lets the likelihood overfit those slots (train NLL falling
    without bound) and makes samples near-copies of decoder means: ML efficacy (the measure of
    bench/results/adult_efficacy.json) then falls as training goes on.
    """

    MIN_SIGMA = 0.01

    def __init__(self, layout: list[Block]) -> None:
        super().__init__()
        if not layout:
            raise InternalError("tabular likelihood needs a non-empty column layout")
        self.layout = layout
        cont = [i for b in layout if b.kind == "continuous" for i in range(b.start, b.stop)]
        self.register_buffer("cont_idx", torch.tensor(cont, dtype=torch.long))
        self.log_sigma = nn.Parameter(torch.full((len(cont),), math.log(0.1)))
        self.cats = [b for b in layout if b.kind == "categorical"]
        self.dim = layout[-1].stop
        # All categorical blocks in one segmented pass instead of a log_softmax per block, whose small
        # ops (forward and backward) were a large share of a training step on a table with many
        # categorical columns. cat_idx: their slots in order; cat_block: the block of each slot.
        cat_idx = [i for b in self.cats for i in range(b.start, b.stop)]
        block = [n for n, b in enumerate(self.cats) for _ in range(b.width)]
        self.register_buffer("cat_block", torch.tensor(block, dtype=torch.long), persistent=False)
        self.register_buffer("cat_idx", torch.tensor(cat_idx, dtype=torch.long), persistent=False)

    def clamped_log_sigma(self) -> torch.Tensor:
        return self.log_sigma.clamp(math.log(self.MIN_SIGMA), 0.0)

    def nll(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        total = params.new_zeros(params.shape[0])
        if len(self.cont_idx):
            log_sigma = self.clamped_log_sigma()
            mean = torch.index_select(params, 1, self.cont_idx)  # backward: index_add, not index_put
            diff = (torch.index_select(x, 1, self.cont_idx) - mean) / log_sigma.exp()
            total = total + (0.5 * diff.pow(2) + log_sigma + 0.5 * _LOG_2PI).sum(-1)
        if self.cats:
            # Per block b: -sum_j x_j log softmax(logits)_j = observed_b * logsumexp_b(logits) - x . logits,
            # observed_b = sum_j x_j: 1 for a one-hot block, 0 for an all-zero one (nothing observed),
            # which adds nothing. The logsumexp is shifted by each block's own max (no gradient flows
            # through it; the value is the same), so no block underflows next to a larger one.
            b, blocks = params.shape[0], len(self.cats)
            logits = torch.index_select(params, 1, self.cat_idx)  # its backward: an index_add, not index_put
            xc = torch.index_select(x, 1, self.cat_idx)
            index = self.cat_block.expand(b, -1)
            with torch.no_grad():
                top = logits.new_full((b, blocks), float("-inf")).scatter_reduce_(1, index, logits, "amax")
            shifted = logits - torch.index_select(top, 1, self.cat_block)
            sums = logits.new_zeros((b, blocks)).index_add(1, self.cat_block, torch.exp(shifted))
            observed = x.new_zeros((b, blocks)).index_add_(1, self.cat_block, xc)
            total = total + (observed * torch.log(sums)).sum(-1) - (xc * shifted).sum(-1)
        return total

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        out = params.clone()
        for b in self.cats:
            out[:, b.start : b.stop] = F.softmax(params[:, b.start : b.stop], -1)
        return out

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        out = params.clone()
        if len(self.cont_idx):
            eps = torch.randn(
                (params.shape[0], len(self.cont_idx)), generator=generator, device=params.device
            )
            out[:, self.cont_idx] = params[:, self.cont_idx] + self.clamped_log_sigma().exp() * eps
        for b in self.cats:
            probs = F.softmax(params[:, b.start : b.stop], -1)
            idx = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            out[:, b.start : b.stop] = F.one_hot(idx, b.width).to(params.dtype)
        return out

    def fill(
        self,
        params: torch.Tensor,
        x: torch.Tensor,
        blocks: list[Block],
        sample: bool,
        generator: torch.Generator | None = None,
    ) -> None:
        """Write `blocks` of x in place: a sample from their distribution under params, or (sample False)
        its mode, a one-hot of the likeliest category and the mean of a continuous slot. An
        autoregressive decoder draws a table this way, one column's blocks at a time."""
        for b in blocks:
            if b.kind == "continuous":
                x[:, b.start : b.stop] = params[:, b.start : b.stop]
                if sample:
                    first = int(torch.searchsorted(self.cont_idx, b.start))
                    sigma = self.clamped_log_sigma()[first : first + b.width].exp()
                    eps = torch.randn((params.shape[0], b.width), generator=generator, device=params.device)
                    x[:, b.start : b.stop] += sigma * eps
                continue
            logits = params[:, b.start : b.stop]
            if sample:
                idx = torch.multinomial(F.softmax(logits, -1), 1, generator=generator).squeeze(-1)
            else:
                idx = logits.argmax(-1)
            x[:, b.start : b.stop] = F.one_hot(idx, b.width).to(x.dtype)


Likelihood = Bernoulli | Gaussian | MixedTabular
