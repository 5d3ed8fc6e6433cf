"""Bad input, class by class: `vaeflow ...` exits 2 with a short message naming the file, column, option
or URI, writes nothing and leaves no Ray cluster running. Every case fails before any Ray worker starts,
so no cluster is needed; those that only the codec fit finds (a NaN, a likelihood that does not fit the
data) meet the local cluster that `vaeflow train` starts alongside the fit, and it is shut down again.
The object-storage cases run against a real S3 API (moto's server on 127.0.0.1), started for them.

Run by `python -m bench bad_inputs` (make bench), it writes bench/results/bad_inputs.json (value: classes
that pass; target: classes listed); `make test` runs the same table without touching the result file.
The "Bad input" list in docs/cli.md is this table.
"""

# ruff: noqa: E501  (one bad-input class per line: the table reads as a list)

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import s3fs

from flows.cli import main
from tests.servers import local_s3_server, s3_server_checking_keys, s3_server_shedding_load
from vae_core.config import VaeflowConfig
from vae_core.data.codecs.table import TabularCodec
from vae_core.data.codecs.vector import VectorCodec
from vae_core.data.dataset import encode_schema
from vae_core.data.storage import SinglePutS3FileSystem
from vae_core.data.tabular import TabularTransformer
from vae_core.models.families import DataShape, build_model
from vae_core.training.checkpoints import CheckpointMeta, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]
OUTCOMES: dict[str, bool] = {}
TARGET = 88  # issue 37: at least 75 classes (80 then); issue 40: 8 more, each passing
WRITE_RESULT = "VAEFLOW_WRITE_BAD_INPUTS"  # set by bench/bad_inputs.py
BUCKET = "s3://vaeflow-bad-inputs"  # made on the moto server for the object-storage cases
MISSING = "s3://vaeflow-no-such-bucket"  # never made


