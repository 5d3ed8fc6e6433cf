"""Latent drift: the aggregate posterior of an embedded corpus against the previous night's and N(0, I).

The embed job records, per latent dimension, the count, mean and variance of the posterior means
mu(x) over the corpus. Each night's moments are summarised as a diagonal Gaussian and compared by
KL divergence (nats, summed over dimensions):

    KL(N(m1, v1) || N(m2, v2)) = 1/2 * sum_j [ v1_j / v2_j + (m1_j - m2_j)^2 / v2_j - 1 + log(v2_j / v1_j) ]

Against N(0, I) the number is a baseline, not zero: a VAE's posterior means vary less than the prior
(the rest is posterior noise) and collapsed dimensions hardly vary at all. What matters is the jump
from one night to the next. Variances are floored (VAR_FLOOR) so that collapsed dimensions, whose
means are nearly constant, cannot dominate the sum. Night-over-night KL is meaningful only between
embeddings by the same model version: a new champion has its own latent coordinates.

A night's verdict is a DriftRecord, written as <root>/drift/<name>/<YYYY-MM-DD>/drift.json and read
back by the next night (write_drift_record, read_drift_record, previous_record).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from datetime import date
from typing import Any

import numpy as np

from vae_core.data.objects import atomic_write_json, read_json
from vae_core.data.storage import filesystem, join
from vae_core.errors import InternalError

VAR_FLOOR = 1e-3
DRIFT_FILE = "drift.json"  # <drift>/<name>/<YYYY-MM-DD>/drift.json, written after the embeddings


@dataclass
class LatentStats:
    count: int
    mean: np.ndarray  # (L,)
    var: np.ndarray  # (L,) population variance of mu over the corpus

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatentStats:
        return cls(int(d["count"]), np.asarray(d["mean"], np.float64), np.asarray(d["var"], np.float64))

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean.tolist(), "var": self.var.tolist()}


def pool(parts: list[LatentStats]) -> LatentStats:
    """Moments of the union of several corpora (e.g. the train and test splits)."""
    if not parts:
        raise InternalError("no latent statistics to pool")
    n = sum(p.count for p in parts)
    mean = sum(p.count * p.mean for p in parts) / n
    second = sum(p.count * (p.var + p.mean**2) for p in parts) / n  # E[mu^2]
    return LatentStats(n, mean, np.maximum(second - mean**2, 0.0))


def kl_diag(m1: np.ndarray, v1: np.ndarray, m2: np.ndarray, v2: np.ndarray) -> float:
    """KL(N(m1, diag v1) || N(m2, diag v2)) in nats, variances floored at VAR_FLOOR."""
    v1, v2 = np.maximum(v1, VAR_FLOOR), np.maximum(v2, VAR_FLOOR)
    return float(0.5 * np.sum(v1 / v2 + (m1 - m2) ** 2 / v2 - 1.0 + np.log(v2 / v1)))


def kl_to_prior(stats: LatentStats) -> float:
    return kl_diag(stats.mean, stats.var, np.zeros_like(stats.mean), np.ones_like(stats.var))


@dataclass
class DriftResult:
    kl_prior: float  # KL(tonight || N(0, I))
    kl_previous: float | None  # KL(tonight || previous night), same model version only
    prior_change: float | None  # kl_prior minus the previous night's kl_prior
    threshold: float
    alert: bool
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DriftResult:
        return cls(**{f.name: d[f.name] for f in fields(cls)})


def compare(
    current: LatentStats,
    previous: LatentStats | None,
    *,
    threshold: float,
    same_model: bool,
) -> DriftResult:
    """Tonight's aggregate posterior against the previous night's and N(0, I).

    Alerts when KL(tonight || previous) exceeds `threshold` (same model), or when the KL to the prior
    moved by more than `threshold` since the previous night (any model).
    """
    kl_prior = kl_to_prior(current)
    if previous is None:
        return DriftResult(kl_prior, None, None, threshold, False, ["no previous night to compare with"])
    if previous.mean.shape != current.mean.shape:
        return DriftResult(
            kl_prior, None, None, threshold, True,
            [f"latent size changed from {previous.mean.shape[0]} to {current.mean.shape[0]}"],
        )  # fmt: skip
    reasons, alert = [], False
    change = kl_prior - kl_to_prior(previous)
    kl_previous = None
    if same_model:
        kl_previous = kl_diag(current.mean, current.var, previous.mean, previous.var)
        if kl_previous > threshold:
            alert = True
            reasons.append(f"KL to the previous night {kl_previous:.3f} nats > threshold {threshold:g}")
    else:
        reasons.append("the model changed since the previous night: night-over-night KL not comparable")
    if abs(change) > threshold:
        alert = True
        reasons.append(f"KL to N(0, I) moved by {change:+.3f} nats (threshold {threshold:g})")
    if not alert:
        reasons.append(f"within threshold {threshold:g} nats")
    return DriftResult(kl_prior, kl_previous, change, threshold, alert, reasons)


@dataclass(frozen=True)
class EmbeddedSplit:
    """Where one split's embeddings of the night are: the Delta table and its version."""

    table: str
    version: int


