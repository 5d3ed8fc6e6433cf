"""Synthetic tabular data against real data: SDMetrics' reports, ML efficacy, detection, privacy.

Fidelity is SDMetrics' (the scores SDV users know, computed by its package, default settings):
- QualityReport: column shapes (KSComplement for continuous columns, TVComplement for categorical
  ones; null is a category) and column pair trends (CorrelationSimilarity of two continuous columns,
  ContingencySimilarity of the others), and their overall score;
- DiagnosticReport: data validity (values within the training range, categories of the training set,
  no nulls where the data have none) and data structure, and its overall score.
vaeflow adds:
- ML efficacy: classifiers trained on synthetic rows and on real training rows, both tested on the
  real test split (F1 of the positive class for a binary target, macro F1 otherwise), as SDGym;
- detection: cross-validated ROC AUC of classifiers telling real from synthetic rows (0.5 = no signal),
  and of gradient boosting on each column alone: the columns that give the rows away;
- privacy: distance to the closest training record (DCR) in the standardised one-hot space, next to
  the same distance for real held-out rows, and the share of synthetic rows equal to a training row;
- rules: value rules that hold in every real training row, and the share of synthetic rows that
  break each (reports.verdict).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.tree import DecisionTreeClassifier

from vae_core.errors import InternalError
from vae_core.reports.verdict import mine_rules

NULL = "<null>"


def to_frame(table: pa.Table | pd.DataFrame, continuous: list[str], categorical: list[str]) -> pd.DataFrame:
    """Continuous columns as float (NaN for null), categorical ones as strings (null -> '<null>')."""
    df = table.to_pandas() if isinstance(table, pa.Table) else table
    out = pd.DataFrame(index=range(len(df)))
    for c in continuous:
        out[c] = pd.to_numeric(df[c], errors="coerce").astype(float).to_numpy()
    for c in categorical:
        out[c] = np.where(df[c].isna().to_numpy(), NULL, df[c].astype(str).to_numpy())
    return out


@dataclass(frozen=True)
class Frames:
    """Real training, real test and synthetic rows as `to_frame` gives them, and which columns are which."""

    train: pd.DataFrame
    test: pd.DataFrame
    synth: pd.DataFrame
    continuous: list[str]
    categorical: list[str]

    @classmethod
    def of(
        cls,
        real_train: pa.Table | pd.DataFrame,
        real_test: pa.Table | pd.DataFrame,
        synthetic: pa.Table | pd.DataFrame,
        continuous: list[str],
        categorical: list[str],
    ) -> Frames:
        frames = (to_frame(t, continuous, categorical) for t in (real_train, real_test, synthetic))
        return cls(*frames, continuous, categorical)

    @property
    def columns(self) -> list[str]:
        return [*self.continuous, *self.categorical]


def _metadata(f: Frames) -> dict[str, Any]:
    """SDMetrics' single-table metadata: continuous columns numerical, the rest categorical."""
    columns = {c: {"sdtype": "numerical"} for c in f.continuous}
    columns.update({c: {"sdtype": "categorical"} for c in f.categorical})
    return {"columns": columns}