def _vectors(
    folder: Path, n: int = 32, dim: int = 16, file: str = "part-0.parquet", first_id: int = 0, **extra
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(0).random((n, dim), dtype=np.float32)
    cols = {
        "id": pa.array(np.arange(first_id, first_id + n)),
        "x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), dim),
    }
    pq.write_table(pa.table({**cols, **extra}), folder / file)


def _dataset(root: Path, **kw) -> Path:
    _vectors(root / "train", **kw)
    _vectors(root / "test", **kw)
    return root


def _save(out: Path, cfg: VaeflowConfig, codec, schema: pa.Schema) -> Path:
    model = build_model(cfg.model, DataShape.of(codec))
    save_checkpoint(
        str(out), model, cfg, codec, meta=CheckpointMeta(epoch=1, data_schema=encode_schema(schema))
    )
    return out


def _model(tmp: Path, family: str = "vae") -> Path:
    """A 16-feature vector model trained on nothing, saved as training saves one (schema included)."""
    data = _dataset(tmp / "trained-on")
    cfg = VaeflowConfig.model_validate(
        {
            "data": {"uri": str(data), "vector_column": "x"},
            "model": {"family": family, "hidden": [8], "latent_dim": 2},
        }
    )
    codec = VectorCodec("x", 16, "float", unit_interval=True)
    schema = pq.read_schema(data / "train" / "part-0.parquet").remove_metadata()
    return _save(tmp / "model", cfg, codec, schema)


def _table_model(tmp: Path) -> Path:
    """A tabular model (age continuous in [20, 39], city 'a' or 'b', no nulls) trained on nothing."""
    table = pq.read_table(_table_data(tmp) / "train" / "part-0.parquet")
    cfg = VaeflowConfig.model_validate(
        {"data": {"uri": str(tmp / "t")}, "model": {"hidden": [8], "latent_dim": 2, "likelihood": "tabular"}}
    )
    codec = TabularCodec(TabularTransformer.fit([table], ["age"], ["city"], table.schema))
    return _save(tmp / "table-model", cfg, codec, table.schema)


def _config(tmp: Path, **sections) -> str:
    path = tmp / "config.json"
    path.write_text(json.dumps(sections))
    return str(path)


def _train(tmp: Path, root: Path, **more) -> list[str]:
    data_cfg = {"uri": str(root), "vector_column": "x", **more.pop("data", {})}
    return ["train", "--config", _config(tmp, data=data_cfg, train={"runs_uri": str(tmp / "runs")}, **more)]


@dataclass
class Case:
    name: str
    argv: Callable[[Path], list[str]]
    names: str  # what the message must contain: the file, column, option or URI
    output: str | None = None  # a path under tmp that must hold no file afterwards
    s3: bool = False  # runs against the S3 server; no bucket or object may appear on it
    setup: Callable[[pytest.MonkeyPatch], None] | None = None  # the environment's part of the mistake
    secret: str | None = None  # what the message must not contain
    fixture: str | None = None  # a fixture of this module the case needs (e.g. a server refusing keys)
    # "full:DIR" or "read-only:DIR": the command runs in its own mount namespace where tmp/DIR is a
    # 64 KB tmpfs, or read-only; files left inside it are listed from there (they vanish with it)
    mount: str | None = None
    slow: bool = False  # a Ray Train run: in `make test` and the bench, not in `make check`'s inner loop
    # run as `python -m flows.cli` in its own process, so that what Ray's loggers and workers write to
    # the real stderr counts too (in-process, pytest's capture never sees their handlers' stream)
    process: bool = False


def _csv(tmp: Path, text: str, name: str = "in.csv") -> str:
    (tmp / name).write_text(text)
    return str(tmp / name)


def _corrupt(tmp: Path) -> Path:
    root = _dataset(tmp / "d")
    (root / "train" / "part-1.parquet").write_bytes(b"PAR1 not really")
    return root


def _drift(tmp: Path) -> Path:
    root = _dataset(tmp / "d")
    _vectors(root / "train", file="part-1.parquet", dim=8)
    return root


def _nan(tmp: Path) -> Path:
    root = _dataset(tmp / "d")
    x = np.zeros((4, 16), np.float32)
    x[2, 5] = np.nan
    pq.write_table(
        pa.table(
            {"id": [100, 101, 102, 103], "x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 16)}
        ),
        root / "train" / "part-1.parquet",
    )
    return root


def _table_data(tmp: Path, **extra) -> Path:
    root = tmp / "t"
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        cols = {"id": list(range(20)), "age": [20.0 + i for i in range(20)], "city": ["a", "b"] * 10, **extra}
        pq.write_table(pa.table(cols), root / split / "part-0.parquet")
    return root


def _embed(tmp: Path, inp: Path | str, *more: str, family: str = "vae") -> list[str]:
    return [
        "embed",
        "--model",
        str(_model(tmp, family)),
        "--input",
        str(inp),
        "--output",
        str(tmp / "out"),
        *more,
    ]


def _twice(tmp: Path) -> Path:
    for name in ("a.parquet", "b.parquet"):
        _vectors(tmp / "twice", file=name)  # the same ids 0..31 in both
    return tmp / "twice"


def _null_ids(tmp: Path) -> Path:
    (tmp / "nullid").mkdir()
    x = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(32, np.float32)), 16)
    pq.write_table(pa.table({"id": [1, None], "x": x}), tmp / "nullid" / "p.parquet")
    return tmp / "nullid"


def _strict(tmp: Path) -> list[str]:
    model = _table_model(tmp)
    (tmp / "new").mkdir()
    pq.write_table(
        pa.table({"id": [1, 2], "age": [25.0, 30.0], "city": ["a", "zz"]}), tmp / "new" / "p.parquet"
    )
    return [
        "embed",
        "--model",
        str(model),
        "--input",
        str(tmp / "new"),
        "--output",
        str(tmp / "out"),
        "--strict",
    ]


def _no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")  # no ~/.aws either
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    SinglePutS3FileSystem.clear_instance_cache()  # instances made with the keys


def _wide(tmp: Path) -> Path:
    _vectors(tmp / "wide", dim=8)
    return tmp / "wide"


def _retyped(tmp: Path) -> Path:
    (tmp / "retyped").mkdir()
    pq.write_table(pa.table({"id": [1, 2], "x": ["a", "b"]}), tmp / "retyped" / "p.parquet")
    return tmp / "retyped"


def _no_rows(tmp: Path) -> Path:
    (tmp / "none").mkdir()
    x = pa.FixedSizeListArray.from_arrays(pa.array([], pa.float32()), 16)
    pq.write_table(pa.table({"id": pa.array([], pa.int64()), "x": x}), tmp / "none" / "p.parquet")
    return tmp / "none"


