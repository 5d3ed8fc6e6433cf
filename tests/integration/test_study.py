"""The beta study on MNIST: recon only, KL only and the ELBO differ measurably, the ELBO in between."""

import pytest
import torch

from vae_core.config import ModelConfig
from vae_core.data.packaged import read_mnist
from vae_core.models.families import DataShape
from vae_core.reports.study import beta_study, data_mean_recon

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def _mean_code_recon(model, x: torch.Tensor) -> float:
    """-log p(x | z = mu(x)) per image: reconstruction quality without sampling noise."""
    with torch.no_grad():
        return model.likelihood.nll(model.decode(model.encode(x).mean), x).mean().item()


@pytest.fixture(scope="module")
def study():
    _, train_px = read_mnist("train")
    _, test_px = read_mnist("test")
    x_train = torch.from_numpy(train_px[:4000]).float() / 255.0  # (4000, 784)
    x_test = torch.from_numpy(test_px[:1000]).float() / 255.0  # (1000, 784)
    cfg = ModelConfig(family="vae", hidden=[128], latent_dim=2, likelihood="bernoulli")
    result = beta_study(x_train, x_test, cfg, DataShape(784, (1, 28, 28)), epochs=6, batch_size=64, lr=4e-3)
    return result, x_test


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_beta_study_separates_the_three_objectives(study):
    result, x_test = study
    recon_only, kl_only, elbo = result.arms
    assert [a.arm.beta for a in result.arms] == [0.0, 1.0, 1.0]
    assert [a.arm.recon_weight for a in result.arms] == [1.0, 0.0, 1.0]
    assert recon_only.history[-1].kl_weight == 0.0

    # beta = 0: nothing pulls q(z) to the prior; the moment-matched aggregate posterior is far from N(0, I).
    assert recon_only.test.kl > 10.0
    assert recon_only.latent["kl_moment_matched"] > 3.0
    # KL only: every posterior is the prior (KL ~ 0, q(z) = N(0, I)) and reconstructions are no better
    # than coding every image with the per-pixel training mean.
    assert kl_only.test.kl < 0.05
    assert kl_only.latent["kl_moment_matched"] < 0.05
    assert kl_only.active_units == 0
    assert kl_only.test.recon >= result.data_mean_recon
    # The ELBO lies strictly in between on both measures.
    assert kl_only.test.kl < elbo.test.kl < recon_only.test.kl
    agg = [a.latent["kl_moment_matched"] for a in (kl_only, elbo, recon_only)]
    assert agg[0] < agg[1] < agg[2]
    assert agg[1] < 0.25 * agg[2]
    recon = [_mean_code_recon(a.model, x_test) for a in (recon_only, elbo, kl_only)]
    assert recon[0] < recon[1] < result.data_mean_recon < recon[2], recon
    assert recon_only.test.recon < elbo.test.recon < result.data_mean_recon


def test_data_mean_recon_is_the_bernoulli_nll_at_the_training_mean():
    x_train = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    x_test = torch.tensor([[1.0, 1.0]])
    # p = (1, 0.5), clamped to 1 - 1e-4: -log p(x) = -log(1 - 1e-4) - log 0.5.
    expected = -torch.log(torch.tensor(1 - 1e-4)).item() + torch.log(torch.tensor(2.0)).item()
    assert data_mean_recon(x_train, x_test) == pytest.approx(expected, rel=1e-4)
