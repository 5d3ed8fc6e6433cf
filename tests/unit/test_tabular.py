"""Tabular transformer: exact round trips with nulls and dtypes, streaming fit, JSON persistence."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from vae_core.data.codecs.table import TabularCodec
from vae_core.data.importers import read_adult
from vae_core.data.tabular import TabularTransformer
from vae_core.errors import CheckpointError, ConfigError, DataError
from vae_core.models.likelihoods import MixedTabular


def _table(n: int = 2000, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    bimodal = np.where(rng.random(n) < 0.3, rng.normal(-5, 0.5, n), rng.normal(10, 2, n))
    count = rng.poisson(3, n).astype(np.int32)
    color = rng.choice(["red", "green", "blue"], n).astype(object)
    color[rng.random(n) < 0.1] = None
    income = bimodal * 1000.0
    income_mask = rng.random(n) < 0.05
    return pa.table(
        {
            "x": pa.array(bimodal.astype(np.float32)),
            "count": pa.array(count),
            "color": pa.array(color, type=pa.string()),
            "flag": pa.array(rng.random(n) < 0.5),
            "code": pa.array(rng.integers(0, 4, n).astype(np.int16)),
            "income": pa.array(income, mask=income_mask),
        }
    )


def _fit(table: pa.Table, batch_rows: int = 256, **kw) -> TabularTransformer:
    return TabularTransformer.fit(
        table.to_batches(max_chunksize=batch_rows),
        continuous=["x", "count", "income"],
        categorical=["color", "flag", "code"],
        schema=table.schema,
        **kw,
    )


def _assert_round_trip(original: pa.Table, back: pa.Table, rel: float = 1e-6) -> None:
    for name in back.column_names:
        a, b = original.column(name), back.column(name)
        assert a.type == b.type, name
        assert a.is_null().equals(b.is_null()), name
        if pa.types.is_floating(a.type):
            av, bv = (c.drop_null().to_numpy() for c in (a, b))
            np.testing.assert_allclose(bv, av, rtol=rel, atol=0, err_msg=name)
        else:
            assert a.equals(b), name


def test_round_trip_restores_values_nulls_and_dtypes():
    table = _table()
    tr = _fit(table)
    x = tr.transform(table)
    assert x.shape == (table.num_rows, tr.dim) and x.dtype == np.float32
    _assert_round_trip(table, tr.inverse(x))


def test_mode_specific_normalisation_finds_both_modes():
    tr = _fit(_table())
    x_col = tr.columns[0]
    assert x_col.name == "x" and len(x_col.means) >= 2
    assert min(abs(m + 5) for m in x_col.means) < 0.5 and min(abs(m - 10) for m in x_col.means) < 1.0


def test_layout_matches_the_features_and_the_likelihood():
    table = _table(500)
    tr = _fit(table)
    layout = tr.layout
    assert layout[-1].stop == tr.dim
    x = tr.transform(table)
    for block in layout:
        if block.kind == "categorical":  # every one-hot block holds exactly one 1
            assert np.all(x[:, block.start : block.stop].sum(1) == 1.0)
    import torch

    nll = MixedTabular(layout).nll(torch.from_numpy(x), torch.from_numpy(x))
    assert torch.isfinite(nll).all()


def test_unseen_categories_go_to_the_null_slot_and_bounds_clip():
    tr = _fit(_table())
    new = _table(10, seed=1)
    new = new.set_column(2, "color", pa.array(["purple"] * 10))
    new = new.set_column(1, "count", pa.array(np.full(10, 10_000, dtype=np.int32)))
    back = tr.inverse(tr.transform(new))
    assert back.column("color").null_count == 10
    assert back.column("count").to_pylist() == [tr.columns[1].max] * 10


def test_fit_streams_batches_and_is_independent_of_batching():
    table = _table()
    a, b = _fit(table, batch_rows=100), _fit(table, batch_rows=2000)
    assert a.to_json() == b.to_json()
    # The reservoir bounds what is kept per column, whatever the row count.
    small = _fit(table, reservoir=300)
    _assert_round_trip(table, small.inverse(small.transform(table)))


def test_json_round_trip_and_no_pickle():
    tr = _fit(_table(300))
    text = tr.to_json()
    again = TabularTransformer.from_json(text)
    assert again.to_json() == text
    with pytest.raises(CheckpointError, match="vaeflow-tabular/1"):
        TabularTransformer.from_json('{"columns": []}')


def test_nan_in_a_continuous_column_names_the_column():
    table = pa.table({"v": pa.array([1.0, float("nan"), 2.0])})
    with pytest.raises(DataError, match="column 'v': NaN or inf"):
        TabularTransformer.fit([table], ["v"], [], table.schema)


def test_adult_round_trip_is_exact():
    table = read_adult("train").slice(0, 3_000)  # real rows, nulls included; the whole split adds time only
    cont = ["age", "fnlwgt", "education_num", "capital_gain", "capital_loss", "hours_per_week"]
    cat = [c for c in table.column_names if c not in cont]
    tr = TabularTransformer.fit(
        table.to_batches(max_chunksize=4096), cont, cat, table.schema, reservoir=20_000
    )
    back = tr.inverse(tr.transform(table))
    _assert_round_trip(table, back)
    assert back.column("workclass").null_count == table.column("workclass").null_count > 0


def test_dates_and_timestamps_are_continuous_and_come_back_in_their_type():
    rng = np.random.default_rng(3)
    n = 500
    days = rng.integers(18_000, 19_000, n).astype(np.int32)
    stamps = rng.integers(1_600_000_000_000, 1_700_000_000_000, n)
    table = pa.table(
        {
            "day": pa.array(days, mask=rng.random(n) < 0.1).cast(pa.date32()),
            "at": pa.array(stamps).cast(pa.timestamp("ms", tz="UTC")),
        }
    )
    tr = TabularTransformer.fit(table.to_batches(max_chunksize=128), ["day", "at"], [], table.schema)
    back = tr.inverse(tr.transform(table))
    assert back.schema == table.schema
    assert back.column("day").is_null().equals(table.column("day").is_null())
    # Values come back within the training range, whole days / milliseconds, close to the originals.
    for name in ("day", "at"):
        got = back.column(name).drop_null().to_numpy().astype(np.int64)
        want = table.column(name).drop_null().to_numpy().astype(np.int64)
        assert got.min() >= want.min() and got.max() <= want.max()
        np.testing.assert_allclose(got, want, rtol=1e-6)
    again = TabularTransformer.from_json(tr.to_json())
    assert again.inverse(tr.transform(table)).schema == table.schema


def test_drift_counts_unknown_categories_unexpected_nulls_and_values_out_of_range():
    table = _table()  # color has nulls, count has none; code in 0..3
    t = _fit(table)
    lo, hi = pc.min_max(table["count"]).values()
    batch = pa.table(
        {
            "x": pa.array([0.0, 1.0, 2.0], pa.float32()),
            "count": pa.array([hi.as_py() + 1, None, lo.as_py()], pa.int32()),
            "color": ["purple", None, "red"],  # null was seen in training: not drift
            "flag": pa.array([True, None, False]),
            "code": pa.array([7, 1, 2], pa.int16()),
            "income": pa.array([None, 1e9, 0.0]),
        }
    )
    assert t.drift(batch) == {
        "count": {"out_of_range": 1, "null": 1},
        "color": {"unknown_category": 1},
        "flag": {"null": 1},
        "code": {"unknown_category": 1},
        "income": {"out_of_range": 1},  # nulls were seen there
    }
    assert t.drift(table.slice(0, 500)) == {}  # its own rows never drift
    np.testing.assert_array_equal(t.transform(batch).shape, (3, t.dim))  # drifted rows still encode


def test_a_transformer_saved_before_null_tracking_counts_no_categorical_null_drift():
    t = _fit(_table())
    saved = json.loads(t.to_json())
    for c in saved["columns"]:
        if c["kind"] == "categorical":
            del c["has_nulls"]  # as written before the field existed
    old = TabularTransformer.from_json(json.dumps(saved))
    batch = _table().slice(0, 10).set_column(3, "flag", pa.array([None] * 10, pa.bool_()))
    assert "flag" not in old.drift(batch) and t.drift(batch)["flag"] == {"null": 10}


def test_only_columns_with_nulls_in_training_get_a_null_slot():
    table = _table()  # color has nulls; flag and code have none
    t = _fit(table)
    width = {c.name: c.width for c in t.columns if hasattr(c, "categories")}
    assert width == {"color": 4, "flag": 2, "code": 4}
    # any decoder output, even one putting all mass past the real categories, decodes to no null there
    back = t.inverse(np.random.default_rng(0).normal(size=(500, t.dim)).astype(np.float32))
    assert back.column("flag").null_count == 0 and back.column("code").null_count == 0
    unknown = table.slice(0, 2).set_column(4, "code", pa.array([9, 1], pa.int16()))
    x = t.transform(unknown)
    start = sum(c.width for c in t.columns[: [c.name for c in t.columns].index("code")])
    np.testing.assert_array_equal(x[:, start : start + 4].sum(1), [0.0, 1.0])  # unknown: an all-zero block


def test_generated_values_keep_the_decimal_places_of_the_data():
    rng = np.random.default_rng(0)
    n = 3_000
    table = pa.table(
        {
            "price": pa.array(np.round(rng.gamma(2.0, 40.0, n), 2)),  # money: cents
            "rating": pa.array(np.round(rng.uniform(0, 5, n), 1).astype(np.float32)),  # float32 tenths
            "ratio": pa.array(rng.random(n)),  # full precision
            "kind": pa.array(rng.choice(["a", "b"], n)),
        }
    )
    t = TabularTransformer.fit([table], ["price", "rating", "ratio"], ["kind"], table.schema)
    assert {c.name: c.decimals for c in t.columns if hasattr(c, "decimals")} == {
        "price": 2,
        "rating": 1,
        "ratio": None,
    }
    back = t.inverse(rng.normal(size=(2_000, t.dim)).astype(np.float32))  # any decoder output
    price = back.column("price").to_numpy()
    np.testing.assert_array_equal(price, np.round(price, 2))
    assert not np.array_equal(price, np.round(price, 1))  # cents, not only dimes
    rating = back.column("rating").to_numpy().astype(np.float64)
    np.testing.assert_allclose(rating, np.round(rating, 1), atol=1e-6)
    ratio = back.column("ratio").to_numpy()
    assert not np.array_equal(ratio, np.round(ratio, 6))
    # A transformer saved before decimals were recorded loads and keeps full precision.
    saved = json.loads(t.to_json())
    for c in saved["columns"]:
        c.pop("decimals", None)
    old = TabularTransformer.from_json(json.dumps(saved))
    old_price = old.inverse(rng.normal(size=(500, t.dim)).astype(np.float32)).column("price").to_numpy()
    assert not np.array_equal(old_price, np.round(old_price, 2))


def test_fit_records_category_shares_and_match_shares_keeps_rows_at_them():
    """Each categorical slot's training share is recorded (the null slot too) and survives JSON; from
    draws whose shares are off, match_shares keeps n distinct rows whose named column sits at them, the
    same rows for the same generator; a column without shares or not in the model is refused."""
    table = _table(4000)
    tr = TabularTransformer.from_json(_fit(table).to_json())
    color = next(c for c in tr.columns if c.name == "color")
    counts = pc.value_counts(table.column("color").combine_chunks()).to_pylist()
    real = {d["values"]: d["counts"] / table.num_rows for d in counts}
    assert color.shares == pytest.approx([real[c] for c in color.categories] + [real[None]])
    # draws that over-represent the first colour: every other row is forced to it
    x = tr.transform(_table(6000, seed=1))
    start = sum(c.width for c in tr.columns[: tr.columns.index(color)])
    x[::2, start : start + color.width] = np.eye(color.width)[0]
    before = np.bincount(x[:, start : start + color.width].argmax(1), minlength=color.width) / len(x)
    keep = tr.match_shares(x, 3000, ["color"], np.random.default_rng(7))
    assert len(keep) == 3000 and len(set(keep.tolist())) == 3000 and np.all(np.diff(keep) > 0)
    after = np.bincount(x[keep, start : start + color.width].argmax(1), minlength=color.width) / 3000
    assert abs(before[0] - color.shares[0]) > 0.25  # the draws were far off
    np.testing.assert_allclose(after, color.shares, atol=0.02)
    np.testing.assert_array_equal(keep, tr.match_shares(x, 3000, ["color"], np.random.default_rng(7)))
    # The one check of the columns, before any row is drawn: the codec's (generate calls it).
    codec = TabularCodec(tr)
    with pytest.raises(ConfigError, match=r"'x' is not a categorical column of this model; its categorical "):
        codec.check_match_shares(["x"])
    with pytest.raises(ConfigError, match=r"'colour' is not a categorical column"):
        codec.check_match_shares(["colour"])
    codec.check_match_shares(["color"])


def test_a_transformer_saved_before_shares_were_recorded_loads_without_them():
    d = json.loads(_fit(_table()).to_json())
    for c in d["columns"]:
        c.pop("shares", None)
    tr = TabularTransformer.from_json(json.dumps(d))
    assert all(getattr(c, "shares", None) is None for c in tr.columns)
