"""The beta study: one architecture trained on reconstruction only, on the KL only, and on the full ELBO.

Reconstruction only (beta = 0) is an autoencoder with a noisy code: nothing ties the aggregate
posterior to N(0, I), so prior samples land off the data. KL only makes every q(z|x) the prior: the
code carries nothing and the decoder never learns, so reconstructions are no better than the data mean.
The ELBO sits in between on both: a code close to N(0, I) that still reconstructs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from vae_core.config import ModelConfig
from vae_core.models.families import DataShape, build_model
from vae_core.models.likelihoods import Bernoulli
from vae_core.models.model import LatentModel
from vae_core.training.evaluation import (
    EvalResult,
    active_units,
    aggregate_posterior,
    evaluate,
    posterior_moments,
)
from vae_core.training.loop import EpochStats, KLSchedule, fit


@dataclass(frozen=True)
class Arm:
    """One training objective: recon_weight * recon + beta * KL."""

    name: str
    recon_weight: float
    beta: float


ARMS = (
    Arm("recon only (beta=0)", recon_weight=1.0, beta=0.0),
    Arm("KL only", recon_weight=0.0, beta=1.0),
    Arm("ELBO (beta=1)", recon_weight=1.0, beta=1.0),
)


@dataclass
class ArmResult:
    arm: Arm
    model: LatentModel = field(repr=False)
    history: list[EpochStats]
    test: EvalResult  # at kl weight 1 and recon weight 1, whatever the arm trained on
    latent: dict  # vae_core.training.evaluation.aggregate_posterior on the test split
    active_units: int
    mu: torch.Tensor = field(repr=False)  # (N_test, L) posterior means, for the scatter

    def metrics(self) -> dict:
        return {
            "recon_weight": self.arm.recon_weight,
            "beta": self.arm.beta,
            "test": self.test.to_dict(),
            "aggregate_posterior": self.latent,
            "active_units": self.active_units,
            "history": [s.to_dict() for s in self.history],
        }


@dataclass
class StudyResult:
    arms: list[ArmResult]
    data_mean_recon: float | None  # test recon (nats) of the per-feature training mean; Bernoulli only

    def metrics(self) -> dict:
        return {
            "arms": {a.arm.name: a.metrics() for a in self.arms},
            "data_mean_recon": self.data_mean_recon,
        }


def data_mean_recon(x_train: torch.Tensor, x_test: torch.Tensor) -> float:
    """-log p(x_test) per example under independent Bernoullis at the training mean: the floor a
    decoder that ignores z can reach. x: (N, D) in [0, 1]."""
    p = x_train.double().mean(0).clamp(1e-4, 1 - 1e-4)
    logits = (torch.log(p) - torch.log1p(-p)).float().expand_as(x_test)
    return Bernoulli().nll(logits, x_test).mean().item()


def beta_study(
    x_train: torch.Tensor,
    x_test: torch.Tensor,
    model_cfg: ModelConfig,
    shape: DataShape,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    arms: Sequence[Arm] = ARMS,
    progress: Callable[[str], None] | None = None,
) -> StudyResult:
    """Train `model_cfg` (a variational family) once per arm from the same initial weights.

    x_train, x_test: (N, D) features. Returns each arm's model, history, test ELBO terms, aggregate
    posterior statistics and test posterior means.
    """
    if model_cfg.family != "vae":
        raise ValueError(f"the beta study needs family 'vae' (a KL term to weigh), got {model_cfg.family!r}")
    torch.manual_seed(seed)
    init = build_model(model_cfg, shape).state_dict()
    test_batches = [x_test[i : i + 1000] for i in range(0, len(x_test), 1000)]
    results = []
    for arm in arms:
        model = build_model(model_cfg, shape)
        model.load_state_dict(init)
        torch.manual_seed(seed)

        def batches(epoch: int) -> list[torch.Tensor]:
            perm = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed + epoch))
            return [x_train[perm[i : i + batch_size]] for i in range(0, len(perm), batch_size)]

        def report(s: EpochStats, _m: LatentModel, _o: torch.optim.Optimizer, arm: Arm = arm) -> None:
            if progress is not None:
                progress(f"{arm.name}: epoch {s.epoch}/{epochs}  recon {s.recon:.2f}  kl {s.kl:.2f}")

        history = fit(
            model,
            batches,
            epochs=epochs,
            lr=lr,
            schedule=KLSchedule(beta=arm.beta),
            recon_weight=arm.recon_weight,
            on_epoch=report,
        )
        mu, logvar = posterior_moments(model, test_batches)
        results.append(
            ArmResult(
                arm,
                model,
                history,
                evaluate(model, test_batches, seed=seed),
                aggregate_posterior(mu, logvar),
                active_units(model, test_batches),
                mu,
            )
        )
    is_bernoulli = model_cfg.likelihood == "bernoulli"
    return StudyResult(results, data_mean_recon(x_train, x_test) if is_bernoulli else None)
