"""Ray Data embed/generate jobs on a real local cluster, data and outputs in S3 (moto server)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs
import torch

from tests.integration.conftest import make_bucket
from vae_core.config import ComputeConfig, EmbedConfig, GenerateConfig, VaeflowConfig
from vae_core.data.codecs.table import TabularCodec
from vae_core.data.codecs.vector import VectorCodec
from vae_core.data.dataset import encode_schema, iter_batches, list_shards, open_dataset
from vae_core.data.importers import read_adult
from vae_core.data.storage import delta_storage_options
from vae_core.data.tables import delta_schema, is_delta_table, read_table
from vae_core.data.tabular import TabularTransformer
from vae_core.distributed.embed import embed_corpus
from vae_core.distributed.generate import block_seed, generate_rows
from vae_core.errors import ClusterResourceError, ConfigError, DataError, TableError
from vae_core.models.families import DataShape, build_model
from vae_core.training.checkpoints import CheckpointMeta, load_checkpoint, save_checkpoint
from vae_core.training.inference import embed, generate
from vae_core.training.loop import KLSchedule, fit

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _fs() -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(skip_instance_cache=True)


def _ids_by_standard_readers(uri: str) -> tuple[list, list]:
    """The id column as plain deltalake and polars read the table (no vaeflow code involved)."""
    import polars as pl
    from deltalake import DeltaTable

    options = delta_storage_options(uri)
    ids = DeltaTable(uri, storage_options=options).to_pyarrow_table(columns=["id"]).column("id").to_pylist()
    return ids, pl.read_delta(uri, storage_options=options)["id"].to_list()


@pytest.fixture(scope="module")
def mnist_model(mnist_s3: str) -> str:
    """A briefly trained MNIST VAE checkpoint in S3 (trained in-process on 4,000 images)."""
    cfg = VaeflowConfig.model_validate(
        {
            "name": "mnist-vae",
            "data": {"uri": mnist_s3, "vector_column": "image", "image_shape": [1, 28, 28], "scale": 255},
            "model": {"family": "vae", "hidden": [128], "latent_dim": 8},
        }
    )
    shards, schema, _ = open_dataset(cfg.data, "train")
    codec = VectorCodec("image", 784, str(schema.field("image").type.value_type), 255.0, (1, 28, 28))
    x = torch.from_numpy(codec.encode(next(iter_batches(shards[:1], ["image"], 4000))[1], "t"))
    torch.manual_seed(0)
    model = build_model(cfg.model, DataShape.of(codec))
    fit(model, [x[i : i + 128] for i in range(0, len(x), 128)], epochs=2, schedule=KLSchedule(1.0))
    uri = f"{make_bucket()}/models/mnist/v1"
    save_checkpoint(uri, model, cfg, codec, meta=CheckpointMeta(epoch=2, data_schema=encode_schema(schema)))
    return uri


def test_embed_matches_in_process_embed_and_a_rerun_is_a_no_op(ray_local, mnist_s3, mnist_model):
    out = f"{make_bucket()}/embeddings/mnist-test"
    job = EmbedConfig(passthrough=["label"], rows_per_file=4096)
    committed = embed_corpus(mnist_model, f"{mnist_s3}/test", out, job, progress=print)
    assert committed.rows == 10_000 and not committed.skipped and committed.version == 0
    # Each actor reads its shard (7,500 + 2,500 rows) and cuts it into files of rows_per_file rows.
    fs = _fs()
    sizes = sorted(pq.ParquetFile(fs.open(f)).metadata.num_rows for f in committed.files)
    assert sizes == [2500, 7500 - 4096, 4096], sizes
    table = read_table(out)
    assert table.column_names == ["id", "label", "z_mean"]
    assert table.schema.field("z_mean").type == pa.list_(pa.float32())  # Delta arrays have no fixed size
    assert {len(v) for v in table.column("z_mean").to_pylist()} == {8}
    for ids in _ids_by_standard_readers(out):
        assert sorted(ids) == list(range(60_000, 70_000))  # MNIST test ids, each once

    # The same rows through vae_core's in-process embed.
    ckpt = load_checkpoint(mnist_model)
    ids, xs = [], []
    for shard, batch in iter_batches(list_shards(f"{mnist_s3}/test"), ["id", "image"]):
        ids.append(batch.column("id").to_numpy())
        xs.append(ckpt.codec.encode(batch, shard))
    expected = embed(ckpt.model, torch.from_numpy(np.concatenate(xs))).numpy()
    expected_ids = np.concatenate(ids)
    order = np.argsort(table.column("id").to_numpy())
    got_ids = table.column("id").to_numpy()[order]
    np.testing.assert_array_equal(got_ids, np.sort(expected_ids))
    z = np.stack(table.column("z_mean").to_numpy(zero_copy_only=False))[order]
    np.testing.assert_allclose(z, expected[np.argsort(expected_ids)], atol=1e-5, rtol=0)
    stats = committed.record.stats["z_mean"]
    assert stats["count"] == 10_000
    np.testing.assert_allclose(stats["mean"], expected.mean(0), atol=1e-4)
    np.testing.assert_allclose(stats["var"], expected.var(0), rtol=1e-3, atol=1e-5)

    fs = _fs()
    listing = sorted(fs.find(out))
    again = embed_corpus(mnist_model, f"{mnist_s3}/test", out, job)
    assert again.skipped and again.rows == 10_000 and again.version == 0
    assert again.record.stats == committed.record.stats  # from the commit's metadata
    fs.invalidate_cache()
    assert sorted(fs.find(out)) == listing, "a rerun of a committed job wrote something"
    # A different run into the same table is refused rather than mixed in...
    with pytest.raises(TableError, match="another run"):
        embed_corpus(mnist_model, f"{mnist_s3}/test", out, EmbedConfig(with_logvar=True))
    # ...unless asked to replace it: a new version, the earlier one still readable by version.
    replaced = embed_corpus(
        mnist_model, f"{mnist_s3}/test", out, EmbedConfig(with_logvar=True), mode="overwrite"
    )
    assert replaced.version == 1 and "z_logvar" in read_table(out).column_names
    assert read_table(out, version=0).column_names == ["id", "label", "z_mean"]


def _bad_images(fault: str) -> pa.Array:
    """300 random vectors of 784 values with row 123 broken: a NaN value, or (a variable-length column)
    one value short."""
    values = np.random.default_rng(0).random((300, 784)).astype(np.float32)
    if fault == "nan":
        values[123, 5] = np.nan
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), 784)
    vectors = values.tolist()
    vectors[123] = vectors[123][:783]
    return pa.array(vectors, pa.list_(pa.float32()))


@pytest.mark.parametrize("fault", ["nan", "short"])
def test_a_bad_vector_names_file_column_and_row_and_commits_nothing(ray_local, mnist_model, fault):
    root = make_bucket()
    rows = pa.table({"id": np.arange(300), "image": _bad_images(fault)})
    fs = _fs()
    with fs.open(f"{root}/bad/part-0.parquet", "wb") as f:
        pq.write_table(rows, f)
    out = f"{root}/embeddings/bad"
    with pytest.raises(DataError) as err:
        embed_corpus(mnist_model, f"{root}/bad", out)
    message = str(err.value)
    assert message.startswith(f"{root}/bad/part-0.parquet (batch from id 0): column 'image': ")
    assert "row 123" in message and ("NaN" in message if fault == "nan" else "783 values" in message)
    # The codec's own message for the same rows: the job adds nothing but the file it read.
    with pytest.raises(DataError) as direct:
        load_checkpoint(mnist_model).codec.encode(rows, f"{root}/bad/part-0.parquet (batch from id 0)")
    assert message == str(direct.value)
    assert not is_delta_table(out), "a failed job committed"
    fs.invalidate_cache()
    assert not fs.exists(f"{out}/_delta_log")


def test_generate_follows_the_job_settings_and_matches_in_process_generation(ray_local, mnist_model):
    """rows_per_file decides the files, chunk_rows the decoder passes, torch_threads the actors' threads;
    the rows are inference.generate's, decoded by the codec into the training schema (uint8 pixels)."""
    out, lines = f"{make_bucket()}/samples/mnist", []
    job = GenerateConfig(rows=1000, seed=3, rows_per_file=300, chunk_rows=128)
    compute = ComputeConfig(num_workers=1, cpus_per_worker=1, torch_threads=3)
    committed = generate_rows(mnist_model, out, job, compute, progress=lines.append)
    assert committed.rows == 1000 and len(committed.files) == 4
    fs = _fs()
    sizes = sorted(pq.ParquetFile(fs.open(f)).metadata.num_rows for f in committed.files)
    assert sizes == [100, 300, 300, 300]
    assert any(line.endswith("(actors ran torch with 3 thread(s))") for line in lines), lines
    table = read_table(out).sort_by("id")
    assert table.column_names == ["id", "image"] and table.column("id").to_pylist() == list(range(1000))
    assert table.schema.field("image").type == pa.list_(pa.int16())  # uint8 pixels, Delta-wide
    pixels = np.stack(table.column("image").to_numpy(zero_copy_only=False))  # (1000, 784)
    assert pixels.min() >= 0 and pixels.max() <= 255 and pixels.std() > 0
    ckpt = load_checkpoint(mnist_model)
    x = generate(ckpt.model, 300, block_seed(3, 1), chunk_rows=128).numpy()  # file 1: rows 300..599
    expected = ckpt.codec.decode(x).column("image").to_numpy(zero_copy_only=False)
    np.testing.assert_array_equal(pixels[300:600], np.stack(expected).astype(np.int16))
    params = {"rows": 1000, "seed": 3, "rows_per_file": 300, "chunk_rows": 128, "sample": False}
    assert committed.record.params == params