def _latin1(tmp: Path) -> str:
    (tmp / "latin1.csv").write_bytes(b"a,b\n1,caf\xe9\n2,x\n3,y\n4,z\n5,w\n")  # one latin-1 byte
    return str(tmp / "latin1.csv")


def _a_file(tmp: Path) -> str:
    (tmp / "afile").write_text("not a folder")
    return str(tmp / "afile")


def _other_files(tmp: Path) -> str:
    (tmp / "other").mkdir()
    (tmp / "other" / "notes.txt").write_text("someone else's")
    return str(tmp / "other")


def _foreign_table(tmp: Path) -> str:
    from deltalake import write_deltalake

    write_deltalake(str(tmp / "foreign"), pa.table({"a": [1, 2], "b": ["x", "y"]}))  # another tool's table
    return str(tmp / "foreign")


def _truncated_log(tmp: Path) -> str:
    """A table whose newest commit file was cut off mid-record (a copy interrupted, a full disk)."""
    from deltalake import write_deltalake

    x = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(32, np.float32)), 2)
    write_deltalake(str(tmp / "cut"), pa.table({"id": np.arange(16), "z_mean": x}))
    commit = tmp / "cut" / "_delta_log" / "00000000000000000000.json"
    commit.write_bytes(commit.read_bytes()[:60])
    return str(tmp / "cut")


def _broken_model_file(tmp: Path, name: str) -> str:
    model = _model(tmp)
    (model / name).write_text('{"epoch": 1, ')  # cut off
    return str(model)


def _big_csv(tmp: Path) -> str:
    rows = "".join(f"{i},{i * 0.37 % 1:.6f},c{i % 7}\n" for i in range(30_000))
    return _csv(tmp, "a,b,c\n" + rows, "big.csv")


GONE = "s3://vaeflow-deleted-meanwhile"  # made for one case, deleted by it while its job writes


def _many_vectors(tmp: Path, files: int = 40, rows: int = 2_000, dim: int = 16) -> Path:
    """Input that keeps an embed job writing for seconds: `files` parts with ids unique across them."""
    folder = tmp / "many"
    for i in range(files):
        _vectors(folder, n=rows, dim=dim, file=f"part-{i}.parquet", first_id=i * rows)
    return folder


def _run_folder(tmp: Path) -> Path:
    """A training run's folder with the checkpoints epoch_0001 and epoch_0002 (of `_model`'s model)."""
    model = _model(tmp)
    for epoch in (1, 2):
        (tmp / "runs" / "r" / f"epoch_{epoch:04d}").mkdir(parents=True)
        for f in model.iterdir():
            (tmp / "runs" / "r" / f"epoch_{epoch:04d}" / f.name).write_bytes(f.read_bytes())
    return tmp / "runs" / "r"


def _csv_split(tmp: Path) -> Path:
    """A dataset root whose train/ and test/ hold CSV files, not Parquet."""
    for split in ("train", "test"):
        (tmp / "c" / split).mkdir(parents=True)
        (tmp / "c" / split / "rows.csv").write_text("a,b\n1,2\n3,4\n")
    return tmp / "c"


def _generate(tmp: Path, output: str, *more: str) -> list[str]:
    model = _model(tmp)
    return ["generate", "--model", str(model), "--output", output.format(tmp=tmp), *more]


