"""Latent drift: pooled moments, the diagonal-Gaussian KL, and when a jump is reported."""

from datetime import date

import numpy as np
import pytest
import torch

from vae_core.data.objects import atomic_write_json, read_json
from vae_core.data.storage import join
from vae_core.operations.drift import (
    DRIFT_FILE,
    DriftRecord,
    EmbeddedSplit,
    LatentStats,
    assess,
    compare,
    kl_diag,
    kl_to_prior,
    pool,
    previous_record,
    read_drift_record,
    write_drift_record,
)


def _stats(z: np.ndarray) -> LatentStats:
    return LatentStats(len(z), z.mean(0), z.var(0))


def test_pooled_moments_equal_those_of_the_union():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.5, 2.0, (300, 4)), rng.normal(-1.0, 0.5, (100, 4))
    pooled = pool([_stats(a), _stats(b)])
    union = _stats(np.concatenate([a, b]))
    assert pooled.count == 400
    np.testing.assert_allclose(pooled.mean, union.mean)
    np.testing.assert_allclose(pooled.var, union.var)


def test_kl_matches_torch_and_is_zero_for_identical_moments():
    m1, v1 = np.array([0.3, -1.0]), np.array([0.5, 2.0])
    m2, v2 = np.array([0.0, 0.5]), np.array([1.0, 0.7])
    p = torch.distributions.Normal(torch.tensor(m1), torch.tensor(v1).sqrt())
    q = torch.distributions.Normal(torch.tensor(m2), torch.tensor(v2).sqrt())
    assert kl_diag(m1, v1, m2, v2) == pytest.approx(torch.distributions.kl_divergence(p, q).sum().item())
    assert kl_diag(m1, v1, m1, v1) == 0.0
    assert kl_to_prior(LatentStats(10, np.zeros(3), np.ones(3))) == 0.0


def test_a_collapsed_dimension_is_floored_not_infinite():
    stats = LatentStats(10, np.zeros(2), np.array([1.0, 0.0]))
    assert np.isfinite(kl_to_prior(stats))


def test_same_model_same_corpus_is_quiet_and_a_shift_alerts():
    rng = np.random.default_rng(1)
    tonight = _stats(rng.normal(0, 0.9, (5000, 8)))
    quiet = compare(tonight, tonight, threshold=0.5, same_model=True)
    assert not quiet.alert and quiet.kl_previous == 0.0 and quiet.prior_change == 0.0
    shifted = LatentStats(tonight.count, tonight.mean + 1.0, tonight.var)
    loud = compare(shifted, tonight, threshold=0.5, same_model=True)
    assert loud.alert and loud.kl_previous > 0.5
    assert any("previous night" in r for r in loud.reasons)


def test_a_new_model_is_compared_with_the_prior_only():
    rng = np.random.default_rng(2)
    a, b = _stats(rng.normal(0, 0.9, (2000, 4))), _stats(rng.normal(0, 0.9, (2000, 4)))
    result = compare(a, b, threshold=0.5, same_model=False)
    assert result.kl_previous is None and not result.alert
    assert any("model changed" in r for r in result.reasons)
    first = compare(a, None, threshold=0.5, same_model=True)
    assert first.prior_change is None and not first.alert


def _night(nights: str, day: date, stats: LatentStats, model: str, threshold: float = 0.5) -> DriftRecord:
    """Assess and write one night's record the way the vae-embed flow does."""
    splits = {"test": EmbeddedSplit(f"s3://b/embeddings/m/test-{day}", 3)}
    previous = previous_record(nights, day)
    record = assess(day, model, f"s3://b/models/m/{model}", splits, stats, previous, threshold)
    write_drift_record(join(nights, day.isoformat()), record)
    return record


def test_previous_record_is_the_latest_complete_earlier_night(tmp_path):
    nights = str(tmp_path / "drift" / "m")
    stats = _stats(np.random.default_rng(3).normal(0, 1, (100, 2)))
    for day in (date(2026, 1, 1), date(2026, 1, 3), date(2026, 1, 5)):
        _night(nights, day, stats, "v1")
    (tmp_path / "drift" / "m" / "2026-01-04").mkdir()  # started, never finished: no record
    (tmp_path / "drift" / "m" / "notes").mkdir()
    previous = previous_record(nights, date(2026, 1, 5))
    assert previous is not None and previous.night == "2026-01-03" and previous.previous_night == "2026-01-01"
    assert previous_record(nights, date(2026, 1, 1)) is None
    assert previous_record(str(tmp_path / "nothing"), date(2026, 1, 1)) is None


def test_a_drift_record_round_trips_and_keeps_the_drift_json_keys(tmp_path):
    nights = str(tmp_path / "drift" / "m")
    rng = np.random.default_rng(4)
    first = _night(nights, date(2026, 1, 1), _stats(rng.normal(0, 0.9, (500, 3))), "v1")
    shifted = LatentStats(first.stats.count, first.stats.mean + 2.0, first.stats.var)
    second = _night(nights, date(2026, 1, 2), shifted, "v1")
    assert first.previous_night is None and not first.verdict.alert
    assert second.previous_night == "2026-01-01" and second.previous_model_version == "v1"
    assert second.verdict.alert and second.verdict.kl_previous > 0.5
    back = read_drift_record(join(nights, "2026-01-02"))
    assert back is not None and back.to_dict() == second.to_dict()
    np.testing.assert_array_equal(back.stats.mean, shifted.mean)
    assert back.splits["test"] == EmbeddedSplit("s3://b/embeddings/m/test-2026-01-02", 3)
    assert read_drift_record(join(nights, "2026-01-09")) is None
    on_disk = read_json(join(nights, "2026-01-02", DRIFT_FILE))
    assert set(on_disk) == {
        "night", "model_version", "model_uri", "splits", "stats", "previous_night", "previous_model_version",
        "kl_prior", "kl_previous", "prior_change", "threshold", "alert", "reasons",
    }  # fmt: skip
    assert on_disk["splits"] == {"test": {"table": "s3://b/embeddings/m/test-2026-01-02", "version": 3}}


def test_a_drift_json_written_before_the_typed_record_reads(tmp_path):
    # The dict the record-drift task wrote by hand until DriftRecord existed.
    old = {
        "night": "2026-01-02",
        "model_version": "20260102-aa",
        "model_uri": "s3://b/models/m/20260102-aa",
        "splits": {"train": {"table": "s3://b/embeddings/m/train", "version": 1}},
        "stats": {"count": 4, "mean": [0.5, -0.5], "var": [1.0, 0.25]},
        "previous_night": "2026-01-01",
        "previous_model_version": "20260101-bb",
        "kl_prior": 0.3,
        "kl_previous": None,
        "prior_change": 0.1,
        "threshold": 1.0,
        "alert": False,
        "reasons": ["the model changed since the previous night: night-over-night KL not comparable"],
    }
    atomic_write_json(join(str(tmp_path), "2026-01-02", DRIFT_FILE), old)
    record = previous_record(str(tmp_path), date(2026, 1, 3))
    assert record is not None and record.to_dict() == old
    assert record.stats.count == 4 and record.verdict.kl_previous is None and not record.verdict.alert
    # A night after it, embedded by the same model, is compared night over night.
    tonight = assess(date(2026, 1, 3), "20260102-aa", "u", {}, record.stats, record, threshold=1.0)
    assert tonight.verdict.kl_previous == 0.0 and tonight.previous_night == "2026-01-02"
