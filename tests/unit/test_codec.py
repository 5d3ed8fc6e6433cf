"""Feature codecs: fit on a stream, encode with validation naming file/column/row, decode to the
training schema's types, JSON round trip; the default likelihood follows the data."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from vae_core.config import DataConfig
from vae_core.data.codecs import codec_from_json, codec_to_json, fit_codec
from vae_core.data.codecs.standardized import StandardizedCodec
from vae_core.data.codecs.table import TabularCodec
from vae_core.data.codecs.vector import VectorCodec
from vae_core.data.dataset import resolve_spec
from vae_core.errors import DataError


def _vectors(values: np.ndarray, value_type: pa.DataType, fixed: bool = True) -> pa.Table:
    flat = pa.array(values.reshape(-1), type=value_type)
    dim = values.shape[1]
    if fixed:
        col = pa.FixedSizeListArray.from_arrays(flat, dim)
    else:
        col = pa.ListArray.from_arrays(pa.array(np.arange(0, values.size + 1, dim), pa.int32()), flat)
    return pa.table({"id": pa.array(np.arange(len(values)), pa.int64()), "v": col})


def _fit(table: pa.Table, **data):
    cfg = DataConfig(uri="mem", **data)
    spec = resolve_spec(cfg, table.schema, "train")
    return fit_codec(
        spec, table.schema, lambda columns: [("part-0.parquet", table.select(columns))], "train", cfg
    )


def test_pixels_divide_by_scale_decode_to_uint8_and_default_to_bernoulli():
    pixels = np.random.default_rng(0).integers(0, 256, (50, 12)).astype(np.uint8)
    table = _vectors(pixels, pa.uint8())
    codec = _fit(table, vector_column="v", scale=255)
    assert isinstance(codec, VectorCodec) and codec.dim == 12 and codec.likelihood == "bernoulli"
    x = codec.encode(table, "part-0.parquet")
    assert x.dtype == np.float32 and x.shape == (50, 12) and 0 <= x.min() and x.max() <= 1
    back = codec.decode(x)
    assert back.schema.field("v").type == pa.list_(pa.uint8(), 12)
    np.testing.assert_array_equal(np.stack(back.column("v").to_numpy(zero_copy_only=False)), pixels)
    again = codec_from_json(codec_to_json(codec))
    np.testing.assert_array_equal(again.encode(table, "t"), x)


def test_real_valued_vectors_default_to_gaussian():
    values = np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32) * 3
    codec = _fit(_vectors(values, pa.float32()), vector_column="v")
    assert codec.likelihood == "gaussian"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("nan", "NaN or inf in vector features (row 3)"),
        ("short", "row 2 has 3 values, expected 4"),
        ("null", "row 1 is a null vector"),
        ("missing", "column 'v' is missing"),
    ],
)
def test_encode_names_file_column_and_row(bad, message):
    values = np.ones((6, 4), np.float32)
    codec = VectorCodec("v", 4, "float", 1.0)
    if bad == "nan":
        values[3, 1] = np.nan
        table = _vectors(values, pa.float32())
    elif bad == "short":
        lists = [list(r) for r in values]
        lists[2] = lists[2][:3]
        table = pa.table({"v": pa.array(lists, pa.list_(pa.float32()))})
    elif bad == "null":
        lists = [list(r) for r in values]
        lists[1] = None
        table = pa.table({"v": pa.array(lists, pa.list_(pa.float32()))})
    else:
        table = pa.table({"w": pa.array([1, 2])})
    with pytest.raises(DataError) as err:
        codec.encode(table, "s3://b/corpus/part-7.parquet")
    assert "s3://b/corpus/part-7.parquet" in str(err.value) and message in str(err.value)


def test_standardized_codec_fits_moments_by_streaming_and_inverts():
    rng = np.random.default_rng(1)
    values = (rng.normal(size=(3_000, 6)) * [1, 2, 3, 4, 5, 0] + [0, 10, -5, 1, 2, 7]).astype(np.float32)
    table = _vectors(values, pa.float32())
    cfg = DataConfig(uri="mem", vector_column="v", codec="standardized")
    spec = resolve_spec(cfg, table.schema, "train")
    parts = [table.slice(i, 500) for i in range(0, 3_000, 500)]  # six batches: a streaming fit
    codec = fit_codec(
        spec, table.schema, lambda columns: [("f", p.select(columns)) for p in parts], "train", cfg
    )
    assert isinstance(codec, StandardizedCodec) and codec.likelihood == "gaussian"
    np.testing.assert_allclose(codec.mean, values.mean(0), atol=1e-4)
    np.testing.assert_allclose(codec.std[:5], values.std(0)[:5], rtol=1e-4)
    assert codec.std[5] == 1.0  # a constant dimension is centred, not divided by zero
    x = codec.encode(table, "t")
    np.testing.assert_allclose(x[:, :5].mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(x[:, :5].std(0), 1, atol=1e-3)
    back = np.stack(codec.decode(x).column("v").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(back, values, atol=1e-4)
    assert isinstance(codec_from_json(codec_to_json(codec)), StandardizedCodec)


def test_standardized_codec_refuses_integer_vectors():
    table = _vectors(np.ones((4, 3), np.uint8), pa.uint8())
    with pytest.raises(DataError, match="takes float vectors"):
        _fit(table, vector_column="v", codec="standardized")


def test_tables_get_the_tabular_codec_and_round_trip_their_types():
    table = pa.table(
        {
            "id": pa.array(np.arange(200), pa.int64()),
            "age": pa.array(np.random.default_rng(0).integers(18, 90, 200), pa.int64()),
            "city": pa.array(np.random.default_rng(1).choice(["a", "b", "c"], 200)),
        }
    )
    codec = _fit(table)
    assert isinstance(codec, TabularCodec) and codec.likelihood == "tabular" and codec.layout
    x = codec.encode(table, "t")
    back = codec.decode(x)
    assert back.schema == table.select(["age", "city"]).schema
    assert back.column("city").to_pylist() == table.column("city").to_pylist()
    with pytest.raises(DataError, match="'city' is missing"):
        codec.encode(table.drop_columns(["city"]), "part-1.parquet")
    assert isinstance(codec_from_json(codec_to_json(codec)), TabularCodec)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"codec": "standardized"}, "data.codec 'standardized' needs data.vector_column"),
        ({"codec": "tabular", "vector_column": "v"}, "data.codec 'tabular' reads table columns"),
    ],
)
def test_a_codec_that_does_not_read_what_the_config_names_is_refused(data, message):
    table = _vectors(np.ones((4, 3), np.float32), pa.float32())
    if "vector_column" not in data:  # a plain table: no vector column for a vector codec to read
        table = pa.table({"id": [1, 2], "a": [0.5, 1.5]})
    with pytest.raises(DataError, match=message):
        _fit(table, **data)


def test_an_unknown_codec_name_is_a_config_error_listing_the_known_ones():
    known = "auto, vector, tabular, standardized"
    with pytest.raises(ValueError, match=f"unknown codec 'sparse'; known: {known}"):
        DataConfig(uri="mem", codec="sparse")


def test_fitting_reports_a_bad_vector_as_encode_does_naming_its_file():
    good = _vectors(np.ones((5, 4), np.float32), pa.float32())
    values = np.ones((5, 4), np.float32)
    values[2, 0] = np.inf
    bad = _vectors(values, pa.float32())
    cfg = DataConfig(uri="mem", vector_column="v")
    spec = resolve_spec(cfg, good.schema, "train")
    files = [("s3://b/train/part-0.parquet", good), ("s3://b/train/part-1.parquet", bad)]
    with pytest.raises(DataError) as fitting:
        fit_codec(spec, good.schema, lambda columns: [(f, t.select(columns)) for f, t in files], "train", cfg)
    codec = VectorCodec("v", 4, "float", 1.0)
    with pytest.raises(DataError) as encoding:
        codec.encode(bad, "s3://b/train/part-1.parquet")
    assert str(fitting.value) == str(encoding.value)
    assert str(fitting.value).startswith("s3://b/train/part-1.parquet: column 'v'") and "row 2" in str(
        fitting.value
    )


def test_fitting_a_table_names_the_file_of_a_bad_value_and_the_split_for_split_wide_errors():
    good = pa.table({"age": pa.array([1.0, 2.0, 3.0]), "city": pa.array(["a", "b", "a"])})
    bad = pa.table({"age": pa.array([1.0, float("nan"), 3.0]), "city": pa.array(["a", "b", "a"])})
    cfg = DataConfig(uri="mem", id_column=None)
    spec = resolve_spec(cfg, good.schema, "train")
    with pytest.raises(DataError, match=r"^part-1\.parquet: column 'age': NaN"):
        fit_codec(
            spec, good.schema, lambda c: [("part-0.parquet", good), ("part-1.parquet", bad)], "train", cfg
        )
    with pytest.raises(DataError, match=r"^s3://b/train: .*no rows"):
        fit_codec(spec, good.schema, lambda c: [("part-0.parquet", good.slice(0, 0))], "s3://b/train", cfg)


def test_a_batch_from_several_files_is_encoded_in_order_and_a_bad_row_names_its_file_and_first_id():
    from vae_core.data.codecs import encode_by_file

    values = np.arange(24, dtype=np.float32).reshape(6, 4)
    table = _vectors(values, pa.float32()).append_column("path", pa.array(["b/f1"] * 3 + ["b/f2"] * 3))
    codec = VectorCodec("v", 4, "float")
    np.testing.assert_array_equal(encode_by_file(codec, table, table["path"], "s3://b", "id"), values)
    values[4, 1] = np.nan  # the second row of f2, whose rows in this batch start at id 3
    bad = _vectors(values, pa.float32()).append_column("path", table["path"])
    with pytest.raises(DataError) as err:
        encode_by_file(codec, bad, bad["path"], "s3://b", "id")
    assert str(err.value) == "s3://b/f2 (batch from id 3): column 'v': NaN or inf in vector features (row 1)"


def test_tables_generate_by_sampling_vectors_by_the_mean():
    pixels = _fit(_vectors(np.zeros((4, 3), np.uint8), pa.uint8()), vector_column="v", scale=255)
    table = _fit(pa.table({"id": [1, 2, 3], "a": [0.5, 1.5, 2.5], "b": ["x", "y", "x"]}))
    assert (pixels.sample_by_default, table.sample_by_default) == (False, True)
