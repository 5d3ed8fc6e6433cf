"""The ex-post latent sampler: a mixture fitted to the aggregate posterior, saved with the checkpoint."""

import pytest
import torch

from tests.conftest import binary_data, small_model
from vae_core.config import ModelConfig, VaeflowConfig
from vae_core.data.codecs.vector import VectorCodec
from vae_core.errors import CheckpointError
from vae_core.models.sampler import fit_gmm, fit_latent_clusters, fit_latent_mixture, fit_latent_posterior
from vae_core.training.checkpoints import SAMPLER_FILE, load_checkpoint, save_checkpoint
from vae_core.training.inference import generate
from vae_core.training.loop import fit


@pytest.fixture(scope="module")
def trained() -> tuple[torch.nn.Module, torch.Tensor]:
    """A VAE with 8 latent dimensions fitted to data from a 2-D latent: a few dimensions active."""
    torch.manual_seed(0)
    model = small_model("vae", latent=8)
    x = binary_data(2_000)
    fit(model, [x[i : i + 100] for i in range(0, len(x), 100)], epochs=30, lr=3e-3)
    return model.eval(), x


def test_the_mixture_is_fitted_to_at_most_max_rows_codes(trained):
    model, x = trained
    # 500 of the 2,000 rows: 400 codes to fit on allow 4 components (one per 100 rows), not 5.
    assert set(fit_latent_mixture(model, x, seed=0, components=5, max_rows=500).heldout) == {1, 4}
    assert set(fit_latent_mixture(model, x, seed=0, components=5).heldout) == {1, 5}


def test_the_mixture_matches_the_codes_of_the_training_rows_on_the_active_dimensions(trained):
    model, x = trained
    mixture = fit_latent_mixture(model, x, seed=0, components=5)
    q = model.encode(x)
    active = torch.nonzero(q.mean.var(0) > 0.01).flatten()
    assert torch.equal(mixture.active, active) and 1 <= len(active) < 8
    # Its size was chosen on held-out training codes: 5 or a third of it, the likelier one kept.
    assert set(mixture.heldout) == {1, 5}
    assert len(mixture.weights) == max(mixture.heldout, key=mixture.heldout.get)
    z = mixture.sample(20_000, torch.Generator().manual_seed(1), torch.device("cpu"))
    assert z.shape == (20_000, 8)
    codes = q.mean + torch.exp(0.5 * q.logvar) * torch.randn_like(q.mean)  # draws of the aggregate posterior
    # Active dimensions: the mixture's moments are those of the codes (the prior's are 0 and I).
    torch.testing.assert_close(z[:, active].mean(0), codes[:, active].mean(0), atol=0.05, rtol=0)
    cov_z, cov_codes = (torch.cov(t[:, active].T) for t in (z, codes))
    torch.testing.assert_close(cov_z, cov_codes, atol=0.08, rtol=0.1)
    # Inactive dimensions carry no information: drawn from N(0, 1).
    inactive = torch.tensor([d for d in range(8) if d not in set(active.tolist())])
    torch.testing.assert_close(z[:, inactive].mean(0), torch.zeros(len(inactive)), atol=0.05, rtol=0)
    torch.testing.assert_close(z[:, inactive].std(0), torch.ones(len(inactive)), atol=0.05, rtol=0)
    # Seeded: the same generator seed gives the same draws.
    again = mixture.sample(20_000, torch.Generator().manual_seed(1), torch.device("cpu"))
    assert torch.equal(z, again)


