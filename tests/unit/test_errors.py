"""Errors: a user's mistake exits 2 with one line naming it, anything else is a bug that exits 1 with its
traceback, and every error crosses a process boundary (pickling, a Ray worker) as its own type."""

# ruff: noqa: E501  (one user-error class per line: the table reads as a list)

from __future__ import annotations

import copy
import os
import pickle
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import pyarrow as pa
import pytest
import torch

from flows.cli import main, run_command
from flows.parser import build_parser
from tests.conftest import binary_data, small_model
from vae_core import errors
from vae_core.config import VaeflowConfig
from vae_core.data.codecs.vector import VectorCodec
from vae_core.data.dataset import encode_schema
from vae_core.data.packaged import package_file
from vae_core.data.storage import SinglePutS3FileSystem
from vae_core.errors import (
    ChampionConflict,
    CheckpointError,
    ClusterResourceError,
    ConfigError,
    CredentialsError,
    DataError,
    ModelReportError,
    NonFiniteLossError,
    ObjectStoreBusy,
    PackageDataError,
    RegistryError,
    RunNameError,
    StorageError,
    TableConflict,
    TableError,
    UserError,
    find_error,
)
from vae_core.models.families import DataShape, build_model
from vae_core.operations.registry import ChampionRecord, read_version
from vae_core.training.checkpoints import CheckpointMeta, save_checkpoint
from vae_core.training.loop import fit
from vae_core.training.model_report import load_model_report

ROOT = Path(__file__).resolve().parents[2]
MESSAGE = "s3://b/train/part-0.parquet: column 'image': NaN or inf in vector features (row 123)"


def _model(tmp: Path) -> Path:
    """A 16-feature vector VAE trained on nothing, saved as training saves one."""
    cfg = VaeflowConfig.model_validate(
        {
            "data": {"uri": str(tmp / "nowhere"), "vector_column": "x"},
            "model": {"hidden": [8], "latent_dim": 2},
        }
    )
    codec = VectorCodec("x", 16, "float", unit_interval=True)
    model = build_model(cfg.model, DataShape.of(codec))
    schema = pa.schema([("id", pa.int64()), ("x", pa.list_(pa.float32(), 16))])
    meta = CheckpointMeta(epoch=1, data_schema=encode_schema(schema))
    save_checkpoint(str(tmp / "model"), model, cfg, codec, meta=meta)
    return tmp / "model"


# ---- a bug: exit 1 with its traceback ------------------------------------------------------------