def test_the_data_cpus_setting_reaches_the_cluster_check(ray_local, mnist_model):
    out = f"{make_bucket()}/samples/too-big"
    with pytest.raises(ClusterResourceError, match=r"1 workers x 1 CPU \+ 64 CPU for Ray Data"):
        generate_rows(mnist_model, out, GenerateConfig(rows=10), ComputeConfig(data_cpus=64))
    assert not is_delta_table(out)


def _adult_train() -> pa.Table:
    """Adult train as `vaeflow data import adult` stores it: an int64 id column first."""
    table = read_adult("train")
    return table.add_column(0, "id", pa.array(np.arange(len(table)), pa.int64()))


@pytest.fixture(scope="module")
def adult_model(s3_server: str) -> tuple[str, TabularTransformer]:
    """An Adult tabular VAE (untrained weights; generation only needs the decoder and the codec)."""
    table = _adult_train()
    columns = [c for c in table.column_names if c != "id"]
    cfg = VaeflowConfig.model_validate(
        {
            "name": "adult",
            "data": {"uri": "s3://unused/adult"},
            "model": {"family": "vae", "hidden": [64], "latent_dim": 8, "likelihood": "tabular"},
        }
    )
    continuous = [c for c in columns if pa.types.is_integer(table.schema.field(c).type)]
    categorical = [c for c in columns if c not in continuous]
    transformer = TabularTransformer.fit(
        [table], continuous, categorical, table.schema, max_modes=3, reservoir=5_000
    )
    shape = DataShape(transformer.dim, None, transformer.layout)
    torch.manual_seed(0)
    model = build_model(cfg.model, shape)
    uri = f"{make_bucket()}/models/adult/v1"
    meta = CheckpointMeta(epoch=0, data_schema=encode_schema(table.schema))
    save_checkpoint(uri, model, cfg, TabularCodec(transformer), meta=meta)
    return uri, transformer


