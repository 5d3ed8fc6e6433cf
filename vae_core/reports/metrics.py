"""The numbers of a model report: held-out ELBO terms, the IWAE bound, active units, the aggregate
posterior, and for data with table columns the quality of rows sampled from the model."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import torch

from vae_core.data.arrow_types import temporal_as_numbers
from vae_core.data.codecs import Codec
from vae_core.data.dataset import DatasetSpec
from vae_core.models.model import LatentModel
from vae_core.models.sampler import LatentMixture
from vae_core.progress import Progress
from vae_core.reports.quality import synthetic_quality
from vae_core.reports.splits import SplitData, eval_batches
from vae_core.training.evaluation import (
    EvalResult,
    active_units,
    aggregate_posterior,
    evaluate,
    iwae_log_likelihood,
    posterior_moments,
)
from vae_core.training.inference import generate
from vae_core.training.model_report import IwaeBound


@dataclass
class LatentScores:
    """How well a model explains held-out x and how its codes sit against the prior."""

    test: EvalResult  # one-sample ELBO terms
    iwae: IwaeBound  # log_likelihood None for an AE
    active_units: int
    aggregate_posterior: dict[str, Any]  # vae_core.training.evaluation.aggregate_posterior
    mu: torch.Tensor  # (N, L) posterior means, for the latent scatter


def score_model(
    model: LatentModel, x: torch.Tensor, iwae_k: int, seed: int, progress: Progress
) -> LatentScores:
    """Evaluate `model` (in eval mode) on x (N, D): ELBO terms, the IWAE bound with iwae_k samples (a
    variational model), active units and the aggregate posterior."""
    batches = eval_batches(x)
    iwae = IwaeBound(log_likelihood=None, k=iwae_k, n=0)
    if model.is_variational:
        batches_k = _said(eval_batches(x, 250), len(x), iwae_k, progress)
        ll = iwae_log_likelihood(model, batches_k, k=iwae_k, chunk=min(iwae_k, 100), seed=seed)
        iwae = IwaeBound(log_likelihood=ll, k=iwae_k, n=len(x))
    mu, logvar = posterior_moments(model, batches)
    return LatentScores(
        evaluate(model, batches, seed=seed),
        iwae,
        active_units(model, batches),
        aggregate_posterior(mu, logvar),
        mu,
    )


PROGRESS_EVERY_S = 10.0


def _said(batches: list[torch.Tensor], rows: int, k: int, progress: Progress) -> Iterator[torch.Tensor]:
    """The batches, with a progress line at the start and every PROGRESS_EVERY_S seconds (the IWAE
    bound decodes k samples per row: minutes on a large test split)."""
    progress(f"importance-weighted bound: {k:,} samples for each of {rows:,} rows")
    done, t0 = 0, time.monotonic()
    said = t0
    for batch in batches:
        yield batch
        done += len(batch)
        if time.monotonic() - said > PROGRESS_EVERY_S and done < rows:
            progress(f"importance-weighted bound: {done:,} of {rows:,} rows ({time.monotonic() - t0:.0f} s)")
            said = time.monotonic()


def sample_quality(
    model: LatentModel,
    codec: Codec,
    spec: DatasetSpec,
    train: SplitData,
    test: SplitData,
    target: str | None,
    seed: int,
    progress: Progress,
    sampler: LatentMixture | None = None,
    latent_scale: float = 1.0,
) -> tuple[dict[str, Any], pa.Table]:
    """reports.quality.synthetic_quality of as many rows sampled from the model as `train` holds
    (z from `sampler`, the checkpoint's latent mixture, as `vaeflow generate` takes it, else N(0, I),
    its noise times `latent_scale`;
    x ~ p(x|z), decoded by the codec), against the real train and test rows of the data's table
    columns (spec.continuous, spec.categorical); and the sampled rows."""
    n = train.table.num_rows
    where = "the latent mixture" if sampler is not None else "N(0, I)"
    where += f" at latent scale {latent_scale:g}" if latent_scale != 1.0 else ""
    progress(
        f"synthetic quality: sampling {n:,} rows (z from {where}) and comparing with {n:,} train / "
        f"{len(test.x):,} test rows (SDMetrics' QualityReport and DiagnosticReport, ML efficacy, "
        "detection, privacy)"
    )
    x = generate(model, n, seed=seed, sample_likelihood=True, sampler=sampler, latent_scale=latent_scale)
    synthetic = temporal_as_numbers(codec.decode(x.numpy()))
    quality = synthetic_quality(
        train.table, test.table, synthetic, spec.continuous, spec.categorical, target=target, seed=seed
    )
    return quality, synthetic
