"""Evaluation: ELBO terms, the IWAE bound above the ELBO on a trained model, active units."""

import pytest
import torch

from tests.conftest import binary_data, small_model
from vae_core.errors import InternalError
from vae_core.training.evaluation import active_units, evaluate, iwae_log_likelihood
from vae_core.training.loop import fit


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model, x = small_model("vae", dim=16, latent=4), binary_data(1024)
    fit(model, lambda e: [x[i : i + 64] for i in range(0, 1024, 64)], epochs=30, lr=3e-3)
    return model, binary_data(512, seed=1)


def test_evaluate_reports_per_example_nats(trained):
    model, x = trained
    res = evaluate(model, [x[:256], x[256:]])
    assert res.n == 512 and res.kl > 0
    assert res.elbo == pytest.approx(-(res.recon + res.kl))
    # A trained model beats coding each of the 16 bits with a fair coin (16 log 2 = 11.1 nats).
    assert -res.elbo < 16 * torch.log(torch.tensor(2.0)).item()


def test_iwae_k64_is_at_least_the_elbo_on_a_trained_model(trained):
    model, x = trained
    elbos = [evaluate(model, [x], seed=s).elbo for s in range(5)]
    iwae = iwae_log_likelihood(model, [x[:256], x[256:]], k=64, chunk=16)
    assert iwae >= max(elbos), (iwae, elbos)
    # k = 1 is the ELBO itself in expectation: close to the one-sample estimates, below k = 64.
    iwae1 = iwae_log_likelihood(model, [x], k=1)
    assert iwae1 < iwae and abs(iwae1 - sum(elbos) / 5) < 0.2


def test_active_units_counts_used_latent_dimensions(trained):
    model, x = trained
    n_active = active_units(model, [x])
    assert 1 <= n_active <= 4
    # Collapse one dimension by hand: it must no longer count.
    with torch.no_grad():
        model_copy = small_model("vae", dim=16, latent=4)
        model_copy.load_state_dict(model.state_dict())
        model_copy.head.mu.weight[0].zero_()
    assert active_units(model_copy, [x]) <= n_active - (1 if n_active == 4 else 0)


def test_iwae_refuses_a_deterministic_autoencoder():
    with pytest.raises(InternalError, match="variational"):
        iwae_log_likelihood(small_model("ae"), [binary_data(8)], k=4)


def test_aggregate_posterior_is_near_the_prior_for_prior_draws_and_far_otherwise():
    from vae_core.training.evaluation import aggregate_posterior

    g = torch.Generator().manual_seed(0)
    # Means ~ N(0, 0.5 I) with posterior variance 0.5: q(z) has covariance I (law of total variance).
    mu = torch.randn((20_000, 3), generator=g) * 0.5**0.5
    near = aggregate_posterior(mu, torch.full_like(mu, 0.5).log())
    assert near["var"] == pytest.approx([1.0] * 3, abs=0.05) and near["kl_moment_matched"] < 0.01
    assert near["mean_posterior_var"] == pytest.approx(0.5)
    # An AE-like code: no posterior variance, offset and scaled.
    far = aggregate_posterior(3.0 * torch.randn((20_000, 3), generator=g) + 2.0)
    assert far["kl_moment_matched"] > 10 and far["mean_abs_mu"] > 2 and far["mean_posterior_var"] == 0.0
    assert far["kl_moment_matched_diag"] == pytest.approx(far["kl_moment_matched"], rel=0.05)


def test_posterior_moments_returns_no_logvar_for_an_autoencoder():
    from vae_core.training.evaluation import posterior_moments

    mu, logvar = posterior_moments(small_model("ae"), [binary_data(8), binary_data(4)])
    assert mu.shape == (12, 4) and logvar is None
    mu, logvar = posterior_moments(small_model("vae"), [binary_data(8)])
    assert logvar is not None and logvar.shape == mu.shape


def test_a_batch_source_that_fails_leaves_the_model_in_its_training_mode():
    model = small_model("dae", dim=16, latent=4)  # a DAE corrupts its input only in training mode
    model.train()

    def failing():
        yield binary_data(8)
        raise ValueError("part-3.parquet: column 'v': row 2 is a null vector")

    with pytest.raises(ValueError, match="row 2 is a null vector"):
        evaluate(model, failing())
    assert model.training
    model.eval()
    evaluate(model, [binary_data(8)])
    assert not model.training