def test_generate_adult_in_the_training_schema_identical_for_any_parallelism(ray_local, adult_model):
    uri, transformer = adult_model
    real = _adult_train()
    root = make_bucket()
    job = GenerateConfig(rows=50_000, seed=7)
    one = generate_rows(uri, f"{root}/samples/w1", job, ComputeConfig(num_workers=1))
    two = generate_rows(uri, f"{root}/samples/w2", job, ComputeConfig(num_workers=2))
    assert one.rows == two.rows == 50_000 and len(one.files) == 5
    a, b = read_table(f"{root}/samples/w1"), read_table(f"{root}/samples/w2")
    a, b = a.sort_by("id"), b.sort_by("id")
    assert a.equals(b), "same seed, different parallelism: outputs differ"
    assert a.schema == delta_schema(real.schema)  # id + the 15 columns, same order and dtypes
    assert sorted(a.column("id").to_pylist()) == list(range(50_000))
    for col in transformer.columns:
        if hasattr(col, "categories"):
            seen = set(a.column(col.name).drop_null().to_pylist())
            assert seen <= set(col.categories), (col.name, seen - set(col.categories))
            assert len(seen) > 1, f"{col.name}: a single category in 50,000 sampled rows"
    job8 = GenerateConfig(rows=50_000, seed=8)
    other = generate_rows(uri, f"{root}/samples/seed8", job8, ComputeConfig(num_workers=2))
    assert not read_table(other.table_uri).sort_by("id").equals(a)


