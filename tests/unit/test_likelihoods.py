"""Likelihoods: nll values against torch.distributions, tabular layout handling."""

import math

import pytest
import torch
from torch.distributions import Bernoulli as TorchBernoulli
from torch.distributions import Normal

from vae_core.data.layout import layout_from_widths
from vae_core.models.likelihoods import Bernoulli, Gaussian, MixedTabular


def test_bernoulli_nll_matches_torch_distribution():
    logits, x = torch.randn(4, 6), torch.bernoulli(torch.full((4, 6), 0.5))
    expected = -TorchBernoulli(logits=logits).log_prob(x).sum(-1)
    assert torch.allclose(Bernoulli().nll(logits, x), expected, atol=1e-5)


@pytest.mark.parametrize("sigma", [0.5, None])
def test_gaussian_nll_matches_torch_distribution(sigma):
    lik = Gaussian(6, sigma)
    mean, x = torch.randn(4, 6), torch.randn(4, 6)
    std = sigma if sigma is not None else 1.0
    expected = -Normal(mean, std).log_prob(x).sum(-1)
    assert torch.allclose(lik.nll(mean, x), expected, atol=1e-5)
    assert (sigma is None) == any(p is lik.log_sigma for p in lik.parameters())


def test_mixed_tabular_nll_is_gaussian_plus_cross_entropy():
    layout = layout_from_widths([("continuous", 1), ("categorical", 3), ("continuous", 1)])
    lik = MixedTabular(layout)
    params = torch.randn(2, 5)
    x = torch.tensor([[0.3, 0.0, 1.0, 0.0, -1.2], [1.0, 1.0, 0.0, 0.0, 0.1]])
    sigma = math.exp(lik.log_sigma[0].item())
    cont = -Normal(params[:, [0, 4]], sigma).log_prob(x[:, [0, 4]]).sum(-1)
    ce = torch.nn.functional.cross_entropy(params[:, 1:4], x[:, 1:4].argmax(-1), reduction="none")
    assert torch.allclose(lik.nll(params, x), cont + ce, atol=1e-5)


def test_mixed_tabular_sample_is_one_hot_per_block():
    layout = layout_from_widths([("categorical", 4), ("continuous", 1)])
    s = MixedTabular(layout).sample(torch.randn(50, 5), torch.Generator().manual_seed(0))
    assert torch.equal(s[:, :4].sum(-1), torch.ones(50))
    assert set(s[:, :4].unique().tolist()) <= {0.0, 1.0}


def test_bad_layout_is_refused():
    with pytest.raises(ValueError, match="bad layout"):
        layout_from_widths([("ordinal", 2)])
    with pytest.raises(ValueError, match="non-empty"):
        MixedTabular([])
