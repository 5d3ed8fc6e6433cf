"""Latent drift: pooled moments, the diagonal-Gaussian KL, and when a jump is reported."""

from datetime import date

import numpy as np
import pytest
import torch

from vae_core.data.objects import atomic_write_json
from vae_core.data.storage import join
from vae_core.operations.drift import (
    DRIFT_FILE,
    LatentStats,
    compare,
    kl_diag,
    kl_to_prior,
    pool,
    previous_record,
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


def test_previous_record_is_the_latest_complete_earlier_night(tmp_path):
    nights = str(tmp_path / "emb" / "m")
    for night in ("2026-01-01", "2026-01-03", "2026-01-05"):
        atomic_write_json(join(nights, night, DRIFT_FILE), {"night": night})
    (tmp_path / "emb" / "m" / "2026-01-04").mkdir()  # started, never finished: no record
    (tmp_path / "emb" / "m" / "notes").mkdir()
    assert previous_record(nights, date(2026, 1, 5)) == ("2026-01-03", {"night": "2026-01-03"})
    assert previous_record(nights, date(2026, 1, 1)) is None
    assert previous_record(str(tmp_path / "nothing"), date(2026, 1, 1)) is None