def test_embed_counts_input_drift_per_column_in_the_commit_and_strict_refuses_it(ray_local, adult_model):
    """Adult rows with an unknown workclass, an age above the training range and a null where training
    had none are embedded (every row, each id once) and counted per column in the commit's stats.drift;
    with strict, the job refuses before writing anything."""
    uri, _ = adult_model
    rows = _adult_train().slice(0, 2_000)
    table = rows.to_pydict()
    table["workclass"][:3] = ["Mars", "Mars", "Moon"]
    table["age"][10:12] = [200, 300]
    table["education"][20] = None
    root = make_bucket()
    fs = _fs()
    with fs.open(f"{root}/drifted/part-0.parquet", "wb") as f:
        pq.write_table(pa.table(table, schema=rows.schema), f)
    with fs.open(f"{root}/drifted/part-1.parquet", "wb") as f:  # a shard without drift
        pq.write_table(_adult_train().slice(2_000, 1_000), f)
    lines: list[str] = []
    committed = embed_corpus(uri, f"{root}/drifted", f"{root}/emb", progress=lines.append)
    assert committed.rows == 3_000
    assert committed.record.stats["drift"] == {
        "workclass": {"unknown_category": 3},
        "age": {"out_of_range": 2},
        "education": {"null": 1},
    }
    assert sorted(read_table(f"{root}/emb").column("id").to_pylist()) == list(range(3_000))
    assert any("input drift" in line and "'workclass': 3 value(s) not among" in line for line in lines), lines

    with pytest.raises(DataError, match=r"drifted/part-0.parquet: input drift refused by --strict: .*'age'"):
        embed_corpus(uri, f"{root}/drifted", f"{root}/emb-strict", EmbedConfig(strict=True))
    assert not fs.exists(f"{root}/emb-strict")


