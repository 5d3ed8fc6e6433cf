"""Quantile bins keep a column's spikes and exact values; a column another one fixes is decoded from it."""

import json

import numpy as np
import pyarrow as pa
import pytest

from vae_core.data.tabular import ContinuousColumn, TabularTransformer


def _spiky(n: int = 20_000, seed: int = 0) -> pa.Table:
    """A capital-gain-like column (90% zeros, the rest a few dozen exact amounts), hours with spikes
    at 40 and 50, and a smooth column; education and its number, a 1:1 map."""
    rng = np.random.default_rng(seed)
    amounts = rng.choice([2174, 3103, 5178, 7688, 15024, 99999, *range(100, 3000, 97)], n)
    gain = np.where(rng.random(n) < 0.9, 0, amounts)
    hours = np.where(rng.random(n) < 0.5, 40, np.where(rng.random(n) < 0.3, 50, rng.integers(1, 99, n)))
    levels = ["Preschool", "HS-grad", "Some-college", "Bachelors", "Masters", "Doctorate"]
    level = rng.integers(0, len(levels), n)
    return pa.table(
        {
            "gain": pa.array(gain, pa.int64()),
            "hours": pa.array(hours, pa.int64()),
            "weight": pa.array(rng.lognormal(12, 0.5, n)),
            "education": pa.array([levels[i] for i in level]),
            "education_num": pa.array(level * 3 + 1, pa.int64()),
        }
    )


def _fit(table: pa.Table, **kw) -> TabularTransformer:
    kw = {"bins": 32, "dependencies": True} | kw
    return TabularTransformer.fit(
        table.to_batches(max_chunksize=4096), ["gain", "hours", "weight", "education_num"], ["education"],
        table.schema, **kw,
    )  # fmt: skip


def _with_random_ranks(t: TabularTransformer, x: np.ndarray, seed: int = 1) -> np.ndarray:
    """x with every continuous column's alpha replaced by a uniform draw in [-1, 1]: what a decoder
    that knew a row's bin but nothing about its place within it would give."""
    rng, x, start = np.random.default_rng(seed), x.copy(), 0
    for col in t.columns:
        if isinstance(col, ContinuousColumn):
            x[:, start] = rng.uniform(-1, 1, len(x))
        start += col.width
    return x


def test_binned_columns_round_trip_exactly_and_keep_their_spikes():
    table = _spiky()
    t = _fit(table)
    gain = next(c for c in t.columns if c.name == "gain")
    assert gain.bins[0] == {"values": [0.0], "cdf": [1.0]}  # the zeros: a bin of their own
    back = t.inverse(t.transform(table))
    assert back.drop_columns(["weight"]).equals(table.drop_columns(["weight"]))
    # Full-precision reals come back to float32's precision of their rank within the bin.
    np.testing.assert_allclose(back.column("weight").to_numpy(), table.column("weight").to_numpy(), rtol=1e-4)
    # Any rank within a row's bin decodes to a value the column holds, in the bins' shares.
    drawn = t.inverse(_with_random_ranks(t, t.transform(table)))
    for name in ("gain", "hours"):
        real, synthetic = table.column(name).to_numpy(), drawn.column(name).to_numpy()
        assert set(synthetic) <= set(real), name
    real, synthetic = table.column("gain").to_numpy(), drawn.column("gain").to_numpy()
    assert abs((synthetic == 0).mean() - (real == 0).mean()) < 1e-9
    hours = drawn.column("hours").to_numpy()
    assert abs((hours == 40).mean() - 0.5) < 0.02 and abs((hours == 50).mean() - 0.15) < 0.02
    # A smooth column decodes within its bins' quantiles: the marginal stays where it was.
    w_real, w_drawn = table.column("weight").to_numpy(), drawn.column("weight").to_numpy()
    assert (
        np.abs(np.quantile(w_drawn, [0.1, 0.5, 0.9]) / np.quantile(w_real, [0.1, 0.5, 0.9]) - 1).max() < 0.03
    )


def test_gaussian_modes_smear_the_spikes_that_bins_keep():
    """The reason for bins: with data.continuous_bins=0 (TVAE's modes) the same random ranks turn
    most zeros into other amounts."""
    table = _spiky()
    t = _fit(table, bins=0, max_modes=10)
    drawn = t.inverse(_with_random_ranks(t, t.transform(table)))
    assert (drawn.column("gain").to_numpy() == 0).mean() < 0.5


def test_a_column_another_fixes_is_decoded_from_it():
    table = _spiky()
    t = _fit(table)
    # The 1:1 map holds both ways: the first of the two in column order is decoded from the other.
    assert [(d.column, d.source) for d in t.dependencies] == [("education", "education_num")]
    x = t.transform(table)
    # Scramble education's own block: the decoded rows still keep the map.
    names = [c.name for c in t.columns]
    start = sum(c.width for c in t.columns[: names.index("education")])
    width = t.columns[names.index("education")].width
    x[:, start : start + width] = np.random.default_rng(0).permutation(x[:, start : start + width])
    back = t.inverse(x)
    assert not np.array_equal(x, t.transform(back))  # the scrambled block itself did change
    columns = (table.column("education_num").to_pylist(), table.column("education").to_pylist())
    real = dict(zip(*columns, strict=True))
    pairs = zip(back.column("education_num").to_pylist(), back.column("education").to_pylist(), strict=True)
    assert all(real[n] == e for n, e in pairs)
    again = TabularTransformer.from_json(t.to_json())
    assert [d.__dict__ for d in again.dependencies] == [d.__dict__ for d in t.dependencies]
    assert "dependencies" in json.loads(t.to_json())


@pytest.mark.parametrize(
    "change, why",
    [
        ("one_row_breaks_it", "a single row with another number: no longer a map"),
        ("few_rows", "100 rows for 6 values: too few rows per value to call it a rule"),
    ],
)
def test_no_dependency_without_a_map_in_every_row_and_enough_rows(change, why):
    table = _spiky(n=100 if change == "few_rows" else 20_000)
    if change == "one_row_breaks_it":  # row 7 takes the number of another level: the map breaks both ways
        numbers = table.column("education_num").to_numpy().copy()
        numbers[7] = (numbers[7] + 2) % 18 + 1
        table = table.set_column(4, "education_num", pa.array(numbers))
    assert _fit(table).dependencies == [], why


def test_a_transformer_saved_before_bins_and_dependencies_loads_as_before():
    table = _spiky(n=5_000)
    old = _fit(table, bins=0, dependencies=False)
    saved = json.loads(old.to_json())
    del saved["dependencies"]
    for col in saved["columns"]:
        col.pop("bins", None)
    again = TabularTransformer.from_json(json.dumps(saved))
    x = old.transform(table)
    assert again.inverse(x).equals(old.inverse(x)) and again.dependencies == []
