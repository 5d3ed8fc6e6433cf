"""Model families behind one interface: shapes, finite losses, beta = 0 vs AE, DAE corruption, overfitting."""

import pytest
import torch

from tests.conftest import binary_data, small_model
from vae_core.config import FAMILIES, ModelConfig
from vae_core.data.layout import layout_from_widths
from vae_core.errors import ConfigError
from vae_core.models.families import DataShape, build_model
from vae_core.models.posterior import DiagonalGaussian, PointMass
from vae_core.training.loop import fit

CASES = [
    ("ae", "mlp", "bernoulli"),
    ("dae", "mlp", "gaussian"),
    ("vae", "mlp", "bernoulli"),
    ("vae", "conv", "bernoulli"),
    ("ae", "conv", "gaussian"),
    ("vae", "mlp", "tabular"),
]


@pytest.mark.parametrize("family,backbone,likelihood", CASES)
def test_shapes_and_finite_loss(family, backbone, likelihood):
    extra = {"corruption": "gaussian"} if family == "dae" else {}
    cfg = ModelConfig(
        family=family,
        backbone=backbone,
        likelihood=likelihood,
        hidden=[32],
        latent_dim=3,
        conv_channels=[4, 8],
        **extra,
    )
    layout = layout_from_widths([("continuous", 2), ("categorical", 3), ("categorical", 3)])
    shape = DataShape(8, None, layout) if likelihood == "tabular" else DataShape(3 * 5 * 7, (3, 5, 7))
    model = build_model(cfg, shape)
    x = torch.rand(6, shape.dim)
    q = model.encode(x)
    assert q.mean.shape == (6, 3)
    assert isinstance(q, DiagonalGaussian if family == "vae" else PointMass)
    assert model.decode(q.mean).shape == (6, shape.dim)
    out = model(x)
    terms = model.loss(x, out, kl_weight=0.5)
    assert terms.recon.shape == terms.kl.shape == (6,)
    assert torch.isfinite(terms.loss)
    if family != "vae":
        assert torch.equal(terms.kl, torch.zeros(6))
    terms.loss.backward()


def test_registry_holds_the_three_families():
    assert {"ae", "dae", "vae"} <= set(FAMILIES)


def test_vae_with_beta_zero_has_the_ae_reconstruction_term():
    vae, ae = small_model("vae"), small_model("ae")
    missing = ae.load_state_dict(vae.state_dict(), strict=False)
    assert missing.missing_keys == [] and missing.unexpected_keys == [
        "head.logvar.weight",
        "head.logvar.bias",
    ]
    # A vanishing posterior variance makes the VAE's sampled z its mean, the AE's code.
    with torch.no_grad():
        vae.head.logvar.weight.zero_()
        vae.head.logvar.bias.fill_(-40.0)
    x = binary_data(64)
    out_v, out_a = vae(x), ae(x)
    loss_v, loss_a = vae.loss(x, out_v, kl_weight=0.0), ae.loss(x, out_a, kl_weight=0.0)
    assert torch.allclose(loss_v.recon, loss_a.recon, atol=1e-5)
    assert torch.allclose(loss_v.loss, loss_a.loss, atol=1e-5)
    # beta = 0 drops the KL from the objective even though the KL itself is large here.
    assert loss_v.kl.mean() > 10 and torch.allclose(loss_v.loss, loss_v.recon.mean())


@pytest.mark.parametrize("corruption", ["gaussian", "mask"])
def test_dae_corrupts_in_training_only_and_targets_the_clean_input(corruption):
    model = small_model("dae", corruption=corruption, mask_prob=0.5)
    seen = []
    model.encoder.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].clone()))
    x = binary_data(32)
    model.train()
    out = model(x)
    assert not torch.equal(seen[-1], x)
    assert torch.allclose(model.loss(x, out).recon, model.likelihood.nll(out.params, x))
    model.eval()
    model(x)
    assert torch.equal(seen[-1], x)


@pytest.mark.parametrize("family", ["ae", "dae", "vae"])
def test_each_family_overfits_a_small_batch(family):
    model = small_model(family, latent=4)
    x = binary_data(32)
    history = fit(model, [x], epochs=600, lr=1e-2)
    # The objective each family optimises (for the VAE: recon + KL) falls well below its start.
    assert history[-1].loss < 0.6 * history[0].loss, (history[0], history[-1])
    if family == "ae":
        assert history[-1].recon < 0.1 * history[0].recon  # a plain AE memorises 32 points


def test_config_mistakes_are_refused():
    with pytest.raises(ValueError, match="unknown model family"):
        ModelConfig(family="gan")
    with pytest.raises(ValueError, match="needs corruption"):
        ModelConfig(family="dae")
    with pytest.raises(ValueError, match="use family 'dae'"):
        ModelConfig(family="vae", corruption="mask")
    with pytest.raises(ConfigError, match="image_shape"):
        build_model(ModelConfig(backbone="conv"), DataShape(16))
