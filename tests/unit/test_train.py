"""The pure training loop: KL schedule, callback seam, NaN guard, resume, grad clipping."""

import itertools
import math

import pytest
import torch

from tests.conftest import binary_data, small_model
from vae_core.errors import NoExamplesError, NonFiniteLossError
from vae_core.training.loop import KLSchedule, LRSchedule, fit


def test_kl_warmup_is_linear_in_epochs_or_steps():
    assert KLSchedule(2.0).weight(0, 0) == 2.0
    by_epoch = KLSchedule(2.0, warmup_epochs=4)
    assert [by_epoch.weight(e, 0) for e in range(6)] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]
    by_step = KLSchedule(1.0, warmup_steps=10)
    assert by_step.weight(0, 5) == 0.5 and by_step.weight(3, 50) == 1.0


def test_the_cosine_lr_falls_from_lr_towards_zero_and_a_resumed_fit_sets_each_epochs_rate():
    assert [LRSchedule(0.1).rate(e) for e in (0, 7)] == [0.1, 0.1]
    cosine = LRSchedule(0.1, "cosine", epochs=4)
    rates = [cosine.rate(e) for e in range(4)]
    assert rates[0] == 0.1 and math.isclose(rates[2], 0.05)
    assert all(a > b for a, b in itertools.pairwise(rates)) and 0 < rates[3] < 0.02
    model, x = small_model(), binary_data(32)
    opt = torch.optim.Adam(model.parameters(), lr=123.0)  # a restored optimizer's rate is overwritten
    seen = []
    fit(
        model,
        [x],
        epochs=4,
        optimizer=opt,
        lr_schedule=cosine,
        start_epoch=1,
        start_step=1,
        on_epoch=lambda stats, m, o: seen.append(o.param_groups[0]["lr"]),
    )
    assert seen == rates[1:]


def test_fit_reports_each_epoch_through_the_callback_with_the_scheduled_weight():
    model, x = small_model(), binary_data(64)
    seen = []
    history = fit(
        model,
        lambda epoch: [x[:32], x[32:]],
        epochs=3,
        schedule=KLSchedule(1.0, warmup_epochs=2),
        on_epoch=lambda stats, m, opt: seen.append((stats.epoch, stats.kl_weight, stats.samples, stats.step)),
    )
    assert seen == [(1, 0.0, 64, 2), (2, 0.5, 64, 4), (3, 1.0, 64, 6)]
    assert [h.epoch for h in history] == [1, 2, 3]
    assert all(math.isclose(h.elbo, -(h.recon + h.kl)) for h in history)


def test_non_finite_loss_raises_with_step_and_terms():
    model, x = small_model(), binary_data(16)
    x[3, 2] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 1: loss=nan, recon=nan, kl="):
        fit(model, [x], epochs=1)


def test_resume_continues_epoch_and_step_counts_with_the_given_optimizer():
    model, x = small_model(), binary_data(32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = fit(model, [x], epochs=2, optimizer=opt)
    rest = fit(model, [x], epochs=4, optimizer=opt, start_epoch=2, start_step=first[-1].step)
    assert [h.epoch for h in rest] == [3, 4] and rest[-1].step == 4
    assert opt.state_dict()["state"][0]["step"].item() == 4


def test_grad_clipping_bounds_the_update():
    x = binary_data(16)
    a, b = small_model(), small_model()
    b.load_state_dict(a.state_dict())
    before = [p.detach().clone() for p in a.parameters()]
    fit(a, [x], epochs=1, lr=1.0, optimizer=torch.optim.SGD(a.parameters(), lr=1.0), grad_clip=1e-3)
    fit(b, [x], epochs=1, lr=1.0, optimizer=torch.optim.SGD(b.parameters(), lr=1.0))
    step_a = torch.sqrt(sum(((p - q) ** 2).sum() for p, q in zip(a.parameters(), before, strict=True)))
    step_b = torch.sqrt(sum(((p - q) ** 2).sum() for p, q in zip(b.parameters(), before, strict=True)))
    assert step_a <= 1e-3 + 1e-6 < step_b


def test_empty_batch_source_is_an_error():
    with pytest.raises(NoExamplesError, match="no data"):
        fit(small_model(), [], epochs=1)


def test_recon_weight_zero_trains_on_the_kl_alone():
    model, x = small_model("vae"), binary_data(256)
    decoder_before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    history = fit(model, [x[i : i + 64] for i in range(0, 256, 64)], epochs=20, lr=1e-2, recon_weight=0.0)
    # No reconstruction term: the decoder gets no gradient, and the posteriors collapse onto the prior.
    for k, v in model.decoder.state_dict().items():
        assert torch.equal(v, decoder_before[k]), k
    assert history[-1].kl < 0.1 * history[0].kl
    assert history[-1].loss == pytest.approx(history[-1].kl, rel=1e-5)


def test_the_optimizer_is_torchs_fused_adam_and_steps_as_the_per_tensor_adam_does():
    from vae_core.training.loop import make_optimizer

    fused_model, x = small_model(), binary_data(32)
    reference = small_model()
    reference.load_state_dict(fused_model.state_dict())
    fused = make_optimizer(fused_model, 1e-2)
    assert fused.defaults["fused"] is True
    torch.manual_seed(7)  # the same reparameterisation noise for both
    fit(fused_model, [x[:16], x[16:]], epochs=3, optimizer=fused)
    torch.manual_seed(7)
    fit(reference, [x[:16], x[16:]], epochs=3, optimizer=torch.optim.Adam(reference.parameters(), lr=1e-2))
    for a, b in zip(fused_model.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_weight_decay_pulls_weights_towards_zero_as_adams_l2_penalty():
    from vae_core.config import TrainConfig
    from vae_core.training.loop import make_optimizer

    assert TrainConfig().weight_decay == 0.0
    with pytest.raises(ValueError, match="weight_decay"):
        TrainConfig(weight_decay=-1e-5)
    plain, decayed, x = small_model(), small_model(), binary_data(32)
    decayed.load_state_dict(plain.state_dict())
    optimizers = {"plain": make_optimizer(plain, 1e-2), "decayed": make_optimizer(decayed, 1e-2, 0.5)}
    assert optimizers["decayed"].defaults["weight_decay"] == 0.5
    norm = {}
    for name, m in (("plain", plain), ("decayed", decayed)):
        torch.manual_seed(7)  # the same reparameterisation noise for both
        fit(m, [x[:16], x[16:]], epochs=5, optimizer=optimizers[name])
        norm[name] = sum(p.detach().pow(2).sum() for p in m.parameters())
    assert norm["decayed"] < 0.9 * norm["plain"]