def test_the_torch_em_fits_the_mixture_sklearns_gaussianmixture_fits():
    """fit_gmm against sklearn's GaussianMixture (the same algorithm in float64 numpy) on correlated
    data from 3 clusters: the same partition, means, covariances and held-out likelihood."""
    import numpy as np
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 4, (3, 6))
    mixing = rng.normal(0, 1, (3, 6, 6))
    data = np.concatenate(
        [rng.normal(size=(n, 6)) @ mixing[j] + centres[j] for j, n in enumerate((900, 600, 300))]
    )
    data = data[rng.permutation(len(data))]
    train, held = data[:1500], data[1500:]
    ref = GaussianMixture(3, covariance_type="full", reg_covar=1e-4, max_iter=200, random_state=0).fit(train)
    ours = fit_gmm(torch.as_tensor(train, dtype=torch.float32), 3, seed=0, tol=1e-3)  # sklearn's tol
    order = [int(np.argmin(((ref.means_ - m) ** 2).sum(1))) for m in ours.means.numpy()]
    assert sorted(order) == [0, 1, 2]  # each of ours matches a different one of sklearn's
    np.testing.assert_allclose(ours.weights.numpy(), ref.weights_[order], atol=1e-3)
    np.testing.assert_allclose(ours.means.numpy(), ref.means_[order], atol=1e-3, rtol=1e-3)
    covs = (ours.chol @ ours.chol.transpose(1, 2)).numpy()
    np.testing.assert_allclose(covs, ref.covariances_[order], atol=1e-3, rtol=1e-3)
    ll = ours.score(torch.as_tensor(held, dtype=torch.float32))
    assert abs(ll - ref.score(held)) < 1e-3, (ll, ref.score(held))


def test_an_autoencoder_has_no_aggregate_posterior_to_fit():
    assert fit_latent_mixture(small_model("ae"), binary_data(100), seed=0) is None


def test_the_mixture_travels_with_the_checkpoint_and_generation_uses_it(tmp_path, trained):
    model, x = trained
    mixture = fit_latent_mixture(model, x, seed=0, components=3)
    cfg = VaeflowConfig(model=ModelConfig(family="vae", hidden=[32], latent_dim=8))
    codec = VectorCodec("x", 16, "float32", unit_interval=True)
    save_checkpoint(str(tmp_path / "ck"), model, cfg, codec, sampler=mixture)
    save_checkpoint(str(tmp_path / "plain"), model, cfg, codec)
    ck, plain = load_checkpoint(str(tmp_path / "ck")), load_checkpoint(str(tmp_path / "plain"))
    assert plain.sampler is None and not (tmp_path / "plain" / SAMPLER_FILE).exists()
    for name, tensor in mixture.to_tensors().items():
        assert torch.equal(ck.sampler.to_tensors()[name], tensor), name
    from_mixture = generate(ck.model, 500, seed=3, sampler=ck.sampler)
    assert torch.equal(from_mixture, generate(model, 500, seed=3, sampler=mixture))
    assert not torch.equal(from_mixture, generate(ck.model, 500, seed=3))  # the prior's draws differ
    # A diagonal one (clusters, posterior) keeps its (K, A) standard deviations.
    posterior = fit_latent_posterior(model, x, seed=0)
    save_checkpoint(str(tmp_path / "diag"), model, cfg, codec, sampler=posterior)
    diag = load_checkpoint(str(tmp_path / "diag"))
    assert diag.sampler.scale_tril.shape == posterior.scale_tril.shape == posterior.means.shape
    assert torch.equal(
        generate(diag.model, 500, seed=3, sampler=diag.sampler),
        generate(model, 500, seed=3, sampler=posterior),
    )
    # A pickle in place of the mixture is refused like any other non-safetensors file.
    (tmp_path / "ck" / SAMPLER_FILE).write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(str(tmp_path / "ck"))


def test_the_mixture_draws_decode_closer_to_the_data_than_the_prior(trained):
    """The point of the sampler: decoded mixture draws lie closer to held-out rows of the data (mean
    distance to the nearest one) than decoded prior draws."""
    model, x = trained
    mixture = fit_latent_mixture(model, x, seed=0, components=5)
    test = binary_data(1_000, seed=9)

    def nearest(samples: torch.Tensor) -> float:
        return torch.cdist(samples, test).min(1).values.mean().item()

    prior = generate(model, 1_000, seed=4)
    post = generate(model, 1_000, seed=4, sampler=mixture)
    assert nearest(post) < nearest(prior), (nearest(post), nearest(prior))