@dataclass
class DriftRecord:
    """One night's drift.json: what was embedded by which model, the pooled moments of mu(x), and the
    verdict against the previous night's record. The file's keys are the fields, with the verdict's
    fields (kl_prior, kl_previous, prior_change, threshold, alert, reasons) at the top level."""

    night: str  # YYYY-MM-DD
    model_version: str
    model_uri: str
    splits: dict[str, EmbeddedSplit]
    stats: LatentStats  # pooled over the splits
    previous_night: str | None
    previous_model_version: str | None
    verdict: DriftResult

    def to_dict(self) -> dict[str, Any]:
        return {
            "night": self.night,
            "model_version": self.model_version,
            "model_uri": self.model_uri,
            "splits": {split: asdict(where) for split, where in self.splits.items()},
            "stats": self.stats.to_dict(),
            "previous_night": self.previous_night,
            "previous_model_version": self.previous_model_version,
            **self.verdict.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DriftRecord:
        return cls(
            night=d["night"],
            model_version=d["model_version"],
            model_uri=d["model_uri"],
            splits={split: EmbeddedSplit(w["table"], int(w["version"])) for split, w in d["splits"].items()},
            stats=LatentStats.from_dict(d["stats"]),
            previous_night=d["previous_night"],
            previous_model_version=d["previous_model_version"],
            verdict=DriftResult.from_dict(d),
        )


def assess(
    night: date,
    model_version: str,
    model_uri: str,
    splits: dict[str, EmbeddedSplit],
    stats: LatentStats,
    previous: DriftRecord | None,
    threshold: float,
) -> DriftRecord:
    """Tonight's record: `stats` (pooled over `splits`) compared with the previous night's record;
    night over night only when both nights embedded with the same model version."""
    same_model = previous is not None and previous.model_version == model_version
    verdict = compare(stats, previous.stats if previous else None, threshold=threshold, same_model=same_model)
    return DriftRecord(
        night=night.isoformat(),
        model_version=model_version,
        model_uri=model_uri,
        splits=splits,
        stats=stats,
        previous_night=previous.night if previous else None,
        previous_model_version=previous.model_version if previous else None,
        verdict=verdict,
    )


def write_drift_record(night_uri: str, record: DriftRecord, storage_options: dict | None = None) -> str:
    """Write <night_uri>/drift.json in one step (a retry overwrites it); returns its URI."""
    uri = join(night_uri, DRIFT_FILE)
    atomic_write_json(uri, record.to_dict(), storage_options)
    return uri


def read_drift_record(night_uri: str, storage_options: dict | None = None) -> DriftRecord | None:
    """The record in <night_uri>/drift.json, or None when the night has none (yet)."""
    d = read_json(join(night_uri, DRIFT_FILE), storage_options)
    return None if d is None else DriftRecord.from_dict(d)


def previous_record(nights_uri: str, before: date, storage_options: dict | None = None) -> DriftRecord | None:
    """The record of the latest night strictly before `before` under `nights_uri` (folders named
    YYYY-MM-DD) that has one, or None."""
    fs, path = filesystem(nights_uri, storage_options)
    fs.invalidate_cache(path)
    if not fs.exists(path):
        return None
    nights = []
    for p in fs.ls(path, detail=False):
        night = p.rstrip("/").rsplit("/", 1)[-1]
        try:
            if date.fromisoformat(night) < before:
                nights.append(night)
        except ValueError:
            continue  # not a night folder
    for night in sorted(nights, reverse=True):
        record = read_drift_record(join(nights_uri, night), storage_options)
        if record is not None:
            return record
    return None
