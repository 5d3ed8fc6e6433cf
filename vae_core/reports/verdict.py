"""The verdict a report opens with, and the rules it checks synthetic rows against.

A quality score alone hides what a reader needs first: can the rows be told from real ones, and by
what. The verdict puts on top, in sentences: the overall scores, the detection AUC with what it
means, the columns and column pairs that give the sampled rows away most, and the rules that hold in
every real row but break in sampled rows (e.g. `phone_service=0 => multiple_lines=No phone service`),
each with the share of sampled rows that break it.

Rules are mined on the fly from the real rows the report read, bounded: only columns of at most
MAX_VALUES distinct values (the first MAX_COLUMNS of them) take part, and a rule `A=a => B=b` is kept
only when every real row with A=a has B=b and chance alone would give that less often than CHANCE
(P(B=b) ** rows with A=a), so a frequent value seen in a handful of rows makes no rule.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from vae_core.reports.quality import Frames

MAX_VALUES = 50
MAX_COLUMNS = 40
CHANCE = 1e-3
MIN_ROWS = 10  # real rows a rule must rest on
SHOWN = 5  # rules, columns and pairs the verdict names


@dataclass
class Rule:
    """`then_column` is `then_value` in every real row where `if_column` is `if_value`."""

    if_column: str
    if_value: str
    then_column: str
    then_value: str
    real_rows: int  # real rows with if_value (each has then_value)
    synthetic_rows: int  # sampled rows with if_value
    broken_rows: int  # of those, rows without then_value
    synthetic_total: int  # sampled rows in all

    @property
    def broken_share(self) -> float:
        """The share of all sampled rows that break the rule."""
        return self.broken_rows / self.synthetic_total if self.synthetic_total else 0.0

    def text(self) -> str:
        return (
            f"{self.if_column}={self.if_value} ⇒ {self.then_column}={self.then_value} holds in all "
            f"{self.real_rows:,} real rows with {self.if_column}={self.if_value}; "
            f"{self.broken_share:.1%} of synthetic rows break it ({self.broken_rows:,} of the "
            f"{self.synthetic_rows:,} with {self.if_column}={self.if_value})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "broken_share": self.broken_share}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Rule:
        """A rule as to_dict wrote it (metrics.json's synthetic_quality.rules.broken)."""
        return cls(**{k: v for k, v in d.items() if k != "broken_share"})


def _keys(values: pd.Series, continuous: bool) -> np.ndarray:
    """Values as the strings a rule shows: whole numbers without '.0', nulls as '<null>'."""
    if not continuous:
        return values.astype(str).to_numpy()
    x = values.to_numpy(dtype=float)
    whole = np.isfinite(x) & (x == np.round(x))
    shown = np.where(whole, np.round(x).astype(np.int64, copy=False).astype(str), x.astype(str))
    return np.where(np.isnan(x), "<null>", shown)


def mine_rules(f: Frames) -> dict[str, Any]:
    """Rules that hold in every real training row of `f` (module docstring), each scored on f.synth.

    Returns {"columns": the columns that took part, "checked": the number of rules, "broken_rules":
    how many of them some sampled row breaks, "broken": the 20 most broken (Rule.to_dict)}."""
    real_keys, synth_codes, sizes, names = {}, {}, {}, []
    for c in f.columns:
        keys = _keys(f.train[c], c in f.continuous)
        values, codes = np.unique(keys, return_inverse=True)
        if not 2 <= len(values) <= MAX_VALUES:
            continue
        names.append(c)
        real_keys[c] = (values, codes)
        synth = pd.Categorical(_keys(f.synth[c], c in f.continuous), categories=values).codes
        synth_codes[c], sizes[c] = synth, len(values)
        if len(names) == MAX_COLUMNS:
            break
    n, total = len(f.train), len(f.synth)
    rules: list[Rule] = []
    for b in names:
        values_b, codes_b = real_keys[b]
        p_b = np.bincount(codes_b, minlength=sizes[b]) / n
        for a in names:
            if a == b:
                continue
            values_a, codes_a = real_keys[a]
            table = np.bincount(codes_a * sizes[b] + codes_b, minlength=sizes[a] * sizes[b])
            table = table.reshape(sizes[a], sizes[b])
            for i in np.flatnonzero((table > 0).sum(axis=1) == 1):
                j, support = int(table[i].argmax()), int(table[i].sum())
                if support < MIN_ROWS or support * math.log(p_b[j]) > math.log(CHANCE):
                    continue
                with_a = synth_codes[a] == i
                broken = int((with_a & (synth_codes[b] != j)).sum())
                rules.append(
                    Rule(a, str(values_a[i]), b, str(values_b[j]), support, int(with_a.sum()), broken, total)
                )
    broken = sorted((r for r in rules if r.broken_rows), key=lambda r: -r.broken_share)
    return {
        "columns": names,
        "checked": len(rules),
        "broken_rules": len(broken),
        "broken": [r.to_dict() for r in broken[:20]],
    }


def _detection_meaning(auc: float) -> str:
    if auc <= 0.6:
        return "a classifier can hardly tell synthetic rows from real ones"
    if auc <= 0.8:
        return "a classifier tells many synthetic rows from real ones"
    return "a classifier tells most synthetic rows from real ones"


def verdict(report: dict[str, Any]) -> list[str]:
    """The report's verdict in sentences, from metrics.json's content (ModelReport.to_json_dict())."""
    lines = []
    data, test, iwae = report.get("data") or {}, report.get("test") or {}, report.get("iwae") or {}
    sampling = data.get("sampling") or {}
    if sampling:
        lines.append(
            "Real rows read: " + "; ".join(f"{split}: {how}" for split, how in sampling.items()) + "."
        )
    if test.get("elbo") is not None:
        ll = iwae.get("log_likelihood")
        bound = f", importance-weighted log-likelihood {ll:.2f} (k = {iwae['k']})" if ll is not None else ""
        lines.append(f"Held-out ELBO {test['elbo']:.2f} nats per row{bound}.")
    q = report.get("synthetic_quality")
    if not q:
        return lines
    quality, diagnostic = q["quality"]["score"], q["diagnostic"]["score"]
    shown = ", ".join(
        f"{name} {score:.3f}"
        for name, score in (("Quality", quality), ("Diagnostic", diagnostic))
        if score is not None
    )
    lines.append(f"SDMetrics {shown} (1 = the real rows' column shapes and pair trends).")
    det = q["detection"]
    lines.append(
        f"Detection ROC AUC {det['auc']:.3f}: {_detection_meaning(det['auc'])} (0.5 = indistinguishable, "
        "1 = every row told apart)."
    )
    columns = list(det["by_column"].items())[:SHOWN]
    lines.append(
        "Columns that give the rows away most (AUC of a classifier on that column alone): "
        + ", ".join(f"{c} {v:.3f}" for c, v in columns)
        + "."
    )
    pairs = sorted(
        ((k, v) for k, v in q["column_pair_trends"]["pairs"].items() if v is not None), key=lambda kv: kv[1]
    )[:SHOWN]
    if pairs:
        lines.append(
            "Column pairs whose joint trend differs most (1 = as in real rows): "
            + ", ".join(f"{k.replace('|', ' × ')} {v:.3f}" for k, v in pairs)
            + "."
        )
    rules = q.get("rules")
    if rules and rules["broken"]:
        broken = rules["broken"]
        lines.append(
            f"Rules that hold in every real row but break in synthetic rows ({rules['broken_rules']} of "
            f"the {rules['checked']} mined from the real rows; the most broken):"
        )
        lines += [f"• {Rule.from_dict(r).text()}" for r in broken[:SHOWN]]
    elif rules:
        lines.append(f"All {rules['checked']} rules mined from the real rows hold in every synthetic row.")
    privacy = q.get("privacy")
    if privacy and privacy.get("dcr_holdout_median"):
        ratio = privacy["dcr_synthetic_median"] / privacy["dcr_holdout_median"]
        lines.append(
            f"Privacy: synthetic rows sit {ratio:.2f}x as far from their closest training row as unseen "
            f"real rows do (median; well below 1 means near-copies); {privacy['exact_copy_share']:.1%} "
            "equal a training row."
        )
    return lines