def sdmetrics_reports(f: Frames) -> dict[str, Any]:
    """SDMetrics' QualityReport and DiagnosticReport of the synthetic rows against the training rows
    (default settings: the scores SDV users know).

    Returns "quality" (score, properties), "diagnostic" (score, properties, validity per column),
    "column_shapes" (mean and per column: KSComplement / TVComplement) and "column_pair_trends" (mean,
    per pair "a|b": CorrelationSimilarity or ContingencySimilarity, and the real and synthetic Pearson
    correlation of each pair of continuous columns). The pair scores cover every pair; the
    QualityReport's own score counts only the `scored_by_quality_report` pairs above its `thresholds`
    (the real rows' |Pearson r| for two continuous columns, Cramer's V otherwise).
    """
    import warnings

    with warnings.catch_warnings():  # "use sdmetrics.reports": that one wants another metadata format
        warnings.simplefilter("ignore", FutureWarning)
        from sdmetrics.reports.single_table import DiagnosticReport, QualityReport
        from sdmetrics.reports.single_table._properties import ColumnPairTrends
        from sdmetrics.reports.utils import (
            DEFAULT_REAL_ASSOCIATION_THRESHOLD,
            DEFAULT_REAL_CORRELATION_THRESHOLD,
        )

    metadata = _metadata(f)
    real, synth = f.train[f.columns], f.synth[f.columns]
    quality, diagnostic = QualityReport(), DiagnosticReport()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas / scipy warnings from inside SDMetrics
        quality.generate(real, synth, metadata, verbose=False)
        diagnostic.generate(real, synth, metadata, verbose=False)
        # QualityReport scores a pair only when the real rows correlate (|r| > 0.5) or associate
        # (Cramer's V > 0.3); every pair is scored here too, with no threshold, for the heatmap and
        # the correlation matrices (the report's score stays SDMetrics' own).
        every = ColumnPairTrends()
        every.get_score(real, synth, metadata)
    shapes = quality.get_details("Column Shapes")
    pairs = every.details
    counted = quality.get_details("Column Pair Trends")["Score"].notna()
    validity = diagnostic.get_details("Data Validity")
    correlation = pairs[pairs["Metric"] == "CorrelationSimilarity"]
    contingency = pairs[pairs["Metric"] == "ContingencySimilarity"]

    def key(row: pd.Series) -> str:
        return f"{row['Column 1']}|{row['Column 2']}"

    def number(value: Any) -> float | None:
        """A score as JSON keeps it: None where SDMetrics has none (NaN: e.g. a constant column)."""
        return None if pd.isna(value) else float(value)

    def mean(df: pd.DataFrame) -> float | None:
        return number(df["Score"].mean()) if len(df) else None  # NaN scores left out, as SDMetrics does

    def properties(report: Any) -> dict[str, float]:
        return {str(k): number(v) for k, v in report.get_properties().set_index("Property")["Score"].items()}

    return {
        "quality": {"score": number(quality.get_score()), "properties": properties(quality)},
        "diagnostic": {
            "score": number(diagnostic.get_score()),
            "properties": properties(diagnostic),
            "validity": {str(r["Column"]): number(r["Score"]) for _, r in validity.iterrows()},
        },
        "column_shapes": {
            "mean": mean(shapes),
            "columns": {str(r["Column"]): number(r["Score"]) for _, r in shapes.iterrows()},
        },
        "column_pair_trends": {
            "mean": mean(pairs),
            "scored_by_quality_report": int(counted.sum()),
            "thresholds": {
                "correlation": DEFAULT_REAL_CORRELATION_THRESHOLD,
                "association": DEFAULT_REAL_ASSOCIATION_THRESHOLD,
            },
            "correlation_mean": mean(correlation),
            "contingency_mean": mean(contingency),
            "pairs": {key(r): number(r["Score"]) for _, r in pairs.iterrows()},
            "correlations": {
                key(r): {
                    "real": number(r["Real Correlation"]),
                    "synthetic": number(r["Synthetic Correlation"]),
                }
                for _, r in correlation.iterrows()
            },
        },
    }


def _design(continuous: list[str], categorical: list[str]) -> ColumnTransformer:
    """Mean-imputed, standardised numerics and one-hot categoricals, dense."""
    numeric = make_pipeline(SimpleImputer(strategy="mean"), StandardScaler())
    return ColumnTransformer(
        [
            ("num", numeric, continuous),
            ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical),
        ]
    )


def _dense(design: ColumnTransformer, df: pd.DataFrame) -> np.ndarray:
    return design.transform(df).astype(np.float64)