CASES = [
    # configuration and options
    Case("unknown config key", lambda t: ["config", "train.epochz=3"], "'epochz'"),
    Case("override without '='", lambda t: ["config", "train.epochs"], "train.epochs"),
    Case("value of the wrong type", lambda t: ["config", "train.epochs=many"], "train.epochs"),
    Case("value out of range", lambda t: ["config", "train.batch_size=0"], "train.batch_size"),
    Case("unknown model family", lambda t: ["config", "model.family=gan"], "'gan'"),
    Case("unknown codec", lambda t: ["config", "data.codec=jpeg"], "'jpeg'"),
    Case("dae without corruption", lambda t: ["config", "model.family=dae"], "corruption"),
    Case("missing config file", lambda t: ["config", "--config", str(t / "nope.json")], "nope.json"),
    Case("config file not JSON", lambda t: ["config", "--config", _csv(t, "{oops", "c.json")], "c.json"),
    Case("misspelt key in a config file", lambda t: ["config", "--config", _config(t, train={"epoch": 3})], "epoch"),
    Case("--rows-per-file 0", lambda t: _generate(t, "{tmp}/out", "--rows-per-file", "0"), "generate.rows_per_file", "out"),
    Case("--chunk-rows 0", lambda t: _embed(t, _dataset(t / "d") / "test", "--chunk-rows", "0"), "embed.chunk_rows", "out"),
    Case("--rows 0", lambda t: _generate(t, "{tmp}/out", "--rows", "0"), "generate.rows", "out"),
    Case("--latent-scale 0", lambda t: _generate(t, "{tmp}/out", "--latent-scale", "0"), "generate.latent_scale", "out"),
    Case("--rows 10**12", lambda t: _generate(t, "{tmp}/out", "--rows", str(10**12)), "generate.rows", "out"),
    Case("--run-name out of its folder", lambda t: [*_train(t, _dataset(t / "d")), "--run-name", "../escaped"], "'../escaped'", "escaped"),
    Case("300-character run name", lambda t: [*_train(t, _dataset(t / "d")), "--run-name", "r" * 300], "300 characters", "runs"),
    Case("301-character config name", lambda t: ["config", "name=" + "n" * 301], "name"),
    Case("infinite data.scale", lambda t: ["config", "data.scale=inf"], "data.scale"),
    Case("infinite train.lr (JSON would write null)", lambda t: ["config", "train.lr=inf"], "train.lr"),
    Case("--gpu with no GPU", lambda t: [*_train(t, _dataset(t / "d")), "--gpu"], "compute.use_gpu", "runs"),
    Case("diverging run (train.lr=1e30)", lambda t: [*_train(t, _dataset(t / "d")), "train.lr=1e30", "train.epochs=3", "train.batch_size=8", "train.max_failures=0"], "train.lr", slow=True),
    Case("misspelt override key", lambda t: ["config", "train.epoch=5"], "did you mean 'epochs'?"),
    Case("misspelt section in a config file", lambda t: ["config", "--config", _config(t, trian={"epochs": 3})], "trian: Extra inputs are not permitted; did you mean 'train'?"),
    Case("list override without JSON brackets", lambda t: ["config", "data.exclude=notes,memo"], """a list is JSON: data.exclude='["notes","memo"]'"""),
    # the training data
    Case("dataset that does not exist", lambda t: _train(t, t / "missing"), "missing/train"),
    Case("split folder without Parquet files", lambda t: (t / "e" / "train").mkdir(parents=True) or _train(t, t / "e"), "e/train"),
    Case("no test split", lambda t: _vectors(t / "d" / "train") or _train(t, t / "d"), "d/test"),
    Case("corrupt Parquet shard", lambda t: _train(t, _corrupt(t)), "part-1.parquet"),
    Case("shards with different schemas", lambda t: _train(t, _drift(t)), "part-1.parquet"),
    Case("NaN in a feature", lambda t: _train(t, _nan(t)), "part-1.parquet"),
    Case("unknown vector column", lambda t: _train(t, _dataset(t / "d"), data={"vector_column": "pixels"}), "'pixels'"),
    Case("vector column is not a list", lambda t: _train(t, _dataset(t / "d"), data={"vector_column": "id"}), "'id'"),
    Case("image shape does not fit the vector", lambda t: _train(t, _dataset(t / "d"), data={"image_shape": [1, 3, 3]}), "data.image_shape"),
    Case("unsupported column type", lambda t: _train(t, _table_data(t, blob=[b"x"] * 20), data={"vector_column": None}), "'blob'"),
    Case("exclude of an unknown column", lambda t: _train(t, _table_data(t), data={"vector_column": None, "exclude": ["zip"]}), "'zip'"),
    Case("bernoulli likelihood on a table", lambda t: _train(t, _table_data(t), data={"vector_column": None}, model={"likelihood": "bernoulli"}), "model.likelihood"),
    Case("tabular likelihood on vectors", lambda t: _train(t, _dataset(t / "d"), model={"likelihood": "tabular"}), "model.likelihood"),
    Case("autoregressive decoder on vectors", lambda t: _train(t, _dataset(t / "d"), model={"decoder": "autoregressive"}), "model.decoder"),
    Case("CSV files where Parquet shards belong", lambda t: _train(t, _csv_split(t)), "no .parquet files found, but CSV files: import it first: vaeflow data import csv --input"),
    Case("describe of a CSV file", lambda t: ["data", "describe", _csv(t, "a,b\n1,2\n")], "in.csv: a file, not a dataset folder with train/ (and test/); import it first: vaeflow data import csv"),
    # importing files
    Case("import of a missing file", lambda t: ["data", "import", "csv", "--input", str(t / "no.csv"), "--output", str(t / "imp")], "no.csv", "imp"),
    Case("import of an unparsable CSV", lambda t: ["data", "import", "csv", "--input", _csv(t, 'a,b\n1,2\n"3,4\n'), "--output", str(t / "imp")], "in.csv", "imp"),
    Case("import of an empty CSV", lambda t: ["data", "import", "csv", "--input", _csv(t, "a,b\n"), "--output", str(t / "imp")], "in.csv", "imp"),
    Case("import --exclude of an unknown column", lambda t: ["data", "import", "csv", "--input", _csv(t, "a,b\n1,2\n3,4\n"), "--exclude", "c", "--output", str(t / "imp")], "'c'", "imp"),
    Case("test file with other columns", lambda t: ["data", "import", "csv", "--input", _csv(t, "a,b\n1,2\n"), "--test", _csv(t, "a,c\n1,2\n", "t.csv"), "--output", str(t / "imp")], "t.csv", "imp"),
    Case("--test-fraction out of range", lambda t: ["data", "import", "csv", "--input", _csv(t, "a\n1\n"), "--test-fraction", "1.5", "--output", str(t / "imp")], "--test-fraction", "imp"),
    Case("--test and --test-fraction together", lambda t: ["data", "import", "csv", "--input", _csv(t, "a\n1\n"), "--test", _csv(t, "a\n2\n", "t.csv"), "--test-fraction", "0.3", "--output", str(t / "imp")], "--test", "imp"),
    Case("split too small for a test set", lambda t: ["data", "import", "csv", "--input", _csv(t, "a\n1\n"), "--output", str(t / "imp")], "imp", "imp"),
    Case("CSV with a column name twice", lambda t: ["data", "import", "csv", "--input", _csv(t, "a,a\n1,2\n3,4\n5,6\n7,8\n9,9\n"), "--output", str(t / "imp")], "'a' appears twice", "imp"),
    Case("CSV that is not UTF-8", lambda t: ["data", "import", "csv", "--input", _latin1(t), "--output", str(t / "imp")], "not UTF-8", "imp"),
    Case("bundled dataset with --input", lambda t: ["data", "import", "mnist", "--input", "x.csv", "--output", str(t / "imp")], "--input", "imp"),
    # embed and generate against the model
    Case("model that does not exist", lambda t: ["embed", "--model", str(t / "nomodel"), "--input", str(t), "--output", str(t / "out")], "nomodel", "out"),
    Case("run folder given as --model", lambda t: ["embed", "--model", str(_run_folder(t)), "--input", str(_dataset(t / "d") / "test"), "--output", str(t / "out")], "runs/r: a training run's folder, not a checkpoint; it holds the checkpoints epoch_0001, epoch_0002: give one, e.g. --model", "out"),
    Case("checkpoint of an epoch the run does not have", lambda t: ["embed", "--model", str(_run_folder(t) / "epoch_0009"), "--input", str(_dataset(t / "d") / "test"), "--output", str(t / "out")], "epoch_0009: no checkpoint there (the path does not exist); its run holds the checkpoints epoch_0001, epoch_0002", "out"),
    Case("dataset given as --model", lambda t: ["embed", "--model", str(_dataset(t / "d")), "--input", str(t / "d" / "test"), "--output", str(t / "out")], "holds Parquet files (a dataset or table), not a checkpoint", "out"),
    Case("CSV file given to embed", lambda t: _embed(t, _csv(t, "id,x\n1,2\n")), "in.csv: a CSV file, not Parquet; import it first: vaeflow data import csv --input", "out"),
    Case("dataset root given to embed", lambda t: _embed(t, _dataset(t / "d")), "a dataset root holding the splits test/, train/; embed one split at a time, e.g. --input", "out"),
    Case("input without the model's column", lambda t: _embed(t, _table_data(t) / "test"), "'x'", "out"),
    Case("vector of another width", lambda t: _embed(t, _wide(t)), "'x'", "out"),
    Case("feature column of another type", lambda t: _embed(t, _retyped(t)), "'x'", "out"),
    Case("input with zero rows", lambda t: _embed(t, _no_rows(t)), "none", "out"),
    Case("unknown --passthrough column", lambda t: _embed(t, _dataset(t / "d") / "test", "--passthrough", "label"), "'label'", "out"),
    Case("passthrough column named like an output column", lambda t: _embed(t, _vectors(t / "pt", z_mean=list(range(32))) or t / "pt", "--passthrough", "z_mean"), "'z_mean'", "out"),
    Case("malformed meta.json in the model", lambda t: ["embed", "--model", _broken_model_file(t, "meta.json"), "--input", str(_dataset(t / "d") / "test"), "--output", str(t / "out")], "model/meta.json", "out"),
    Case("malformed config.json in the model", lambda t: ["embed", "--model", _broken_model_file(t, "config.json"), "--input", str(_dataset(t / "d") / "test"), "--output", str(t / "out")], "model/config.json", "out"),
    Case("--with-logvar for an autoencoder", lambda t: _embed(t, _dataset(t / "d") / "test", "--with-logvar", family="ae"), "with_logvar", "out"),
    Case("embed output inside its input", lambda t: ["embed", "--model", str(_model(t)), "--input", str(_dataset(t / "d") / "test"), "--output", str(t / "d" / "test" / "emb")], "d/test", "d/test/emb"),
    Case("generate into the training data", lambda t: _generate(t, "{tmp}/trained-on/train"), "trained-on/train", None),
    Case("generate into the validation split", lambda t: _generate(t, "{tmp}/trained-on/test/new"), "trained-on/test", None),
    Case("output that is a file", lambda t: _embed(t, _dataset(t / "d") / "test", "--output", _a_file(t)), "is a file", None),
    Case("vacuum of a folder that is not a table", lambda t: ["vacuum", "--table", str(_dataset(t / "d") / "train")], "no Delta table there", None),
    Case("embed output at the model's folder", lambda t: _embed(t, _dataset(t / "d") / "test", "--output", str(t / "model")), "overlaps the model", None),
    Case("embed output inside the training split", lambda t: _embed(t, _dataset(t / "d") / "test", "--output", str(t / "trained-on" / "train" / "emb")), "trained-on/train", "trained-on/train/emb"),
    Case("output folder holding other files", lambda t: _embed(t, _dataset(t / "d") / "test", "--output", _other_files(t)), "notes.txt", None),
    Case("append to a table of other columns", lambda t: _embed(t, _dataset(t / "d") / "test", "--output", _foreign_table(t), "--mode", "append"), "columns a int64", None),
    Case("append to a table with a truncated _delta_log commit", lambda t: _embed(t, _dataset(t / "d") / "test", "--output", _truncated_log(t), "--mode", "append"), "cut: the Delta log", None),
    Case("disk full", lambda t: ["data", "import", "csv", "--input", _big_csv(t), "--output", str(t / "full" / "imp")], "full/imp: no space left", mount="full:full"),
    Case("read-only output", lambda t: _embed(t, _dataset(t / "d") / "test", "--output", str(t / "ro" / "emb")), "ro is on a read-only file system", mount="read-only:ro"),
    Case("ids repeated across shards", lambda t: _embed(t, _twice(t)), "'id'", "out"),
    Case("null ids", lambda t: _embed(t, _null_ids(t)), "'id'", "out"),
    Case("input drift with --strict", _strict, "'city'", "out"),
    # object storage
    Case("import into a missing bucket", lambda t: ["data", "import", "csv", "--input", _csv(t, "a\n1\n2\n3\n4\n5\n"), "--output", f"{MISSING}/d"], MISSING, s3=True),
    Case("dataset in a missing bucket", lambda t: _train(t, f"{MISSING}/d"), f"no such bucket {MISSING}", s3=True),
    Case("embed output in a missing bucket", lambda t: _embed(t, _dataset(t / "d") / "test", "--output", f"{MISSING}/emb"), MISSING, s3=True),
    Case("CSV missing from a bucket", lambda t: ["data", "import", "csv", "--input", f"{BUCKET}/nope.csv", "--output", str(t / "imp")], f"{BUCKET}/nope.csv", "imp", s3=True),
    Case("RAY_ADDRESS where no cluster answers", lambda t: _train(t, _dataset(t / "d")), "RAY_ADDRESS=127.0.0.1:9", "runs", setup=lambda m: m.setenv("RAY_ADDRESS", "127.0.0.1:9")),
    Case("credentials inside a URI", lambda t: ["data", "import", "csv", "--input", _csv(t, "a\n1\n2\n3\n4\n5\n"), "--output", "s3://AKIDEXAMPLE:Sup3rSecret@bucket/d"], "s3://***@bucket/d", secret="Sup3rSecret"),
    Case("credentials the object store refuses", lambda t: ["data", "import", "csv", "--input", f"{BUCKET}/in.csv", "--output", str(t / "imp")], "were refused (InvalidAccessKeyId)", "imp", fixture="refused_keys", secret="Sup3rSecret"),
    Case("S3 throttling past the retries", lambda t: ["data", "describe", f"{BUCKET}/d"], f"{BUCKET}/d: the object store is throttling", fixture="shedding_load"),
    Case("bucket deleted during a job", lambda t: _embed(t, _many_vectors(t), "--output", f"{GONE}/emb"), f"no such bucket {GONE} (deleted while the job ran?)", s3=True, fixture="bucket_deleted_mid_job", process=True, slow=True),
    Case("missing AWS credentials", lambda t: ["data", "import", "csv", "--input", _csv(t, "a\n1\n2\n3\n4\n5\n"), "--output", f"{BUCKET}/d"], f"{BUCKET}: no AWS credentials", s3=True, setup=_no_credentials),
]  # fmt: skip