# `vaeflow ARGV` with one numpy or torch function replaced by one that raises, as a bug inside it would.
BROKEN = """
import sys, {module}
def broken(*args, **kwargs):
    raise {error}("a bug inside {module}")
{function} = broken
from flows.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _csv(tmp: Path) -> list[str]:
    (tmp / "in.csv").write_text("a,b\n" + "".join(f"{i},{i % 3}\n" for i in range(20)))
    return ["data", "import", "csv", "--input", str(tmp / "in.csv"), "--output", str(tmp / "imported")]


def _report(tmp: Path) -> list[str]:
    return ["report", "--model", str(_model(tmp)), "--output", str(tmp / "report")]


@pytest.mark.parametrize(
    ("module", "function", "error", "argv"),
    [
        ("numpy", "numpy.random.default_rng", "ValueError", _csv),  # the train/test split's generator
        ("torch", "torch.nn.Module.load_state_dict", "TypeError", _report),  # loading the checkpoint
    ],
    ids=["numpy ValueError in data import", "torch TypeError in report"],
)
def test_a_bug_inside_numpy_or_torch_exits_1_with_its_traceback(module, function, error, argv, tmp_path):
    code = BROKEN.format(module=module, function=function, error=error)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-c", code, *argv(tmp_path)], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback (most recent call last)" in done.stderr
    assert done.stderr.rstrip().endswith(f"{error}: a bug inside {module}"), done.stderr
    assert "error:" not in done.stderr.replace(f"{error}:", "")  # no one-line "vaeflow ...: error:"


# ---- each user error: exit 2, one line naming the culprit -----------------------------------------


@pytest.fixture(autouse=True)
def _fresh_s3_clients() -> Iterator[None]:
    """s3fs caches a filesystem per set of options: one made without credentials (a case below) must
    not serve the tests that come after it with their environment back."""
    yield
    SinglePutS3FileSystem.clear_instance_cache()


def _raise(error: Exception) -> NoReturn:
    raise error


def _no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")  # no ~/.aws either
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance metadata to wait for
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing is sent without credentials
    SinglePutS3FileSystem.clear_instance_cache()


def _diverge() -> None:
    """The training loop at a learning rate of 1e30: the loss is non-finite within a few steps."""
    model = small_model()
    fit(model, [binary_data(32)] * 4, epochs=3, optimizer=torch.optim.SGD(model.parameters(), lr=1e30))


def _record(seq: int, version: str) -> ChampionRecord:
    uri = f"s3://r/models/vae/{version}"
    return ChampionRecord(seq, "vae", version, uri, "gate passed", "2024-01-0{seq}T00:00:00+00:00", None)


@dataclass
class Case:
    kind: type[UserError]
    culprit: str  # what the line must name: the file, column, option or URI
    argv: Callable[[Path], list[str]] | None = None  # a real `vaeflow` command making the mistake
    raised: Callable[[Path], object] | None = None  # else: a call that raises it, run as a command
    setup: Callable[[pytest.MonkeyPatch], None] | None = None  # the environment's part of the mistake


CASES = [
    Case(ConfigError, "nope.json", argv=lambda t: ["config", "--config", str(t / "nope.json")]),
    Case(DataError, "nowhere", argv=lambda t: ["data", "describe", str(t / "nowhere")]),
    Case(StorageError, "memory://vaeflow-errors/t", argv=lambda t: ["vacuum", "--table", "memory://vaeflow-errors/t"]),
    Case(CredentialsError, "s3://vaeflow-no-credentials", argv=lambda t: ["data", "describe", "s3://vaeflow-no-credentials/d"], setup=_no_credentials),
    Case(CheckpointError, "nomodel", argv=lambda t: ["report", "--model", str(t / "nomodel")]),
    Case(TableError, "notable", argv=lambda t: ["vacuum", "--table", str(t / "notable")]),
    # Not cheaply made through the CLI (an uninstalled package, the nightly's registry, a commit race,
    # a cluster): raised by the library where it can be, and run as a command's failure.
    Case(PackageDataError, "vaeflow_no_such_package", raised=lambda t: package_file("vaeflow_no_such_package", "data/x.csv", "install it")),
    Case(ModelReportError, "metrics.json", raised=lambda t: load_model_report(str(t / "v1"))),
    Case(RegistryError, "models/vae/v9", raised=lambda t: read_version(str(t / "registry"), "vae", "v9")),
    Case(ChampionConflict, "s3://r/models/vae/champion", raised=lambda t: _raise(ChampionConflict("s3://r/models/vae/champion: the champion moved while v3 was being promoted", "v3", _record(1, "v1"), _record(2, "v2")))),
    Case(TableConflict, "s3://b/embeddings", raised=lambda t: _raise(TableConflict("s3://b/embeddings: another writer committed to this table while this job ran; this job committed nothing"))),
    Case(RunNameError, "runs/nightly", raised=lambda t: _raise(RunNameError("data/runs/nightly: a run of this name exists; pass --resume to continue it"))),
    Case(NonFiniteLossError, "train.lr", raised=lambda t: _diverge()),
    Case(ObjectStoreBusy, "s3://vaeflow-busy/d", raised=lambda t: _raise(ObjectStoreBusy("s3://vaeflow-busy/d: the object store is throttling or unavailable (head_object: 503) after every retry"))),
    Case(ClusterResourceError, "compute.num_workers", raised=lambda t: _raise(ClusterResourceError("the cluster has 2 CPUs but 4 workers x 1 CPU need 4; lower compute.num_workers"))),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.kind.__name__ for c in CASES])
def test_each_user_error_exits_2_with_one_line_naming_the_culprit(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if case.setup:
        case.setup(monkeypatch)
    if case.argv:
        args = build_parser().parse_args(case.argv(tmp_path))
        with pytest.raises(Exception) as raised:
            args.func(args)  # the command itself: which class it raises
        assert type(find_error(raised.value, UserError)) is case.kind, raised.value
        code = main(case.argv(tmp_path))
    else:
        assert case.raised is not None
        with pytest.raises(case.kind) as raised:
            case.raised(tmp_path)
        assert type(raised.value) is case.kind

        def command(args: object) -> int:  # a command failing with it, as a wrapped cause
            raise RuntimeError("the job failed") from raised.value

        args = build_parser().parse_args(["config"])
        args.func = command
        code = run_command(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.splitlines()) == 1 and case.culprit in err, err
    assert "Traceback" not in err


def _user_error_classes() -> set[type]:
    """UserError's subclasses at any depth that vaeflow defines (not the classes Ray makes on the fly
    for a wrapped one, e.g. RayTaskError(DataError))."""
    found, todo = set(), [UserError]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub.__module__.startswith(("vae_core", "flows")):
                found.add(sub)
                todo.append(sub)
    return found


def test_every_user_error_class_has_a_case():
    sources = [*(ROOT / "vae_core").rglob("*.py"), *(ROOT / "flows").rglob("*.py")]
    raised_bare = any(re.search(r"raise UserError\b", p.read_text()) for p in sources)
    expected = _user_error_classes() | ({UserError} if raised_bare else set())
    assert {c.kind for c in CASES} == expected


# ---- across process boundaries: pickling and Ray -----------------------------------------------------

ERRORS = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.VaeflowError)]


def _instance(cls: type[errors.VaeflowError]) -> errors.VaeflowError:
    if cls is ChampionConflict:
        return ChampionConflict("s3://r/models/vae/champion: moved", "v3", _record(1, "v1"), _record(2, "v2"))
    return cls(f"{cls.__name__}: {MESSAGE}")


@pytest.mark.parametrize("cls", ERRORS, ids=[c.__name__ for c in ERRORS])
def test_every_error_pickles_as_its_type_with_its_fields(cls):
    error = _instance(cls)
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is cls and str(again) == str(error) and vars(again) == vars(error)


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray of 1 CPU, started as vaeflow starts its own (ray.init without a dashboard)."""
    import ray

    from vae_core.distributed.cluster import start_local_ray

    start_local_ray(num_cpus=1)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_errors_raised_in_a_ray_task_arrive_on_the_driver_by_type(ray_cluster):
    ray = ray_cluster

    @ray.remote
    def fail(error: Exception) -> None:
        raise error

    for error in (DataError(MESSAGE), _instance(ChampionConflict)):
        with pytest.raises(Exception) as raised:  # RayTaskError(DataError): .cause is the original
            ray.get(fail.remote(error))
        found = find_error(raised.value, type(error))
        assert type(found) is type(error) and str(found) == str(error) and vars(found) == vars(error)


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_a_data_error_raised_in_a_ray_data_udf_of_a_vaeflow_job_arrives_as_a_data_error(ray_cluster):
    """Ray Data wraps a UDF's exception as UserCodeException(...) `from` it, and a cause does not
    survive pickling: only the traceback text would name the DataError. vaeflow's jobs set
    raise_original_map_exception (jobs.start_cluster), so the exception itself comes back."""
    from vae_core.config import ComputeConfig
    from vae_core.distributed.jobs import start_cluster

    ray = ray_cluster
    saved = copy.deepcopy(ray.data.DataContext.get_current())

    def udf(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise DataError(MESSAGE)

    class Udf:  # an actor, as vaeflow's embed and generate jobs map their batches
        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            raise DataError(MESSAGE)

    try:
        start_cluster(ComputeConfig(num_workers=1, cpus_per_worker=1, data_cpus=0))
        for fn, kwargs in ((udf, {}), (Udf, {"concurrency": 1})):
            with pytest.raises(Exception) as raised:
                ray.data.range(4).map_batches(fn, **kwargs).take_all()
            found = find_error(raised.value, DataError)
            assert type(found) is DataError and str(found) == MESSAGE
    finally:
        ray.data.DataContext._set_current(saved)
