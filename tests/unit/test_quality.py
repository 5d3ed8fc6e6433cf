"""Synthetic-data quality: faithful samples score high, broken ones lower, copies are caught."""

import numpy as np
import pandas as pd
import pytest

from vae_core.reports.quality import synthetic_quality

CONT, CAT = ["a", "b"], ["c", "y"]


def _table(n: int, seed: int) -> pd.DataFrame:
    """a ~ N(0, 1), b = a + noise, c and y depend on a: every pair carries a trend."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    b = a + 0.3 * rng.normal(size=n)
    c = np.where(a + 0.5 * rng.normal(size=n) > 0, "hi", "lo")
    y = np.where(a + 0.5 * rng.normal(size=n) > 0.5, "yes", "no")
    return pd.DataFrame({"a": a, "b": b, "c": c, "y": y})


@pytest.fixture(scope="module")
def splits():
    return _table(1500, 0), _table(800, 1)


def _quality(train, test, synth):
    return synthetic_quality(train, test, synth, CONT, CAT, target="y", positive="yes")


def test_a_fresh_draw_of_the_same_distribution_scores_like_real_data(splits):
    train, test = splits
    q = _quality(train, test, _table(1500, 2))
    assert q["column_shapes"]["mean"] > 0.9
    assert set(q["column_shapes"]["columns"]) == {"a", "b", "c", "y"}
    assert q["column_pair_trends"]["mean"] > 0.9 and len(q["column_pair_trends"]["pairs"]) == 6
    assert q["detection"]["auc"] < 0.6 and q["detection"]["score"] > 0.8
    eff = q["ml_efficacy"]
    assert set(eff["synthetic"]) == {"logistic_regression", "decision_tree", "gradient_boosting"}
    assert eff["metric"] == "f1" and eff["positive"] == "yes"
    assert abs(eff["synthetic_mean"] - eff["real_mean"]) < 0.1 and eff["real_mean"] > 0.5
    assert q["privacy"]["exact_copy_share"] == 0.0
    assert q["privacy"]["dcr_synthetic_median"] == pytest.approx(q["privacy"]["dcr_holdout_median"], rel=0.5)


def test_independently_shuffled_columns_keep_marginals_but_lose_trends_and_efficacy(splits):
    train, test = splits
    rng = np.random.default_rng(3)
    broken = _table(1500, 2).apply(lambda col: col.to_numpy()[rng.permutation(len(col))])
    good, bad = _quality(train, test, _table(1500, 2)), _quality(train, test, broken)
    assert bad["column_shapes"]["mean"] > 0.9  # the marginals are untouched
    assert bad["column_pair_trends"]["mean"] < good["column_pair_trends"]["mean"] - 0.1
    assert bad["column_pair_trends"]["correlation_mean"] < 0.7  # r(a, b) ~ 0.96 became ~ 0
    assert bad["ml_efficacy"]["synthetic_mean"] < good["ml_efficacy"]["synthetic_mean"] - 0.2
    assert bad["detection"]["auc"] > 0.8


def test_copied_training_rows_are_flagged_by_privacy(splits):
    train, test = splits
    q = _quality(train, test, train.iloc[:500].reset_index(drop=True))
    assert q["privacy"]["exact_copy_share"] == 1.0
    assert q["privacy"]["dcr_synthetic_median"] == 0.0 < q["privacy"]["dcr_holdout_median"]
    assert q["privacy"]["holdout_exact_copy_share"] == 0.0


def test_efficacy_needs_a_categorical_target(splits):
    train, test = splits
    with pytest.raises(ValueError, match="categorical target"):
        synthetic_quality(train, test, train, CONT, CAT, target="a")