def test_embed_refuses_ids_repeated_across_shards_before_writing(ray_local, mnist_model, mnist_s3):
    """The same rows in two shards: refused up front naming the id column and both shards."""
    root = make_bucket()
    fs = _fs()
    shard = next(s for s in list_shards(f"{mnist_s3}/test"))
    data = fs.cat_file(shard)
    for name in ("a.parquet", "b.parquet"):
        fs.pipe_file(f"{root}/twice/{name}", data)
    both = r"id column 'id' is not unique: [0-9,]+ ids .*twice/a.parquet, .*twice/b.parquet"
    with pytest.raises(DataError, match=both):  # checked on the cluster: no id on the driver
        embed_corpus(mnist_model, f"{root}/twice", f"{root}/emb")
    assert not fs.exists(f"{root}/emb")
    # A null id, in the second of two shards: named with its shard.
    table = pq.read_table(fs.open(shard))
    ids = table.column("id").to_pylist()
    fs.pipe_file(f"{root}/nulls/a.parquet", data)
    with fs.open(f"{root}/nulls/b.parquet", "wb") as f:
        pq.write_table(
            table.set_column(0, "id", pa.array([None] + [i + 10**6 for i in ids[1:]], pa.int64())), f
        )
    with pytest.raises(DataError, match=r"id column 'id' has 1 null\(s\), e.g. in .*nulls/b.parquet"):
        embed_corpus(mnist_model, f"{root}/nulls", f"{root}/emb")
    assert not fs.exists(f"{root}/emb")


def test_embed_finds_an_id_repeated_within_a_shard_whose_footers_keep_ids_apart(
    ray_local, mnist_model, mnist_s3
):
    """Shards whose footers give disjoint id ranges are not checked up front (ids.ids_apart): the actors
    check each shard as they read it. Unordered unique ids commit every row; an id twice within a shard
    fails the job naming it and the shard, with nothing committed."""
    root = make_bucket()
    fs = _fs()
    table = pq.read_table(fs.open(next(iter(list_shards(f"{mnist_s3}/test"))))).slice(0, 400)
    order = np.random.default_rng(0).permutation(200)
    for name, ids in [("a", np.arange(200)), ("b", 1_000 + order)]:
        with fs.open(f"{root}/apart/{name}.parquet", "wb") as f:
            pq.write_table(table.slice(0, 200).set_column(0, "id", pa.array(ids, pa.int64())), f)
    committed = embed_corpus(mnist_model, f"{root}/apart", f"{root}/emb")
    assert sorted(read_table(committed.table_uri).column("id").to_pylist()) == [
        *range(200),
        *range(1_000, 1_200),
    ]
    repeated = 1_000 + order.copy()
    repeated[150] = repeated[20]
    with fs.open(f"{root}/apart/b.parquet", "wb") as f:
        pq.write_table(table.slice(0, 200).set_column(0, "id", pa.array(repeated, pa.int64())), f)
    one = rf"id column 'id' is not unique: 1 ids .*e.g. {repeated[20]}, in .*apart/b.parquet\)"
    with pytest.raises(DataError, match=one):
        embed_corpus(mnist_model, f"{root}/apart", f"{root}/emb-twice")
    assert not fs.exists(f"{root}/emb-twice/_delta_log")


