"""Inference functions: embed (mean, logvar), reconstruct, seeded generation, interpolation."""

import pytest
import torch

from tests.conftest import binary_data, small_model
from vae_core.errors import InternalError
from vae_core.training.inference import embed, generate, interpolate, reconstruct


def test_embed_returns_the_posterior_mean_not_a_sample():
    model, x = small_model("vae", latent=5), binary_data(10)
    mu = embed(model, x)
    assert mu.shape == (10, 5)
    assert torch.equal(mu, embed(model, x))  # deterministic
    mu2, logvar = embed(model, x, with_logvar=True)
    assert torch.equal(mu, mu2) and logvar.shape == (10, 5)
    _, none = embed(small_model("ae"), x, with_logvar=True)
    assert none is None


def test_embed_in_chunks_equals_one_pass():
    model, x = small_model("vae", latent=5), binary_data(10)
    mu, logvar = embed(model, x, with_logvar=True)
    mu3, logvar3 = embed(model, x, with_logvar=True, chunk_rows=3)  # chunks of 3, 3, 3, 1 rows
    torch.testing.assert_close(mu3, mu)
    torch.testing.assert_close(logvar3, logvar)
    assert embed(model, x[:0]).shape == (0, 5)


def test_embed_does_not_corrupt_a_dae_input():
    model, x = small_model("dae", corruption="mask", mask_prob=0.9), binary_data(10)
    model.train()
    assert torch.equal(embed(model, x), embed(model, x))


def test_reconstruct_is_in_data_space():
    model, x = small_model("vae"), binary_data(10)
    r = reconstruct(model, x)
    assert r.shape == x.shape and r.min() >= 0 and r.max() <= 1


def test_generate_is_seeded():
    model = small_model("vae")
    a, b, c = generate(model, 7, seed=3), generate(model, 7, seed=3), generate(model, 7, seed=4)
    assert a.shape == (7, 16) and torch.equal(a, b) and not torch.equal(a, c)
    s = generate(model, 7, seed=3, sample_likelihood=True)
    assert set(s.unique().tolist()) <= {0.0, 1.0}
    # Chunks draw from the same generator: seeded as a whole, and the first chunk is the first rows.
    chunked = generate(model, 7, seed=3, chunk_rows=2)
    assert chunked.shape == (7, 16) and torch.equal(chunked, generate(model, 7, seed=3, chunk_rows=2))
    torch.testing.assert_close(chunked[:2], generate(model, 2, seed=3))


def test_interpolation_starts_and_ends_at_the_reconstructions():
    model, x = small_model("vae"), binary_data(2)
    path = interpolate(model, x[0], x[1], steps=6)
    assert path.shape == (6, 16)
    ends = reconstruct(model, x)
    assert torch.allclose(path[0], ends[0], atol=1e-6) and torch.allclose(path[-1], ends[1], atol=1e-6)
    with pytest.raises(InternalError, match="at least 2 steps"):
        interpolate(model, x[0], x[1], steps=1)