def test_the_clusters_follow_the_codes_with_a_cluster_per_hundred_rows(trained):
    """train.latent_prior=clusters: one diagonal Gaussian per k-means cluster of the posterior means,
    a cluster per 100 rows, weights the clusters' shares; its draws lie where the codes are, closer
    to them than the 3-component full-covariance mixture's draws."""
    model, x = trained
    clusters = fit_latent_clusters(model, x, seed=0)
    with torch.no_grad():
        q = model.encode(x)
    active = torch.nonzero(q.mean.var(0) > 0.01).flatten()
    assert torch.equal(clusters.active, active)
    assert len(clusters.weights) == 20 and abs(float(clusters.weights.sum()) - 1) < 1e-5  # 2,000 rows / 100
    assert clusters.scale_tril.shape == (20, len(active))  # diagonal: standard deviations only
    codes = (
        q.mean
        + torch.exp(0.5 * q.logvar) * torch.randn(q.mean.shape, generator=torch.Generator().manual_seed(5))
    )[:, active]

    def distance(sampler) -> float:  # mean distance of 2,000 draws to their nearest code
        z = sampler.sample(2_000, torch.Generator().manual_seed(1), torch.device("cpu"))[:, active]
        return float(torch.cdist(z, codes).min(1).values.mean())

    assert distance(clusters) < distance(fit_latent_mixture(model, x, seed=0, components=3))
    assert fit_latent_clusters(small_model("ae"), binary_data(100), seed=0) is None

    # train.latent_prior=posterior: q(z) itself, a Gaussian per row (at most max_rows of them).
    posterior = fit_latent_posterior(model, x, seed=0)
    assert torch.equal(posterior.active, active) and len(posterior.weights) == len(x)
    assert torch.allclose(posterior.means, q.mean[:, active]) and posterior.scale_tril.shape == (
        len(x),
        len(active),
    )
    assert torch.allclose(posterior.scale_tril, torch.exp(0.5 * q.logvar[:, active]))
    assert len(fit_latent_posterior(model, x, seed=0, max_rows=500).weights) == 500
    assert fit_latent_posterior(small_model("ae"), binary_data(100), seed=0) is None


@pytest.mark.parametrize("prior", ["posterior", "mixture"])
def test_the_latent_scale_spreads_each_draw_around_its_component(trained, prior):
    """generate.latent_scale: with the same generator, each draw keeps its component and its noise
    is multiplied (diagonal and full-covariance fits, the inactive dimensions' N(0, 1) too); 1 draws
    exactly what no scale draws, and the prior's draws are scaled alike."""
    model, x = trained
    fitted = (
        fit_latent_posterior(model, x, seed=0)
        if prior == "posterior"
        else fit_latent_mixture(model, x, seed=0, components=3)
    )
    cpu = torch.device("cpu")

    def draws(scale: float | None) -> torch.Tensor:
        gen = torch.Generator().manual_seed(3)
        return fitted.sample(4_000, gen, cpu) if scale is None else fitted.sample(4_000, gen, cpu, scale)

    base, doubled = draws(None), draws(2.0)
    assert torch.equal(draws(1.0), base)
    gen = torch.Generator().manual_seed(3)
    torch.randn((4_000, 8), generator=gen)  # the draws' first call: the inactive dimensions
    k = torch.multinomial(fitted.weights, 4_000, replacement=True, generator=gen)
    centre = torch.zeros((4_000, 8))  # inactive dimensions: centred on 0
    centre[:, fitted.active] = fitted.means[k]
    torch.testing.assert_close(doubled - centre, 2 * (base - centre))


def test_the_latent_scale_shrinks_the_priors_draws_towards_its_mean(trained):
    """N(0, I) draws times the scale: near 0 every row decodes to the decoder's output at z = 0;
    1 gives the rows no scale gives."""
    model, _ = trained
    assert torch.equal(generate(model, 500, seed=4, latent_scale=1.0), generate(model, 500, seed=4))
    at_zero = model.likelihood.mean(model.decode(torch.zeros((1, model.latent_dim))))
    shrunk = generate(model, 500, seed=4, latent_scale=1e-6)
    torch.testing.assert_close(shrunk, at_zero.expand(500, -1), atol=1e-4, rtol=0)
    assert not torch.allclose(generate(model, 500, seed=4), at_zero.expand(500, -1), atol=1e-2)
