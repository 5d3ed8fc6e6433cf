"""The beta study: one architecture trained on reconstruction only, on the KL only, and on the full ELBO.

Reconstruction only (beta = 0) is an autoencoder with a noisy code: nothing ties the aggregate
posterior to N(0, I), so prior samples land off the data. KL only makes every q(z|x) the prior: the
code carries nothing and the decoder never learns, so reconstructions are no better than the data mean.
The ELBO sits in between on both: a code close to N(0, I) that still reconstructs.

`beta_study` trains the three arms on tensors; `run_beta_study` runs it on a dataset, saves the three
models and writes the study's report (report.html and metrics.json, the arms side by side).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from vae_core.config import DataConfig, ModelConfig, VaeflowConfig
from vae_core.data.codecs import fit_on_train
from vae_core.data.dataset import is_list_type, list_shards, open_dataset, read_schema
from vae_core.data.objects import atomic_write_bytes
from vae_core.data.storage import join
from vae_core.errors import ConfigError, DataError
from vae_core.models.families import DataShape, build_model
from vae_core.models.likelihoods import Bernoulli
from vae_core.models.model import LatentModel
from vae_core.progress import Progress, quiet
from vae_core.reports import plots
from vae_core.reports.html import json_safe, render_html, write_page
from vae_core.reports.sections import image_sections, section
from vae_core.reports.splits import default_label_column, read_split
from vae_core.training.checkpoints import CheckpointMeta, save_checkpoint
from vae_core.training.evaluation import (
    EvalResult,
    active_units,
    aggregate_posterior,
    evaluate,
    posterior_moments,
)
from vae_core.training.loop import EpochStats, KLSchedule, fit
from vae_core.training.records import EpochRecord


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
    progress: Progress = quiet,
) -> StudyResult:
    """Train `model_cfg` (a variational family) once per arm from the same initial weights.

    x_train, x_test: (N, D) features. Returns each arm's model, history, test ELBO terms, aggregate
    posterior statistics and test posterior means.
    """
    if model_cfg.family != "vae":
        raise ConfigError(
            f"the beta study needs model.family 'vae' (a KL term to weigh), got {model_cfg.family!r}"
        )
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


# ---- the study on a dataset, and its report ------------------------------------------------------

METRICS_FILE = "metrics.json"


@dataclass
class StudyReport:
    html_uri: str
    metrics_uri: str
    metrics: dict


def _vector_data_config(data: DataConfig) -> DataConfig:
    """Fill in the vector column of a dataset whose config leaves it open: its one numeric list
    column, scaled by 255 when it holds uint8, shaped (1, s, s) when its fixed length is a square."""
    if data.vector_column is not None or data.columns is not None:
        return data
    schema = read_schema(list_shards(join(data.uri, "train"), data.storage_options), data.storage_options)
    lists = [f for f in schema if is_list_type(f.type)]
    if len(lists) != 1:
        raise DataError(
            f"{data.uri}: the beta study needs one vector column; found {[f.name for f in lists]} "
            "(set data.vector_column)"
        )
    vector = lists[0]
    update: dict[str, Any] = {"vector_column": vector.name}
    if vector.type.value_type == pa.uint8() and data.scale == 1.0:
        update["scale"] = 255.0
    size = vector.type.list_size if pa.types.is_fixed_size_list(vector.type) else None
    if size and data.image_shape is None and math.isqrt(size) ** 2 == size:
        update["image_shape"] = (1, math.isqrt(size), math.isqrt(size))
    return data.model_copy(update=update)


def write_beta_study_report(
    study: StudyResult,
    out_uri: str,
    x_test: torch.Tensor,
    labels: np.ndarray | None,
    image_shape: tuple[int, int, int] | None,
    extra: Mapping[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> StudyReport:
    """The three arms side by side: latent scatters with their metrics, aggregate posteriors, samples,
    reconstructions, interpolations (recon only vs ELBO) and training curves. x_test: (N, D)."""
    names = [a.arm.name for a in study.arms]
    panels = [
        (
            f"{a.arm.name}\ntest recon {a.test.recon:.1f}, KL {a.test.kl:.2f} nats\n"
            f"KL(moment-matched q(z) || N(0,I)) {a.latent['kl_moment_matched']:.2f}",
            a.mu.numpy(),
        )
        for a in study.arms
    ]
    figures = [
        section(
            "Latent space per objective",
            "Posterior means of test rows under each objective. Reconstruction only: clusters anywhere, "
            "at any scale. KL only: everything collapses onto the prior, no structure. ELBO: structure "
            "within N(0, I).",
            plots.latent_scatters(panels, labels),
        ),
        section(
            "Aggregate posterior against the prior",
            "Per-dimension mean and variance of q(z) = mean over x of q(z|x); the prior is 0 and 1.",
            plots.aggregate_posterior_bars({a.arm.name: a.latent for a in study.arms}),
        ),
        section(
            "Training curves",
            "Reconstruction and KL terms (at weight 1) and the ELBO per epoch, for each objective.",
            plots.training_curves({a.arm.name: [s.to_dict() for s in a.history] for a in study.arms}),
        ),
    ]
    if image_shape is not None:
        models = {a.arm.name: a.model for a in study.arms}
        figures += image_sections(models, x_test, labels, image_shape)
    metrics = json_safe({**study.metrics(), **(extra or {})})
    intro = (
        f"The same architecture trained three ways: {', '.join(names)}. The KL term is what makes the "
        "latent space regular: complete (prior samples decode to data) and continuous (interpolations "
        "change smoothly). Nats per example on the test split."
    )
    html_uri = write_page(
        out_uri, render_html("vaeflow beta study", intro, figures, metrics), storage_options
    )
    metrics_uri = join(out_uri, METRICS_FILE)
    atomic_write_bytes(metrics_uri, json.dumps(metrics, indent=1).encode(), storage_options)
    return StudyReport(html_uri, metrics_uri, metrics)


def _slug(name: str) -> str:
    """'recon only (beta=0)' -> 'recon-only-beta-0': a folder name for an arm's model."""
    slug = "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")
    return "-".join(p for p in slug.split("-") if p)