def efficacy_classifiers(seed: int = 0) -> dict[str, Any]:
    """SDGym-style classifiers: balanced logistic regression, a depth-20 tree, gradient boosting."""
    return {
        "logistic_regression": LogisticRegression(max_iter=1000, class_weight="balanced"),
        "decision_tree": DecisionTreeClassifier(max_depth=20, class_weight="balanced", random_state=seed),
        "gradient_boosting": HistGradientBoostingClassifier(random_state=seed),
    }


def ml_efficacy(f: Frames, target: str, positive: str | None = None, seed: int = 0) -> dict:
    """Train each classifier on synthetic rows and on real training rows; score both on real test rows.

    `target` must be categorical; for a binary target the score is F1 of `positive` (default: the
    rarer class in the training rows), else macro F1.
    """
    if target not in f.categorical:
        raise InternalError(f"ML efficacy needs a categorical target column; {target!r} is not one")
    features_cont = [c for c in f.continuous if c != target]
    features_cat = [c for c in f.categorical if c != target]
    real_test = f.test
    classes = f.train[target].value_counts()
    binary = len(classes) == 2
    if binary and positive is None:
        positive = str(classes.index[-1])
    y_test = real_test[target].to_numpy()

    def score(y_pred: np.ndarray) -> float:
        if binary:
            # Predictions may hold classes the test split lacks (e.g. a sampled null): score as 1-vs-rest.
            return float(f1_score(y_test == positive, y_pred == positive, zero_division=0))
        return float(f1_score(y_test, y_pred, average="macro", zero_division=0))

    def run(train: pd.DataFrame) -> dict[str, float]:
        y = train[target].to_numpy()
        if len(np.unique(y)) < 2:  # a single class: every classifier predicts it
            return dict.fromkeys(efficacy_classifiers(seed), score(np.full(len(y_test), y[0])))
        out = {}
        for name, clf in efficacy_classifiers(seed).items():
            pipe = Pipeline([("design", _design(features_cont, features_cat)), ("clf", clf)])
            pipe.fit(train[features_cont + features_cat], y)
            out[name] = score(pipe.predict(real_test[features_cont + features_cat]))
        return out

    on_synth, on_real = run(f.synth), run(f.train)
    synth_mean, real_mean = float(np.mean(list(on_synth.values()))), float(np.mean(list(on_real.values())))
    return {
        "target": target,
        "positive": positive,
        "metric": "f1" if binary else "macro_f1",
        "synthetic": on_synth,
        "real": on_real,
        "synthetic_mean": synth_mean,
        "real_mean": real_mean,
        "ratio": synth_mean / real_mean if real_mean > 0 else float("nan"),
    }


def detection(f: Frames, max_rows: int = 5_000, seed: int = 0) -> dict:
    """3-fold cross-validated ROC AUC of classifiers separating real training (1) from synthetic (0)
    rows, at most max_rows of each; `by_column`: the same for gradient boosting on one column at a
    time, highest first (a smeared spike or a missing mode shows there even when the whole-row AUC
    blends it with the rest).

    score = 1 - (2 * max(auc, 0.5) - 1) over the stronger detector, as SDMetrics: 1 = undetectable.
    """
    rng = np.random.default_rng(seed)
    n = min(len(f.train), len(f.synth), max_rows)
    r = f.train.iloc[rng.choice(len(f.train), n, replace=False)]
    s = f.synth.iloc[rng.choice(len(f.synth), n, replace=False)]
    x = pd.concat([r, s], ignore_index=True)[f.columns]
    y = np.r_[np.ones(n), np.zeros(n)]
    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
    detectors = {
        "logistic_regression": LogisticRegression(max_iter=1000),
        "gradient_boosting": HistGradientBoostingClassifier(random_state=seed),
    }
    aucs = {}
    for name, clf in detectors.items():
        pipe = Pipeline([("design", _design(f.continuous, f.categorical)), ("clf", clf)])
        aucs[name] = float(cross_val_score(pipe, x, y, cv=folds, scoring="roc_auc").mean())
    by_column = {}
    # Early stopping, as HistGradientBoosting does by default from 10,000 rows on: one column needs few
    # rounds, and the report computes one detector per column.
    boosting = HistGradientBoostingClassifier(early_stopping=True, random_state=seed)
    for column in f.columns:
        alone = _design([column], []) if column in f.continuous else _design([], [column])
        pipe = Pipeline([("design", alone), ("clf", boosting)])
        by_column[column] = float(cross_val_score(pipe, x[[column]], y, cv=folds, scoring="roc_auc").mean())
    auc = max(aucs.values())
    return {
        "auc": auc,
        "score": 1.0 - (2.0 * max(auc, 0.5) - 1.0),
        "detectors": aucs,
        "by_column": dict(sorted(by_column.items(), key=lambda kv: -kv[1])),
        "rows_each": n,
    }