@pytest.fixture(scope="module")
def s3() -> Iterator[s3fs.S3FileSystem]:
    """moto's S3 server with BUCKET made, for the object-storage cases (started on first use)."""
    with local_s3_server(separate_process=True):
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir(BUCKET)
        yield fs
    SinglePutS3FileSystem.clear_instance_cache()


@contextmanager
def _aws_pointing_at(monkeypatch: pytest.MonkeyPatch, endpoint: str, **more: str) -> Iterator[None]:
    """The AWS environment (keys included, `more` added) pointing at `endpoint`, s3fs's clients fresh."""
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "Sup3rSecret",
    }
    for key, value in {**env, **more}.items():
        monkeypatch.setenv(key, value)
    SinglePutS3FileSystem.clear_instance_cache()
    yield
    SinglePutS3FileSystem.clear_instance_cache()


@pytest.fixture
def shedding_load(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The AWS environment pointing at an S3 endpoint that answers 503 SlowDown to everything; one
    attempt per request (AWS_MAX_ATTEMPTS, as a user may set it) keeps the retries to s3fs's own."""
    with s3_server_shedding_load() as endpoint, _aws_pointing_at(monkeypatch, endpoint, AWS_MAX_ATTEMPTS="1"):
        yield


@pytest.fixture
def refused_keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The AWS environment pointing at an S3 server that knows no access key: every request refused."""
    with s3_server_checking_keys() as endpoint, _aws_pointing_at(monkeypatch, endpoint):
        yield


@pytest.fixture
def bucket_deleted_mid_job(s3: s3fs.S3FileSystem) -> Iterator[None]:
    """GONE made, and deleted (objects, then the bucket) as soon as the job's first file lands in it."""
    import boto3
    import botocore.exceptions

    name = GONE.removeprefix("s3://")
    client = boto3.client("s3")
    client.create_bucket(Bucket=name)
    done = threading.Event()

    def keys() -> list[str]:
        return [o["Key"] for o in client.list_objects_v2(Bucket=name).get("Contents", [])]

    def delete_after_first_file() -> None:
        while not done.is_set() and not keys():
            time.sleep(0.05)
        while True:  # files landing meanwhile are deleted too, until the bucket goes
            for key in keys():
                client.delete_object(Bucket=name, Key=key)
            try:
                client.delete_bucket(Bucket=name)
                return
            except botocore.exceptions.ClientError:  # BucketNotEmpty: one more file landed
                time.sleep(0.02)

    watcher = threading.Thread(target=delete_after_first_file, daemon=True)
    watcher.start()
    yield
    done.set()  # a job that wrote nothing: the bucket goes now, as the case expects no bucket left
    watcher.join(timeout=60)
    assert not watcher.is_alive(), f"{GONE} could not be deleted"


def _in_mount_namespace(mount: str, tmp: Path, argv: list[str]) -> tuple[int, str, list[str]]:
    """Run `vaeflow ARGV` in a new mount namespace where tmp/DIR is full (a 64 KB tmpfs) or read-only:
    its exit code, stderr, and the files it left in DIR (listed before the namespace, and DIR's
    mount, go away)."""
    kind, folder = mount.split(":")
    target = tmp / folder
    target.mkdir()
    how = {
        "full": f"mount -t tmpfs -o size=64k tmpfs {target}",
        "read-only": f"mount --bind {target} {target} && mount -o remount,bind,ro {target}",
    }[kind]
    script = f'{how} || exit 99; "$0" -m flows.cli "$@"; rc=$?; find {target} -type f; exit $rc'
    proc = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, sys.executable, *argv],
        capture_output=True, text=True, timeout=240, cwd=tmp,
    )  # fmt: skip
    assert proc.returncode != 99, f"cannot mount {kind} {target}: {proc.stderr}"
    return proc.returncode, proc.stderr, proc.stdout.split()