def run_beta_study(
    data_uri: str,
    out_uri: str,
    *,
    config: VaeflowConfig | None = None,
    latent_dim: int = 2,
    hidden: list[int] | None = None,
    epochs: int = 10,
    max_train_rows: int | None = None,
    max_test_rows: int | None = None,
    label_column: str | None = None,
    progress: Progress = quiet,
) -> StudyReport:
    """Train the three arms of the beta study on a dataset (its one vector column when the config
    names no features), save each model with the codec under out_uri/models/<arm>/ and write
    out_uri/report.html and out_uri/metrics.json.

    config supplies data settings, batch size, lr and seed (its model section is replaced by an MLP
    VAE with `hidden` and `latent_dim` and the codec's likelihood: Bernoulli for features in [0, 1],
    else Gaussian). Its data.storage_options open the data and out_uri alike.
    """
    base = config or VaeflowConfig()
    data = _vector_data_config(base.data.model_copy(update={"uri": data_uri}))
    shards, schema, spec = open_dataset(data, "train")
    # Fitted on the whole training split, as training fits it, so the saved models read data as
    # trained models do.
    codec = fit_on_train(spec, schema, shards, data, base.train.seed)
    label = label_column or default_label_column(spec, schema)
    train = read_split(data, "train", codec, None, max_train_rows)
    test = read_split(data, "test", codec, label, max_test_rows)
    model_cfg = ModelConfig(
        family="vae",
        backbone="mlp",
        hidden=hidden or [256],
        latent_dim=latent_dim,
        likelihood=codec.likelihood,
    )
    progress(f"beta study: {len(train.x):,} train / {len(test.x):,} test rows, {epochs} epochs per objective")
    study = beta_study(
        train.x,
        test.x,
        model_cfg,
        DataShape.of(codec),
        epochs=epochs,
        batch_size=base.train.batch_size,
        lr=base.train.lr,
        seed=base.train.seed,
        progress=progress,
    )
    checkpoints = {}
    for arm in study.arms:
        slug = _slug(arm.arm.name)
        cfg = VaeflowConfig(
            name=f"beta-study-{slug}",
            data=data,
            model=model_cfg,
            train=base.train.model_copy(update={"epochs": epochs, "beta": arm.arm.beta}),
            compute=base.compute,
        )
        meta = CheckpointMeta(
            epoch=epochs,
            history=[EpochRecord.of(s, epochs) for s in arm.history],
            extra={"recon_weight": arm.arm.recon_weight},
        )
        checkpoints[arm.arm.name] = save_checkpoint(
            join(out_uri, "models", slug),
            arm.model,
            cfg,
            codec,
            meta=meta,
            storage_options=data.storage_options,
        )
    extra = {
        "data": {
            "uri": data_uri,
            "train_rows": len(train.x),
            "test_rows": len(test.x),
            "label_column": label,
        },
        "model": model_cfg.model_dump(),
        "epochs": epochs,
        "checkpoints": checkpoints,
    }
    progress(f"writing {join(out_uri, 'report.html')}")
    return write_beta_study_report(
        study, out_uri, test.x, test.labels, codec.image_shape, extra, data.storage_options
    )
