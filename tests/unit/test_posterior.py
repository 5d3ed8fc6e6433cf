"""Posteriors: closed-form KL against Monte Carlo, reparameterised sampling, point mass."""

import torch

from vae_core.models.posterior import DiagonalGaussian, PointMass, standard_normal_log_prob


def test_closed_form_kl_matches_monte_carlo_within_one_percent():
    g = torch.Generator().manual_seed(1)
    mu = torch.randn((3, 8), generator=g)
    logvar = torch.rand((3, 8), generator=g) * 2 - 1
    q = DiagonalGaussian(mu, logvar)
    z = mu + torch.exp(0.5 * logvar) * torch.randn((200_000, 3, 8), generator=g)  # (S, B, L)
    mc = (q.log_prob(z) - standard_normal_log_prob(z)).mean(0)  # E_q[log q - log p]: (B,)
    closed = q.kl()
    assert torch.all((mc - closed).abs() / closed < 0.01), (mc, closed)


def test_kl_is_zero_for_the_prior_itself():
    q = DiagonalGaussian(torch.zeros(2, 5), torch.zeros(2, 5))
    assert torch.allclose(q.kl(), torch.zeros(2))


def test_reparameterised_sample_has_posterior_moments_and_gradients():
    mu = torch.tensor([[1.0, -2.0]], requires_grad=True)
    logvar = torch.tensor([[0.0, 2 * torch.log(torch.tensor(3.0)).item()]], requires_grad=True)
    q = DiagonalGaussian(mu.expand(100_000, 2), logvar.expand(100_000, 2))
    z = q.sample(torch.Generator().manual_seed(0))
    assert torch.allclose(z.mean(0), torch.tensor([1.0, -2.0]), atol=0.05)
    assert torch.allclose(z.std(0), torch.tensor([1.0, 3.0]), atol=0.05)
    z.sum().backward()
    assert mu.grad is not None and logvar.grad is not None


def test_point_mass_is_deterministic_with_zero_kl():
    z = torch.randn(4, 3)
    q = PointMass(z)
    assert q.sample() is z and q.mean is z and q.logvar is None
    assert torch.equal(q.kl(), torch.zeros(4))