def privacy(f: Frames, max_rows: int = 5_000, seed: int = 0) -> dict:
    """Distance to the closest training record for synthetic rows and, as the reference, real test rows
    (at most max_rows of each).

    Distances are Euclidean in the training split's standardised one-hot space. A synthetic median
    DCR far below the holdout's means the model copies training rows; `exact_copy_share` counts rows
    equal to some training row on every column (the holdout share is what chance alone gives).
    """
    columns, real_train = f.columns, f.train
    design = _design(f.continuous, f.categorical).fit(real_train[columns])
    index = NearestNeighbors(n_neighbors=1).fit(_dense(design, real_train[columns]))
    rng = np.random.default_rng(seed)

    def sample(df: pd.DataFrame) -> pd.DataFrame:
        n = min(len(df), max_rows)
        return df.iloc[rng.choice(len(df), n, replace=False)][columns]

    s, h = sample(f.synth), sample(f.test)
    dcr_s = index.kneighbors(_dense(design, s))[0].ravel()
    dcr_h = index.kneighbors(_dense(design, h))[0].ravel()
    train_rows = set(map(tuple, real_train[columns].astype(str).to_numpy()))

    def copies(df: pd.DataFrame) -> float:
        return float(np.mean([row in train_rows for row in map(tuple, df.astype(str).to_numpy())]))

    return {
        "dcr_synthetic_median": float(np.median(dcr_s)),
        "dcr_synthetic_p05": float(np.quantile(dcr_s, 0.05)),
        "dcr_holdout_median": float(np.median(dcr_h)),
        "dcr_holdout_p05": float(np.quantile(dcr_h, 0.05)),
        "exact_copy_share": copies(s),
        "holdout_exact_copy_share": copies(h),
        "rows": len(s),
    }


def synthetic_quality(
    real_train: pa.Table | pd.DataFrame,
    real_test: pa.Table | pd.DataFrame,
    synthetic: pa.Table | pd.DataFrame,
    continuous: list[str],
    categorical: list[str],
    target: str | None = None,
    positive: str | None = None,
    seed: int = 0,
) -> dict:
    """All quality measures of `synthetic` against the real splits (see the module docstring).

    Returns {"quality", "diagnostic", "column_shapes", "column_pair_trends" (sdmetrics_reports),
    "detection", "privacy", "rules" (verdict.mine_rules), and with a target "ml_efficacy"}; fidelity
    is measured against real_train, efficacy and DCR reference on real_test.
    """
    f = Frames.of(real_train, real_test, synthetic, continuous, categorical)
    out = {
        "rows": {"real_train": len(f.train), "real_test": len(f.test), "synthetic": len(f.synth)},
        **sdmetrics_reports(f),
        "detection": detection(f, seed=seed),
        "privacy": privacy(f, seed=seed),
        "rules": mine_rules(f),
    }
    if target is not None:
        out["ml_efficacy"] = ml_efficacy(f, target, positive, seed)
    return out