# Ray's own driver writes this line for every Ray Data actor pool, on any run, failed or not: Ray Data
# passes its actors' arguments through the object store and restarts actors (ray-project/ray#57733).
RAY_ACTOR_ARGS_WARNING = re.compile(
    r"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in the object store"
)


def _as_own_process(tmp: Path, argv: list[str]) -> tuple[int, str]:
    """`vaeflow ARGV` as its own process: exit code and everything on its stderr but Ray's warning above."""
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", *argv], capture_output=True, text=True, timeout=240, cwd=tmp
    )
    lines = [line for line in proc.stderr.strip().splitlines() if not RAY_ACTOR_ARGS_WARNING.search(line)]
    return proc.returncode, "\n".join(lines)


def _s3_objects(fs: s3fs.S3FileSystem) -> set[str]:
    fs.invalidate_cache()
    return {key for bucket in fs.ls("") for key in [bucket, *fs.find(bucket)]}


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.name, marks=[pytest.mark.slow] if c.slow else []) for c in CASES]
)
def test_bad_input_exits_2_with_a_short_message_naming_it_and_writes_nothing(
    case, tmp_path, capsys, monkeypatch, request
):
    monkeypatch.chdir(tmp_path)
    fs = request.getfixturevalue("s3") if case.s3 else None
    stored = _s3_objects(fs) if fs else set()
    argv = case.argv(tmp_path)
    before = _files(tmp_path)
    OUTCOMES[case.name] = False
    if case.setup:
        case.setup(monkeypatch)
    if case.fixture:
        request.getfixturevalue(case.fixture)
    left: list[str] = []
    if case.mount:
        code, err, left = _in_mount_namespace(case.mount, tmp_path, argv)
        err = err.strip()
    elif case.process:
        code, err = _as_own_process(tmp_path, argv)
    else:
        code = main(argv)
        err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert not left, f"files left in the full or read-only output: {left}"
    assert not ray.is_initialized(), "a Ray cluster was left running"
    assert case.names in err, err
    assert "Traceback" not in err and len(err.splitlines()) <= 2, err
    assert case.secret is None or case.secret not in err, err
    if case.output:
        out = tmp_path / case.output
        assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()], f"{out} holds files"
    written = _files(tmp_path) - before
    assert not any(str(p).startswith(str(tmp_path / "out")) for p in written)
    if fs:
        monkeypatch.undo()  # the keys back, to list what the server holds
        assert _s3_objects(fs) == stored, "a bucket or object appeared"
    OUTCOMES[case.name] = True


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def test_the_docs_list_every_class_and_a_bench_run_writes_the_result():
    """Runs after the table (same module, in order): the docs' list; under bench, the result file."""
    doc = (ROOT / "docs" / "cli.md").read_text().split("### Bad input", 1)
    assert len(doc) == 2, "docs/cli.md has no '### Bad input' section"
    missing = [c.name for c in CASES if f"- {c.name}" not in doc[1].split("\n## ", 1)[0]]
    assert not missing, f"the Bad input list in docs/cli.md lacks {missing}"
    if os.environ.get(WRITE_RESULT) and len(OUTCOMES) == len(CASES):  # bench, the whole table
        from bench._results import write_result

        write_result(
            "bad_inputs",
            value=sum(OUTCOMES.values()),
            unit="bad-input classes whose vaeflow command exits 2 with a short message naming the input and writes nothing",
            target=max(len(CASES), TARGET),
            better="higher",
            setting={"test": "tests/unit/test_bad_inputs.py", "classes": len(CASES)},
            failed=[name for name, ok in OUTCOMES.items() if not ok],
        )
    assert len(CASES) >= 30
