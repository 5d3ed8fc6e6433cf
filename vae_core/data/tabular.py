"""Tabular transformer: table columns <-> the feature vector a VAE models, fitted by streaming.

Continuous columns become quantile bins (the default, `bins`): the training values are cut into up to
data.continuous_bins groups of about equal count, a value that alone fills a group (a spike: 0 in a
capital-gain column, 40 hours a week) gets a group of its own, and a value v in bin k becomes
[alpha, one-hot(k)] with alpha = 2 u - 1, u its rank within the bin (0: the bin's lowest value, 1: its
highest). Decoding maps a bin and a rank back through the bin's own quantiles, so a sampled row keeps
the data's exact spikes and the shape of each bin, which Gaussian modes smear (a detector told
TVAE-style rows from real ones on capital gain alone). With data.continuous_bins=0 a column uses
mode-specific normalisation instead (CTGAN/TVAE, Xu et al. 2019): a Bayesian Gaussian mixture per
column; a value v in mode k becomes [alpha, one-hot(k)] with alpha = (v - mu_k) / (4 sigma_k).
Categorical columns become one-hot, with one extra slot for null / other values where training had
them (an unknown value in a column without it encodes as an all-zero block). A continuous column that
has nulls gets a 2-slot [present, null] block.

Fitting never holds the table: one pass over record batches keeps exact counts, null counts, min/max,
integrality, decimal places and category counts, plus a uniform reservoir sample (bottom-k of random
keys, bounded size) per continuous column on which the mixture is fitted. The fitted state is plain
JSON. Generated values keep the data's decimal places.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vae_core.data.arrow_types import arrow_type, as_array, as_numbers, is_temporal
from vae_core.data.continuous import bin_ranks, bin_values, fit_bins, fit_modes
from vae_core.data.dependencies import Dependency, Tracker, candidates
from vae_core.data.layout import Block
from vae_core.errors import CheckpointError, DataError, InternalError

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 5.0  # a fit of many columns logs how far it is at most this often (INFO)

NULL_SLOT = "<null/unseen>"
RAKING_ROUNDS, MAX_RAKING_FACTOR = 20, 10.0  # TabularTransformer.match_shares
MAX_DECIMALS = 6  # a float column with more decimal places than this is generated at full precision


@dataclass
class ContinuousColumn:
    name: str
    arrow_type: str
    means: list[float]
    stds: list[float]
    weights: list[float]
    min: float
    max: float
    integer: bool
    has_nulls: bool
    # Decimal places of the data (up to MAX_DECIMALS; None: more, or saved before it was recorded):
    # generated values are rounded to them, so money keeps its cents and no more.
    decimals: int | None = None
    # Quantile bins, lowest first (None: Gaussian modes, `means`/`stds`/`weights`): per bin its exact
    # values and their cumulative shares ({"values", "cdf"}), or its quantiles ({"values"}); fit_bins.
    bins: list[dict[str, list[float]]] | None = None

    @property
    def modes(self) -> int:
        """The one-hot slots after alpha: bins, or Gaussian modes."""
        return len(self.bins) if self.bins is not None else len(self.means)

    @property
    def width(self) -> int:
        return 1 + self.modes + (2 if self.has_nulls else 0)


@dataclass
class CategoricalColumn:
    name: str
    arrow_type: str
    categories: list[Any]  # observed values, most frequent first
    has_nulls: bool | None = None  # None: saved before it was recorded (nulls then count as no drift)
    truncated: bool = False  # more values than data.max_categories: the rarest share the last slot
    # Each slot's share of the training rows (categories, then the other slot where there is one); None:
    # saved before they were recorded. generate matches them (TabularTransformer.match_shares).
    shares: list[float] | None = None

    @property
    def other_slot(self) -> bool:
        """A last slot for null / other values, only where training had them (nulls, or values past
        max_categories): a model never samples a null into a column that had none. Transformers
        saved before has_nulls was recorded keep it."""
        return self.has_nulls is not False or self.truncated

    @property
    def width(self) -> int:
        return len(self.categories) + self.other_slot


Column = ContinuousColumn | CategoricalColumn


@dataclass
class _ContinuousStats:
    reservoir: int
    rng: np.random.Generator
    keys: np.ndarray = field(default_factory=lambda: np.empty(0))
    sample: np.ndarray = field(default_factory=lambda: np.empty(0))
    count: int = 0
    nulls: int = 0
    lo: float = np.inf
    hi: float = -np.inf
    integer: bool = True
    decimals: int | None = 0  # the most decimal places seen so far; None: more than MAX_DECIMALS

    def update(self, arr: pa.Array, name: str) -> None:
        self.nulls += arr.null_count
        values = as_numbers(arr.drop_null()).to_numpy(zero_copy_only=False).astype(np.float64)
        if not np.all(np.isfinite(values)):
            raise DataError(f"column {name!r}: NaN or inf in a continuous column (use null for missing)")
        if not len(values):
            return
        self.count += len(values)
        self.lo, self.hi = min(self.lo, values.min()), max(self.hi, values.max())
        self.integer = self.integer and bool(np.all(values == np.round(values)))
        if self.decimals is not None and not self.integer:
            single = pa.types.is_floating(arr.type) and arr.type.bit_width <= 32
            places = decimal_places(values, single)
            self.decimals = None if places is None else max(self.decimals, places)
        # Bottom-k sketch: keeping the k smallest of i.i.d. uniform keys is a uniform sample without
        # replacement of everything seen so far, in O(k + batch) memory.
        keys = np.concatenate([self.keys, self.rng.random(len(values))])
        sample = np.concatenate([self.sample, values])
        if len(keys) > self.reservoir:
            keep = np.argpartition(keys, self.reservoir)[: self.reservoir]
            keys, sample = keys[keep], sample[keep]
        self.keys, self.sample = keys, sample


def decimal_places(values: np.ndarray, single: bool = False) -> int | None:
    """The fewest decimal places (0..MAX_DECIMALS) that write every value, up to the precision of
    its type (`single`: float32, whose 0.1 is 0.10000000149); None if more are needed."""
    tolerance = (1e-6 if single else 1e-10) * np.maximum(np.abs(values), 1.0)
    for places in range(MAX_DECIMALS + 1):
        if np.all(np.abs(np.round(values, places) - values) <= tolerance):
            return places
    return None


def _python_value(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


class TabularTransformer:
    """Fitted column codecs; `transform` (table -> (N, D) float32) and `inverse` ((N, D) -> table)."""

    def __init__(self, columns: list[Column], dependencies: list[Dependency] | None = None) -> None:
        if not columns:
            raise InternalError("tabular transformer needs at least one column")
        self.columns = columns
        # Columns another column fixes in every training row: decoded from it (vae_core.data.dependencies).
        self.dependencies = dependencies or []

    # ---- fitting ---------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        batches: Iterable[pa.RecordBatch | pa.Table],
        continuous: list[str],
        categorical: list[str],
        schema: pa.Schema,
        max_modes: int = 10,
        max_categories: int = 1000,
        bins: int = 0,
        dependencies: bool = False,
        reservoir: int = 50_000,
        seed: int = 0,
    ) -> TabularTransformer:
        """One streaming pass over `batches` (each holding at least the named columns). Continuous
        columns: up to `bins` quantile bins each, or (bins=0) up to `max_modes` Gaussian modes.
        `dependencies`: find the columns another column fixes, to decode them from it."""
        rng = np.random.default_rng(seed)
        cont = {name: _ContinuousStats(reservoir, rng) for name in continuous}
        cats: dict[str, Counter] = {name: Counter() for name in categorical}
        cat_nulls = dict.fromkeys(categorical, 0)
        names = [f.name for f in schema if f.name in cont or f.name in cats]
        tracker = Tracker(candidates(schema, names) if dependencies else [])
        rows, said = 0, time.monotonic()
        for batch in batches:
            rows += batch.num_rows
            tracker.update(batch)
            if time.monotonic() - said > PROGRESS_EVERY_S:
                log.info("fitting the tabular codec: %s rows of %d columns read", f"{rows:,}", len(schema))
                said = time.monotonic()
            for name, stats in cont.items():
                stats.update(as_array(batch.column(name)), name)
            for name, counter in cats.items():
                arr = as_array(batch.column(name))
                cat_nulls[name] += arr.null_count
                for item in pc.value_counts(arr.drop_null()).to_pylist():
                    counter[item["values"]] += item["counts"]
        if rows == 0:
            raise DataError("the dataset has no rows")
        columns: list[Column] = []
        for i, name in enumerate(names):
            if time.monotonic() - said > PROGRESS_EVERY_S:
                log.info("fitting the tabular codec: %d of %d columns fitted", i, len(names))
                said = time.monotonic()
            field_type = schema.field(name).type
            if pa.types.is_dictionary(field_type):
                field_type = field_type.value_type
            arrow_type = str(field_type)
            if name in cont:
                s = cont[name]
                if s.count == 0:
                    raise DataError(f"column {name!r}: continuous column has only nulls")
                if bins:
                    means, stds, weights, binned = [], [], [], fit_bins(s.sample, bins)
                else:
                    (means, stds, weights), binned = fit_modes(s.sample, max_modes, seed), None
                columns.append(
                    ContinuousColumn(
                        name,
                        arrow_type,
                        means,
                        stds,
                        weights,
                        float(s.lo),
                        float(s.hi),
                        s.integer,
                        s.nulls > 0,
                        0 if s.integer else s.decimals,
                        binned,
                    )
                )
            else:
                ordered = sorted(cats[name].items(), key=lambda kv: (-kv[1], str(kv[0])))
                values = [_python_value(v) for v, _ in ordered[:max_categories]]
                truncated = len(ordered) > max_categories
                col = CategoricalColumn(name, arrow_type, values, cat_nulls[name] > 0, truncated)
                kept = [n for _, n in ordered[:max_categories]]
                shares = [n / rows for n in kept] + ([(rows - sum(kept)) / rows] if col.other_slot else [])
                col.shares = shares
                columns.append(col)
        return cls(columns, tracker.found())

    # ---- layout ----------------------------------------------------------------------------
    @property
    def layout(self) -> list[Block]:
        blocks: list[Block] = []
        start = 0
        for column, col in enumerate(self.columns):
            if isinstance(col, ContinuousColumn):
                spans = [("continuous", 1), ("categorical", col.modes)]
                if col.has_nulls:
                    spans.append(("categorical", 2))
            else:
                spans = [("categorical", col.width)]
            for kind, width in spans:
                blocks.append(Block(kind, start, width, column))  # type: ignore[arg-type]
                start += width
        return blocks

    @property
    def dim(self) -> int:
        return sum(c.width for c in self.columns)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    # ---- transform -------------------------------------------------------------------------
    def transform(self, batch: pa.RecordBatch | pa.Table) -> np.ndarray:
        """Rows -> (N, D) float32 features laid out as `layout`."""
        n = batch.num_rows
        out = np.zeros((n, self.dim), dtype=np.float32)
        start = 0
        for col in self.columns:
            arr = as_array(batch.column(col.name))
            if isinstance(col, ContinuousColumn):
                self._encode_continuous(col, arr, out[:, start : start + col.width])
            else:
                # Null or unknown: the last slot, or no slot at all (an all-zero block) where the
                # column had no nulls in training (drift counts them).
                codes = _category_codes(arr, col.categories)
                rows = np.flatnonzero(codes < col.width)
                out[rows, start + codes[rows]] = 1.0
            start += col.width
        return out

    @staticmethod
    def _encode_continuous(col: ContinuousColumn, arr: pa.Array, block: np.ndarray) -> None:
        valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        v = as_numbers(arr).fill_null(0).to_numpy(zero_copy_only=False).astype(np.float64)
        if not np.all(np.isfinite(v[valid])):
            raise DataError(f"column {col.name!r}: NaN or inf in a continuous column")
        if col.bins is not None:
            mode, alpha = bin_ranks(col.bins, v)
        else:
            means, stds = np.asarray(col.means), np.asarray(col.stds)
            # Most likely mode per value (argmax of the weighted Gaussian log-densities).
            logp = np.log(col.weights) - np.log(stds) - 0.5 * ((v[:, None] - means) / stds) ** 2  # (N, K)
            mode = logp.argmax(1)
            alpha = (v - means[mode]) / (4 * stds[mode])
        block[:, 0] = np.where(valid, alpha, 0.0)
        k = col.modes
        # Nulls still get a mode (that of the filler 0) so every one-hot block stays a proper one-hot.
        block[np.arange(len(v)), 1 + mode] = 1.0
        if col.has_nulls:
            block[:, 1 + k] = valid
            block[:, 2 + k] = ~valid

    # ---- drift -----------------------------------------------------------------------------
    def drift(self, batch: pa.RecordBatch | pa.Table) -> dict[str, dict[str, int]]:
        """Per column, how many of the batch's values the fit never saw: kinds (codecs.base.DRIFT) with
        their counts, columns and kinds without any left out. transform still encodes them (an unknown
        category or an unexpected null in the other slot, or as an all-zero block where there is none;
        a value out of range as it is)."""
        found: dict[str, dict[str, int]] = {}
        for col in self.columns:
            arr = as_array(batch.column(col.name))
            counts = {"null": arr.null_count if col.has_nulls is False else 0}
            if isinstance(col, ContinuousColumn):
                v = as_numbers(arr.drop_null()).to_numpy(zero_copy_only=False).astype(np.float64)
                counts["out_of_range"] = int(np.count_nonzero((v < col.min) | (v > col.max)))
            else:
                known = pc.is_in(arr.drop_null(), value_set=pa.array(col.categories, type=arr.type))
                counts["unknown_category"] = len(known) - pc.sum(known).as_py() if len(known) else 0
            if counts := {k: int(n) for k, n in counts.items() if n}:
                found[col.name] = counts
        return found

    # ---- inverse ---------------------------------------------------------------------------
    def inverse(self, x: np.ndarray) -> pa.Table:
        """(N, D) features (or decoder means / probabilities) -> table with the original dtypes.

        Categorical blocks take their argmax; continuous values are clipped to the training
        [min, max] and rounded to the data's decimal places (integers for integer columns).
        """
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise InternalError(f"inverse expects (N, {self.dim}) features, got {x.shape}")
        arrays, start = {}, 0
        for col in self.columns:
            block = x[:, start : start + col.width].astype(np.float64)
            if isinstance(col, ContinuousColumn):
                arrays[col.name] = self._decode_continuous(col, block)
            else:
                idx = block.argmax(1)
                values = [col.categories[i] if i < len(col.categories) else None for i in idx]
                arrays[col.name] = pa.array(values, type=arrow_type(col.arrow_type))
            start += col.width
        for dependency in self.dependencies:
            dependency.apply(arrays)
        return pa.table(arrays)

    def match_shares(self, x: np.ndarray, n: int, columns: list[str], rng: np.random.Generator) -> np.ndarray:
        """Which n of the rows x (N >= n drawn features) to keep so that each named categorical column's
        slots hold about their training shares: raking (iterative proportional fitting) gives every row a
        weight that brings the weighted shares of all named columns to the recorded ones, then
        systematic sampling in a random order keeps n rows, row i with probability n w_i / sum(w)
        (capped at 1), each at most once. Sorted row indices.

        Why: a model's draws miss a column's shares by a few points, and classifiers trained on the
        rows inherit that (bench/results/adult_efficacy.json generates with match_shares). Within a
        value the kept rows follow the model's joint distribution. `columns` are categorical columns
        with recorded shares (TabularCodec.check_match_shares)."""
        codes, targets, start = [], [], 0
        for col in self.columns:
            if col.name in columns and isinstance(col, CategoricalColumn) and col.shares is not None:
                codes.append(x[:, start : start + col.width].argmax(1))
                targets.append(np.asarray(col.shares, dtype=np.float64))
            start += col.width
        if n >= len(x):
            return np.arange(len(x))
        w = np.ones(len(x))
        for _ in range(RAKING_ROUNDS):
            for code, target in zip(codes, targets, strict=True):
                now = np.bincount(code, weights=w, minlength=len(target)) / w.sum()
                # a slot the draws never hit keeps weight 1 (nothing to scale); a round's factor is capped
                # at MAX_RAKING_FACTOR, so a slot the draws barely hit gains weight over rounds, not at once
                # (rows whose weight passes n / sum(w) are then simply all kept, below)
                factor = np.where(now > 0, target / np.maximum(now, 1e-12), 1.0)
                w *= np.clip(factor, 1 / MAX_RAKING_FACTOR, MAX_RAKING_FACTOR)[code]
        p, fixed = np.zeros(len(x)), np.zeros(len(x), dtype=bool)
        while True:  # inclusion probabilities n w / sum(w), those over 1 kept for sure
            p[~fixed] = (n - fixed.sum()) * w[~fixed] / w[~fixed].sum()
            over = ~fixed & (p >= 1)
            if not over.any():
                break
            p[over], fixed = 1.0, fixed | over
        order = rng.permutation(len(x))
        edges = np.cumsum(p[order])
        points = rng.random() + np.arange(n)
        picked = order[np.minimum(np.searchsorted(edges, points, side="right"), len(x) - 1)]
        return np.sort(picked)

    @staticmethod
    def _decode_continuous(col: ContinuousColumn, block: np.ndarray) -> pa.Array:
        k = col.modes
        mode = block[:, 1 : 1 + k].argmax(1)
        if col.bins is not None:
            v = bin_values(col.bins, mode, block[:, 0])
        else:
            v = block[:, 0] * 4 * np.asarray(col.stds)[mode] + np.asarray(col.means)[mode]
        v = np.clip(v, col.min, col.max)
        if col.integer:
            v = np.round(v)
        elif col.decimals is not None:
            v = np.round(v, col.decimals)
        mask = block[:, 2 + k] > block[:, 1 + k] if col.has_nulls else None
        typ = arrow_type(col.arrow_type)
        if is_temporal(typ):  # a date or time as its integer count of days / units, type restored
            counts = pa.array(np.round(v).astype(np.int64), mask=mask)
            return counts.cast(pa.int32() if typ.bit_width == 32 else pa.int64()).cast(typ)
        if pa.types.is_integer(typ):
            v = v.astype(np.int64)
        return pa.array(v, mask=mask).cast(typ)

    # ---- persistence -----------------------------------------------------------------------
    def to_json(self) -> str:
        cols = []
        for c in self.columns:
            kind = "continuous" if isinstance(c, ContinuousColumn) else "categorical"
            cols.append({"kind": kind, **c.__dict__})
        dependencies = [d.__dict__ for d in self.dependencies]
        return json.dumps(
            {"format": "vaeflow-tabular/1", "columns": cols, "dependencies": dependencies}, indent=1
        )

    @classmethod
    def from_json(cls, text: str) -> TabularTransformer:
        data = json.loads(text)
        if data.get("format") != "vaeflow-tabular/1":
            raise CheckpointError(
                "not a vaeflow tabular transformer JSON (missing format 'vaeflow-tabular/1')"
            )
        columns: list[Column] = []
        for c in data["columns"]:
            kind = c.pop("kind")
            columns.append(ContinuousColumn(**c) if kind == "continuous" else CategoricalColumn(**c))
        return cls(columns, [Dependency(**d) for d in data.get("dependencies", [])])


def _category_codes(arr: pa.Array, categories: list[Any]) -> np.ndarray:
    """Index of each value in `categories`; null and unseen values get the last slot."""
    if not categories:
        return np.zeros(len(arr), dtype=np.int64)
    idx = pc.index_in(arr, value_set=pa.array(categories, type=arr.type))
    return idx.fill_null(len(categories)).to_numpy(zero_copy_only=False).astype(np.int64)