def test_generate_where_keeps_only_rows_with_the_values_and_records_the_draws(ray_local, adult_model):
    """--where income=>50K sex=Female: every committed row carries both values, ids 0..n-1, the commit
    says how many rows were decoded for them (more than it kept: the model draws other rows too), the
    output is the same for 1 and 2 workers, and a condition the model cannot meet is refused up front."""
    uri, _ = adult_model
    root = make_bucket()
    job = GenerateConfig(rows=3_000, rows_per_file=1_000, seed=3, where=["income=>50K", "sex=Female"])
    lines: list[str] = []
    one = generate_rows(uri, f"{root}/cond/w1", job, ComputeConfig(num_workers=1), progress=lines.append)
    two = generate_rows(uri, f"{root}/cond/w2", job, ComputeConfig(num_workers=2))
    a, b = read_table(one.table_uri).sort_by("id"), read_table(two.table_uri).sort_by("id")
    assert a.equals(b), "same seed and conditions, different parallelism: outputs differ"
    assert a.num_rows == 3_000 and a.column("id").to_pylist() == list(range(3_000))
    assert set(a.column("income").to_pylist()) == {">50K"}
    assert set(a.column("sex").to_pylist()) == {"Female"}
    assert len(set(a.column("workclass").to_pylist())) > 1  # the other columns still vary
    draws = one.record.stats["draws"]
    assert draws > 3_000 and one.record.params["where"] == {"income": ">50K", "sex": "Female"}
    assert any(f"3,000 rows kept of {draws:,} draws" in line for line in lines), lines
    # Without conditions the draws are the rows, and the run key differs from the conditional run's.
    plain = generate_rows(uri, f"{root}/cond/plain", GenerateConfig(rows=1_000, seed=3))
    assert plain.record.stats["draws"] == 1_000 and "where" not in plain.record.params

    bad = {
        "income=rich": r"income='rich' is not a category the model was trained on; its categories: .*'>50K'",
        "colour=red": r"'colour' is not a column this model generates; its columns: age, ",
        "age=old": r"age='old' is not a int64 value",
        "age=500": r"age='500' is outside the training range \[17, 90\]",
    }
    for condition, message in bad.items():
        out = f"{root}/cond/bad-{condition.partition('=')[0]}"
        with pytest.raises(ConfigError, match=message):
            generate_rows(uri, out, GenerateConfig(rows=10, where=[condition]))
        assert not _fs().exists(out), condition
    with pytest.raises(ConfigError, match=r"--sampler mixture: .* holds no latent mixture"):
        generate_rows(uri, f"{root}/cond/bad-sampler", GenerateConfig(rows=10, sampler="mixture"))
    assert not _fs().exists(f"{root}/cond/bad-sampler")


def test_generate_match_shares_keeps_a_columns_training_shares_and_refuses_what_it_cannot_match(
    ray_local, adult_model
):
    """--match-shares income: the committed rows' share of >50K moves towards the training share the
    codec recorded (tests/unit/test_tabular.py: it is reached where the draws allow), the commit records
    1.5x the rows as draws and the columns in its params, the same rows come back for 1 and 2 workers;
    a column it cannot match is refused before anything is written."""
    uri, _ = adult_model
    root = make_bucket()
    income = next(c for c in load_checkpoint(uri).codec.transformer.columns if c.name == "income")
    target = dict(zip(income.categories, income.shares, strict=False))
    job = GenerateConfig(rows=4_000, rows_per_file=2_000, seed=5, match_shares=["income"])
    lines: list[str] = []
    one = generate_rows(uri, f"{root}/match/w1", job, ComputeConfig(num_workers=1), progress=lines.append)
    assert any("4,000 rows with income at the training shares (1.5x draws)" in line for line in lines), lines
    two = generate_rows(uri, f"{root}/match/w2", job, ComputeConfig(num_workers=2))
    plain = generate_rows(uri, f"{root}/match/plain", GenerateConfig(rows=4_000, rows_per_file=2_000, seed=5))
    a, b = read_table(one.table_uri).sort_by("id"), read_table(two.table_uri).sort_by("id")
    assert a.equals(b), "same seed, different parallelism: outputs differ"
    assert a.num_rows == 4_000 and a.column("id").to_pylist() == list(range(4_000))
    assert one.record.stats["draws"] == 6_000 and one.record.params["match_shares"] == ["income"]
    assert "match_shares" not in plain.record.params and one.record.run_key != plain.record.run_key

    def miss(table: pa.Table) -> float:
        labels = table.column("income").to_pylist()
        return abs(labels.count(">50K") / len(labels) - target[">50K"])

    # This small fixture model draws far fewer >50K rows than the data holds, more than 1.5x draws can
    # make up for: the kept rows move towards the share as far as the draws allow.
    assert miss(a) < miss(read_table(plain.table_uri)) - 0.02, (miss(a), miss(read_table(plain.table_uri)))

    bad = {
        ("age",): r"'age' is not a categorical column of this model; its categorical columns: .*income",
        ("colour",): r"'colour' is not a categorical column",
    }
    for columns, message in bad.items():
        out = f"{root}/match/bad-{columns[0]}"
        with pytest.raises(ConfigError, match=message):
            generate_rows(uri, out, GenerateConfig(rows=10, match_shares=list(columns)))
        assert not _fs().exists(out), columns
    both = GenerateConfig(rows=10, match_shares=["income"], where=["sex=Female"])
    with pytest.raises(
        ConfigError, match=r"--match-shares\) and generate.where \(--where\) exclude each other"
    ):
        generate_rows(uri, f"{root}/match/bad-both", both)


