"""Synthetic-data quality: faithful samples score high, broken ones lower, copies are caught."""

import numpy as np
import pandas as pd
import pytest

from vae_core.errors import InternalError
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


@pytest.fixture(scope="module", autouse=True)
def one_thread_per_pool():
    """`make check` runs two test processes on two cores: the detectors' OpenMP threads (gradient
    boosting) would spin against the other process's work; one thread each keeps this file steady."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


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
    # SDMetrics' ContingencySimilarity of a continuous and a categorical column is 0.6-0.8 even for a
    # fresh draw of 1,500 rows (its equal-width bins); correlation and categorical pairs are near 1.
    pairs = q["column_pair_trends"]["pairs"]
    assert len(pairs) == 6 and pairs["a|b"] > 0.95 and pairs["c|y"] > 0.9
    assert q["column_pair_trends"]["mean"] > 0.75
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
    with pytest.raises(InternalError, match="categorical target"):
        synthetic_quality(train, test, train, CONT, CAT, target="a")


def test_sdmetrics_reports_score_validity_per_column_and_quality_as_their_mean(splits):
    """SDMetrics' DiagnosticReport: copied training rows are fully valid; values past the training range
    and categories it never had lower that column's validity by their share."""
    train, test = splits
    copy = train.iloc[:500].reset_index(drop=True)
    q = _quality(train, test, copy)
    assert q["diagnostic"]["score"] == 1.0 and set(q["diagnostic"]["validity"]) == {"a", "b", "c", "y"}
    props = q["quality"]["properties"]
    assert set(props) == {"Column Shapes", "Column Pair Trends"}
    assert q["quality"]["score"] == pytest.approx((props["Column Shapes"] + props["Column Pair Trends"]) / 2)
    assert props["Column Shapes"] == pytest.approx(q["column_shapes"]["mean"])
    bad = copy.copy()
    bad.loc[:99, "a"] = train["a"].max() + 100.0  # 100 of 500 past the training range
    bad.loc[:49, "c"] = "never-seen"  # 50 of 500 not a training category
    d = _quality(train, test, bad)["diagnostic"]
    assert d["validity"]["a"] == pytest.approx(0.8) and d["validity"]["c"] == pytest.approx(0.9)
    assert d["validity"]["b"] == 1.0 and d["score"] < 1.0
    # Each pair of continuous columns carries both correlations, for the side-by-side heatmaps.
    r = q["column_pair_trends"]["correlations"]["a|b"]
    assert r["real"] == pytest.approx(train[["a", "b"]].corr().iloc[0, 1], abs=1e-9)
    assert r["synthetic"] == pytest.approx(copy[["a", "b"]].corr().iloc[0, 1], abs=1e-9)


def test_detection_names_the_column_that_gives_the_rows_away(splits):
    """One column's marginal shifted: the whole-row detectors see it, and of the columns taken one at a
    time it alone stands out; shuffled columns keep every marginal, so none does."""
    train, test = splits
    shifted = _table(1500, 2).assign(b=lambda df: df["b"] + 1.0)
    by_column = _quality(train, test, shifted)["detection"]["by_column"]
    assert next(iter(by_column)) == "b" and by_column["b"] > 0.7, by_column
    assert all(auc < 0.6 for column, auc in by_column.items() if column != "b"), by_column
    rng = np.random.default_rng(3)
    broken = _table(1500, 2).apply(lambda col: col.to_numpy()[rng.permutation(len(col))])
    q = _quality(train, test, broken)
    assert q["detection"]["auc"] > 0.8 and max(q["detection"]["by_column"].values()) < 0.6


def _phone_lines(n: int, broken: int, seed: int) -> pd.DataFrame:
    """phone is 0 in about 30% of rows; lines is 'none' exactly when phone is 0 (the rule), except in
    the first `broken` rows with phone 0; noise is independent of both."""
    rng = np.random.default_rng(seed)
    phone = (rng.random(n) > 0.3).astype(float)
    lines = np.where(phone == 0, "none", rng.choice(["one", "many"], n))
    lines[np.flatnonzero(phone == 0)[:broken]] = "one"
    return pd.DataFrame({"phone": phone, "lines": lines, "noise": rng.choice(["p", "q", "r"], n)})


def test_rules_that_hold_in_every_real_row_are_scored_on_the_synthetic_rows():
    from vae_core.reports.quality import Frames
    from vae_core.reports.verdict import mine_rules

    real, synth = _phone_lines(2000, 0, seed=0), _phone_lines(1000, 120, seed=1)
    found = mine_rules(Frames.of(real, real, synth, ["phone"], ["lines", "noise"]))
    assert found["columns"] == ["phone", "lines", "noise"]
    rules = {(r["if_column"], r["if_value"], r["then_column"], r["then_value"]): r for r in found["broken"]}
    # The broken rows (phone 0, lines 'one') break phone=0 => lines=none and lines=one => phone=1; nothing
    # is said of the independent column.
    assert set(rules) == {("phone", "0", "lines", "none"), ("lines", "one", "phone", "1")}
    rule = rules[("phone", "0", "lines", "none")]
    assert rule["real_rows"] == int((real.phone == 0).sum()) and rule["broken_rows"] == 120
    assert rule["broken_share"] == pytest.approx(0.12) and found["broken_rules"] == 2
    assert "phone=0 ⇒ lines=none holds in all" in rule_text(rule) and "12.0% of synthetic rows" in rule_text(
        rule
    )
    # Kept rows break nothing: the same rules are checked, none is broken.
    clean = mine_rules(Frames.of(real, real, _phone_lines(1000, 0, seed=2), ["phone"], ["lines", "noise"]))
    assert clean["checked"] == found["checked"] >= 2 and clean["broken"] == []


def test_a_frequent_value_seen_in_few_rows_makes_no_rule():
    """b is 'x' in 95% of rows; the 30 rows with a='rare' all have b='x', which chance gives 21% of the
    time (0.95 ** 30): no rule. a='common' has both values of b: no rule either."""
    from vae_core.reports.quality import Frames
    from vae_core.reports.verdict import mine_rules

    a = np.array(["rare"] * 30 + ["common"] * 970)
    b = np.array(["x"] * 30 + ["x"] * 920 + ["y"] * 50)
    df = pd.DataFrame({"a": a, "b": b})
    assert mine_rules(Frames.of(df, df, df, [], ["a", "b"]))["checked"] == 0


def rule_text(rule: dict) -> str:
    from vae_core.reports.verdict import Rule

    return Rule.from_dict(rule).text()