def test_generate_latent_scale_spreads_the_draws_and_is_part_of_the_runs_identity(ray_local, adult_model):
    """--latent-scale 2: the commit records it and its own run key, 1 and 2 workers commit the same
    rows, and the rows spread: a continuous column's decoded values vary more than at scale 1."""
    uri, _ = adult_model
    root = make_bucket()
    job = GenerateConfig(rows=4_000, rows_per_file=2_000, seed=5, latent_scale=2.0)
    one = generate_rows(uri, f"{root}/scale/w1", job, ComputeConfig(num_workers=1))
    two = generate_rows(uri, f"{root}/scale/w2", job, ComputeConfig(num_workers=2))
    plain = generate_rows(uri, f"{root}/scale/plain", GenerateConfig(rows=4_000, rows_per_file=2_000, seed=5))
    a, b = read_table(one.table_uri).sort_by("id"), read_table(two.table_uri).sort_by("id")
    assert a.equals(b), "same seed, different parallelism: outputs differ"
    assert one.record.params["latent_scale"] == 2.0 and "latent_scale" not in plain.record.params
    assert one.record.run_key != plain.record.run_key
    spread = {
        t: float(np.std(read_table(r.table_uri).column("age").to_numpy()))
        for t, r in (("2", one), ("1", plain))
    }
    assert spread["2"] > spread["1"], spread


HERE = """
import sys, ray, flows.cli
rc = flows.cli.main(sys.argv[1:])
print("ray initialized:", ray.is_initialized())
sys.exit(rc)
"""


def test_a_small_generate_with_no_cluster_set_up_runs_in_its_process_with_the_rays_files(
    ray_local, adult_model
):
    """`vaeflow generate` of at most generate.local_rows rows, in a process with no cluster set up
    (RAY_ADDRESS unset), decodes in that process and starts no Ray; its files, rows and run key are
    those of the same job on Ray workers, so the job run again on Ray finds it committed."""
    uri, _ = adult_model
    root = make_bucket()
    here = f"{root}/samples/here"
    argv = ["generate", "--model", uri, "--rows", "20000", "--rows-per-file", "5000", "--seed", "7"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-c", HERE, *argv, "--output", here],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    printed = done.stdout + done.stderr
    assert done.returncode == 0, printed[-3000:]
    assert "20,000 rows" in printed and "in 4 files in this process (generate.local_rows=100,000" in printed
    assert "(this process ran torch with" in printed and "ray initialized: False" in printed, printed[-3000:]

    job = GenerateConfig(rows=20_000, rows_per_file=5_000, seed=7)
    on_ray = generate_rows(uri, f"{root}/samples/ray", job, ComputeConfig(num_workers=2))  # ray_local is up
    assert not on_ray.skipped and on_ray.record.rows == 20_000
    a, b = read_table(here).sort_by("id"), read_table(on_ray.table_uri).sort_by("id")
    assert a.equals(b), "in-process and Ray generation differ"
    names = {u.rsplit("/", 1)[1] for u in on_ray.files}
    assert names == {p.rsplit("/", 1)[1] for p in _fs().glob(f"{here}/part-*.parquet")}
    again = generate_rows(uri, here, job, ComputeConfig(num_workers=2))
    assert again.skipped, "the same job on Ray did not find the in-process commit"
