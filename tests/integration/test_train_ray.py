"""Ray Train on a real local cluster with checkpoints in S3 (moto server): training, a worker killed on
the cached path, resume, run names. A killed driver relaunched under its name is fault scenario 2
(tests/faults/test_training.py, `make faults`), which this module no longer repeats."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import s3fs
import torch

from tests.integration.conftest import SAMPLE_TRAIN, TEST_KEY_ID, TEST_SECRET, make_bucket
from vae_core.config import ComputeConfig, GenerateConfig, VaeflowConfig
from vae_core.data.codecs import Codec
from vae_core.data.codecs.table import TabularCodec
from vae_core.data.codecs.vector import VectorCodec
from vae_core.data.dataset import iter_batches, open_dataset
from vae_core.data.importers import read_adult
from vae_core.data.storage import arrow_filesystem
from vae_core.data.tables import read_table
from vae_core.distributed.cluster import check_resources
from vae_core.distributed.generate import generate_rows
from vae_core.distributed.launch import new_events
from vae_core.distributed.trainer import TrainResult, feed_rate, train_on_ray
from vae_core.distributed.worker import await_go
from vae_core.errors import ClusterResourceError, ConfigError, DataError, RunNameError, TrainingError
from vae_core.models.families import DataShape, build_model
from vae_core.training.checkpoints import SAMPLER_FILE
from vae_core.training.evaluation import evaluate

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(420)]


def mnist_config(data_uri: str, runs_uri: str, **train_kw) -> VaeflowConfig:
    return VaeflowConfig.model_validate(
        {
            "name": "mnist-vae",
            "data": {"uri": data_uri, "vector_column": "image", "image_shape": [1, 28, 28], "scale": 255},
            "model": {"family": "vae", "hidden": [400], "latent_dim": 20},
            "train": {"epochs": 2, "batch_size": 128, "runs_uri": runs_uri, **train_kw},
            "compute": {"num_workers": 2, "cpus_per_worker": 1, "data_cpus": 1},
        }
    )


def _test_batches(cfg: VaeflowConfig, codec: Codec) -> list[torch.Tensor]:
    shards, _, _ = open_dataset(cfg.data, "test")
    return [torch.from_numpy(codec.encode(b, s)) for s, b in iter_batches(shards, codec.columns, 2000)]


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _exists(uri: str) -> bool:
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    return fs.exists(uri)


@contextlib.contextmanager
def _terminal_output() -> Iterator[list[str]]:
    """What this process writes to its stdout and stderr file descriptors meanwhile (as capfd sees it)."""
    text: list[str] = []
    with tempfile.TemporaryFile() as f:
        saved = [os.dup(1), os.dup(2)]
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(f.fileno(), 1), os.dup2(f.fileno(), 2)
        try:
            yield text
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            f.seek(0)
            text.append(f.read().decode(errors="replace"))


@pytest.fixture(scope="module")
def two_worker_run(ray_local, mnist_sample) -> tuple[str, VaeflowConfig, TrainResult, str]:
    """2 workers x batch 64, 2 epochs on the MNIST sample, keep_checkpoints=1: (runs URI, config, result,
    what the driver printed meanwhile). Two tests read it."""
    runs = f"{make_bucket()}/runs"
    cfg = mnist_config(mnist_sample, runs, keep_checkpoints=1, batch_size=64)
    with _terminal_output() as printed:
        result = train_on_ray(cfg, run_name="s3-run")
    return runs, cfg, result, printed[0]


def test_two_workers_two_epochs_checkpoint_to_s3_and_beat_the_untrained_model(two_worker_run):
    runs, cfg, result, printed = two_worker_run
    assert [h.epoch for h in result.history] == [1, 2]
    # Epoch 1 streams from S3 and keeps the decoded rows (they fit train.cache_mb); epoch 2 reads memory.
    assert [h.data_from for h in result.history] == ["storage", "memory"]
    # 2 workers of 1 CPU and 1 data CPU between them: 1 torch thread each, cached or not.
    assert [h.threads for h in result.history] == [1, 1]
    assert result.checkpoint.meta.world_size == 2
    # Both workers on this CPU node: gradients averaged through shared memory (allreduce.py).
    assert result.checkpoint.meta.gradients == "shared memory"
    # On our own local cluster no PlacementGroupCleaner polls a State API that is not there.
    assert "Failed to query Ray Train Controller" not in printed
    # keep_checkpoints=1: the best by validation ELBO and the latest stay, any other is deleted.
    val = {h.epoch: h.val_elbo for h in result.history}
    best = max(val, key=val.get)
    kept = [e for e in (1, 2) if _exists(f"{runs}/s3-run/epoch_{e:04d}/meta.json")]
    assert kept == sorted({best, 2}), (kept, val)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    for epoch in kept:
        names = {f.rsplit("/", 1)[1] for f in fs.ls(f"{runs}/s3-run/epoch_{epoch:04d}")}
        assert {"model.safetensors", "optimizer.safetensors", "config.json", "meta.json"} <= names
    assert result.checkpoint_uri == f"{runs}/s3-run/epoch_0002"
    assert result.best_checkpoint_uri == f"{runs}/s3-run/epoch_{best:04d}"
    # Independent check on the driver: the trained model against an untrained one, same test rows.
    batches = _test_batches(cfg, result.checkpoint.codec)
    trained = evaluate(result.model, batches).elbo
    torch.manual_seed(cfg.train.seed)
    untrained = evaluate(build_model(cfg.model, DataShape(784, (1, 28, 28))), batches).elbo
    assert trained > untrained + 100, (trained, untrained)
    assert result.history[-1].val_elbo > result.checkpoint.meta.val_elbo_init


def test_feed_rate_counts_every_training_row_delivered_to_the_workers_on_each_pass(ray_local, mnist_sample):
    cfg = mnist_config(mnist_sample, f"{make_bucket()}/runs", epochs=2)
    passes = feed_rate(cfg, progress=lambda m: None)
    assert [p["rows"] for p in passes] == [SAMPLE_TRAIN] * 2  # both workers' shards, every pass streamed
    assert all(p["tensor_bytes"] == SAMPLE_TRAIN * 784 * 4 and p["rows_per_s"] > 0 for p in passes)


def _train_worker_pids() -> list[int]:
    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"] and p.info["cmdline"][0].startswith("ray::RayTrainWorker")
    ]


def _registered(run_uri: str, epoch: int) -> bool:
    """Ray Train has registered checkpoint `epoch` (not merely uploaded it): it is in the controller's
    checkpoint-manager snapshot, so a restart resumes from it."""
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    snapshot = f"{run_uri}/checkpoint_manager_snapshot.json"
    return fs.exists(snapshot) and f"epoch_{epoch:04d}" in fs.cat(snapshot).decode()


def test_a_killed_worker_of_a_cached_run_restarts_the_group_from_the_last_checkpoint(ray_local, mnist_sample):
    # The cached path (epochs after the first read memory); tests/faults/test_training.py kills a worker
    # of a streamed run at a held checkpoint upload. Here the kill lands wherever epoch 2 or later is:
    # the restart starts after the last registered checkpoint, and no finished epoch is trained again.
    runs = f"{make_bucket()}/runs"
    cfg = mnist_config(mnist_sample, runs, epochs=4, max_failures=1)
    killed: dict[str, float] = {}

    def killer() -> None:
        _wait_for(lambda: _registered(f"{runs}/kill-run", 1), 240, "checkpoint 1")
        pids = _train_worker_pids()
        assert pids, "no Ray Train worker process found"
        killed["at"] = time.time()
        os.kill(pids[-1], signal.SIGKILL)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    result = train_on_ray(cfg, run_name="kill-run")
    thread.join(timeout=5)
    assert "at" in killed
    history = result.history
    assert [h.epoch for h in history] == [1, 2, 3, 4]
    [restart] = [r["from_epoch"] for r in result.checkpoint.meta.restarts]
    assert 1 <= restart < 4
    assert history[restart - 1].finished_at < killed["at"] < history[restart].finished_at
    assert history[0].data_from == "storage" and history[-1].data_from in ("memory", "storage")
    assert result.checkpoint.meta.epoch == 4 and result.checkpoint_uri.endswith("epoch_0004")


def test_ddp_two_workers_of_64_match_one_worker_of_128(two_worker_run):
    _, two, two_result, _ = two_worker_run
    one = two.with_overrides(["train.batch_size=128", "compute.num_workers=1"])
    elbo_one = train_on_ray(one, run_name="ddp-1x128").history[-1].val_elbo
    elbo_two = two_result.history[-1].val_elbo
    assert abs(elbo_two - elbo_one) / abs(elbo_one) < 0.01, (elbo_two, elbo_one)


def test_a_plan_bigger_than_the_cluster_fails_fast_instead_of_hanging(ray_local):
    cfg = VaeflowConfig().with_overrides(["compute.num_workers=4", "compute.cpus_per_worker=1"])
    with pytest.raises(ClusterResourceError, match="would hang"):
        check_resources(cfg.compute)


@pytest.fixture(scope="module")
def tiny_s3(s3_server: str) -> str:
    """A few hundred rows of 16-pixel binary 'images' in a fresh bucket: train/ 300, test/ 100."""
    root = f"{make_bucket()}/tiny"
    fs, _ = arrow_filesystem(root)
    rng = np.random.default_rng(0)
    for split, n in (("train", 300), ("test", 100)):
        pixels = (rng.random((n, 16)) < 0.3).astype(np.uint8) * 255
        table = pa.table(
            {
                "id": pa.array(np.arange(n), pa.int64()),
                "image": pa.FixedSizeListArray.from_arrays(pa.array(pixels.ravel()), 16),
            }
        )
        pq.write_table(table, arrow_filesystem(f"{root}/{split}/part-0.parquet")[1], filesystem=fs)
    return root


def tiny_config(data_uri: str, runs_uri: str, storage_options: dict, **train_kw) -> VaeflowConfig:
    return VaeflowConfig.model_validate(
        {
            "name": "tiny",
            "data": {
                "uri": data_uri,
                "vector_column": "image",
                "scale": 255,
                "storage_options": storage_options,
            },
            "model": {"family": "vae", "hidden": [16], "latent_dim": 2},
            "train": {"epochs": 1, "batch_size": 64, "runs_uri": runs_uri, **train_kw},
            "compute": {"num_workers": 1, "cpus_per_worker": 1, "data_cpus": 1},
        }
    )


def test_a_run_name_is_resumed_only_when_asked_and_only_with_its_own_settings(ray_local, tiny_s3, s3_server):
    runs = f"{make_bucket()}/runs"
    # Explicit storage options (credentials nested and flat) on every path: data, checkpoints, run record.
    options = {"key": TEST_KEY_ID, "secret": TEST_SECRET, "client_kwargs": {"endpoint_url": s3_server}}
    cfg = tiny_config(tiny_s3, runs, options)
    first = train_on_ray(cfg, run_name="names")
    assert [h.epoch for h in first.history] == [1]
    assert first.checkpoint.config.data.storage_options == options  # the real ones, not "***"
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    record = json.loads(fs.cat(f"{runs}/names/vaeflow-run.json"))
    assert record["run_name"] == "names" and record["config"]["data"]["uri"] == tiny_s3
    files = [p for p in fs.find(f"{runs}/names") if not p.endswith("/")]  # pyarrow writes dir markers
    written = b"".join(fs.cat(p) for p in files)
    assert TEST_SECRET.encode() not in written and TEST_KEY_ID.encode() not in written

    # The same name again without --resume: refused before any worker starts, nothing trained.
    objects = set(fs.find(f"{runs}/names"))
    t0 = time.monotonic()
    with pytest.raises(RunNameError, match="pass --resume to continue it or choose another --run-name"):
        train_on_ray(cfg, run_name="names")
    # Other settings, even with --resume: refused, the differing keys named.
    changed = cfg.with_overrides(["train.lr=0.01", "model.latent_dim=3", "data.uri=" + tiny_s3 + "-other"])
    with pytest.raises(RunNameError, match=r"these keys differ: data\.uri, model\.latent_dim, train\.lr\n"):
        train_on_ray(changed, run_name="names", resume=True)
    nested = cfg.with_overrides(
        [f'data.storage_options={{"client_kwargs": {{"endpoint_url": "{s3_server}/"}}}}']
    )
    with pytest.raises(RunNameError, match=r"data\.storage_options\.client_kwargs\.endpoint_url"):
        train_on_ray(nested, run_name="names", resume=True)
    assert time.monotonic() - t0 < 20  # no Ray Train run was started for any of them
    fs.invalidate_cache()
    assert set(fs.find(f"{runs}/names")) == objects

    # --resume with the same settings and more epochs extends the run: epoch 1 is not trained again.
    longer = cfg.with_overrides(["train.epochs=2"])
    second = train_on_ray(longer, run_name="names", resume=True)
    assert [h.epoch for h in second.history] == [1, 2]
    assert second.history[0] == first.history[0]
    assert [r["from_epoch"] for r in second.checkpoint.meta.restarts] == [1]
    # A new name with resume=True simply starts: what the nightly's train task passes on its first try
    # (tests/integration/test_flows.py).


def _vector_shard(uri: str, n: int, bad: str | None = None, bad_row: int = 7) -> pa.Table:
    """n rows of 16-value float vectors in a variable-length list column; `bad` puts a NaN ("nan") or
    a 15-value vector ("short") at `bad_row`."""
    vectors = np.random.default_rng(n).random((n, 16)).astype(np.float32).tolist()
    if bad == "nan":
        vectors[bad_row][3] = float("nan")
    elif bad == "short":
        vectors[bad_row] = vectors[bad_row][:15]
    table = pa.table(
        {"id": pa.array(np.arange(n), pa.int64()), "v": pa.array(vectors, pa.list_(pa.float32()))}
    )
    fs, path = arrow_filesystem(uri)
    pq.write_table(table, path, filesystem=fs)
    return table


def test_checkpoint_every_and_validate_every_pick_the_epochs_that_write_and_validate(
    ray_local, tiny_s3, s3_server
):
    runs = f"{make_bucket()}/runs"
    options = {"key": TEST_KEY_ID, "secret": TEST_SECRET, "client_kwargs": {"endpoint_url": s3_server}}
    cfg = tiny_config(
        tiny_s3, runs, options, epochs=5, checkpoint_every=2, validate_every=3, keep_checkpoints=5
    )
    lines: list[str] = []
    result = train_on_ray(cfg, run_name="every", progress=lines.append)
    assert [h.epoch for h in result.history] == [1, 2, 3, 4, 5]  # every epoch reported
    written = [e for e in range(1, 6) if _exists(f"{runs}/every/epoch_{e:04d}/meta.json")]
    assert written == [2, 4, 5]  # every 2nd epoch and the last
    assert result.checkpoint_uri.endswith("epoch_0005") and result.checkpoint.meta.epoch == 5
    # Validated: every 3rd epoch, the last, and each epoch with a checkpoint (it carries its val ELBO).
    assert [h.epoch for h in result.history if h.val_elbo is not None] == [2, 3, 4, 5]
    for e in written:
        meta = json.loads(
            s3fs.S3FileSystem(skip_instance_cache=True).cat(f"{runs}/every/epoch_{e:04d}/meta.json")
        )
        assert meta["val_elbo"] == result.history[e - 1].val_elbo
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    assert len(epoch_lines) == 5 and "val ELBO" not in epoch_lines[0]
    assert all("val ELBO" in line for line in epoch_lines[1:])


@pytest.mark.parametrize(
    ("bad", "split"),
    [("nan", "train"), ("nan", "test"), ("short", "test")],
    ids=["nan-in-train-found-while-fitting", "nan-in-val-found-on-a-worker", "short-vector-on-a-worker"],
)
def test_a_bad_vector_fails_training_with_the_codecs_message_naming_file_column_and_row(
    ray_local, s3_server, bad, split
):
    root = f"{make_bucket()}/vectors"
    _vector_shard(f"{root}/train/part-0.parquet", 200)
    _vector_shard(f"{root}/test/part-0.parquet", 50, bad if split == "test" else None)
    bad_uri = f"{root}/{split}/part-1.parquet" if split == "train" else f"{root}/test/part-0.parquet"
    if split == "train":
        _vector_shard(bad_uri, 50, bad)
    fs, path = arrow_filesystem(bad_uri)
    table = pq.read_table(path, filesystem=fs)  # the rows the codec sees, in the file's order
    cfg = VaeflowConfig.model_validate(
        {
            "name": "bad-vectors",
            "data": {"uri": root, "vector_column": "v", "vector_dim": 16},
            "model": {"family": "vae", "hidden": [8], "latent_dim": 2, "likelihood": "gaussian"},
            "train": {"epochs": 1, "batch_size": 64, "runs_uri": f"{make_bucket()}/runs", "max_failures": 0},
            "compute": {"num_workers": 1, "cpus_per_worker": 1, "data_cpus": 1},
        }
    )
    with pytest.raises(DataError) as err:
        train_on_ray(cfg, run_name=f"bad-{bad}-{split}", progress=lambda m: None)
    # Found while fitting the codec on the driver (train) the file's rows are read from its start;
    # found on a worker (val), the message is embed's: the file and the id its batch starts at.
    source = bad_uri if split == "train" else f"{bad_uri} (batch from id 0)"
    with pytest.raises(DataError) as direct:
        VectorCodec("v", 16, "float").encode(table, source)
    assert str(err.value) == str(direct.value)
    row = "row 7" if bad == "nan" else "row 7 has 15 values"
    assert str(err.value).startswith(f"{source}: column 'v': ") and row in str(err.value)


def _adult_on_s3() -> str:
    """A dataset of Adult rows in a new bucket: train/ 600 rows, test/ 200 rows, no id column."""
    root = f"{make_bucket()}/adult"
    fs, _ = arrow_filesystem(root)
    for split, (start, n) in {"train": (0, 600), "test": (600, 200)}.items():
        table = read_adult("train").slice(start, n)
        pq.write_table(table, arrow_filesystem(f"{root}/{split}/part-0.parquet")[1], filesystem=fs)
    return root


def test_a_table_trains_on_ray_through_the_tabular_codec_saved_with_the_checkpoint(ray_local, s3_server):
    root = _adult_on_s3()
    cfg = VaeflowConfig.model_validate(
        {
            "name": "adult",
            "data": {"uri": root, "id_column": None},
            "model": {"family": "vae", "hidden": [32], "latent_dim": 4, "likelihood": "tabular"},
            "train": {
                "epochs": 4,
                "batch_size": 64,
                "lr": 0.01,
                "beta": 0.1,
                "runs_uri": f"{make_bucket()}/runs",
            },
            "compute": {"num_workers": 1, "cpus_per_worker": 1, "data_cpus": 1},
        }
    )
    result = train_on_ray(cfg, run_name="adult", progress=lambda m: None)
    codec = result.checkpoint.codec
    assert isinstance(codec, TabularCodec) and codec.columns == read_adult("train").column_names
    assert _exists(f"{result.checkpoint_uri}/codec.json") and not _exists(
        f"{result.checkpoint_uri}/tabular.json"
    )
    assert result.history[-1].val_elbo > result.checkpoint.meta.val_elbo_init
    # Epoch 1 streams on the worker's 1 CPU; from epoch 2 on both splits are in memory and the worker
    # also runs torch on the data CPU that no read needs any more (compute.threads_when_cached).
    assert [(h.data_from, h.threads) for h in result.history] == [("storage", 1)] + [("memory", 2)] * 3
    test = read_adult("train").slice(600, 200)
    elbo = evaluate(result.model, [torch.from_numpy(codec.encode(test, "test"))]).elbo
    assert abs(elbo - result.history[-1].val_elbo) < 0.05 * abs(elbo)  # the same rows, the same x
    # The final checkpoint holds the latent mixture (train.latent_prior); generate takes it by default.
    assert _exists(f"{result.checkpoint_uri}/{SAMPLER_FILE}") and result.checkpoint.sampler is not None
    # 600 training rows: the aggregate posterior, a diagonal Gaussian per row (train.latent_prior).
    assert re.fullmatch(
        r"latent mixture: 600 training-row posterior Gaussians on [1-4] active of 4 latent dimensions",
        result.checkpoint.meta.extra["sampler"],
    )
    first = result.checkpoint_uri.replace("epoch_0004", "epoch_0003")
    assert not _exists(f"{first}/{SAMPLER_FILE}")  # only the final checkpoint gets one
    out = make_bucket()
    auto = generate_rows(result.checkpoint_uri, f"{out}/auto", GenerateConfig(rows=300))
    prior = generate_rows(result.checkpoint_uri, f"{out}/prior", GenerateConfig(rows=300, sampler="prior"))
    assert auto.record.params["sampler"] == "mixture" and "sampler" not in prior.record.params
    assert not read_table(auto.table_uri).equals(read_table(prior.table_uri))


def test_a_launch_refused_after_its_trainer_started_stops_it_and_leaves_no_run(ray_local, s3_server):
    """Ray Train starts while the driver fits the codec (launch.Launch). When the fit then refuses
    the data (here: model.likelihood bernoulli on a table, found once the codec is fitted), the
    workers are told to stop before they train, the error is the fit's, the run's folder is gone
    (Ray Train's storage marker removed) and the cluster's CPUs are all free again."""
    root, runs = f"{make_bucket()}/table", f"{make_bucket()}/runs"
    fs, _ = arrow_filesystem(root)
    rng = np.random.default_rng(0)
    for split, n in {"train": 5000, "test": 200}.items():  # the mixture fit takes a while on 5,000 rows
        table = pa.table({"x": rng.normal(size=n), "city": rng.choice(["a", "b"], n)})
        pq.write_table(table, arrow_filesystem(f"{root}/{split}/part-0.parquet")[1], filesystem=fs)
    cfg = VaeflowConfig.model_validate(
        {
            "name": "refused",
            "data": {"uri": root, "id_column": None},
            "model": {"family": "vae", "hidden": [8], "latent_dim": 2, "likelihood": "bernoulli"},
            "train": {"epochs": 1, "runs_uri": runs, "max_failures": 0},
            "compute": {"num_workers": 1, "cpus_per_worker": 1, "data_cpus": 1},
        }
    )
    lines: list[str] = []
    with pytest.raises(ConfigError, match=r"model\.likelihood 'bernoulli' does not fit this data"):
        train_on_ray(cfg, run_name="refused", progress=lines.append)
    assert any("stopping the Ray Train workers that started beside the codec fit" in m for m in lines)
    assert not _exists(f"{runs}/refused")
    _wait_for(
        lambda: ray.available_resources().get("CPU") == ray.cluster_resources()["CPU"],
        30,
        "the stopped trainer's CPUs",
    )
    # The name is free: a launch with a fitting likelihood trains under it.
    good = cfg.model_copy(update={"model": cfg.model.model_copy(update={"likelihood": "auto"})})
    assert train_on_ray(good, run_name="refused", progress=lambda m: None).history[-1].epoch == 1


def test_a_worker_waiting_for_the_drivers_go_gives_up_after_its_timeout_naming_it(ray_local):
    """Workers start beside the codec fit and wait for the driver's go (worker.await_go); a driver that
    never decides (hung, not dead) makes them fail after the timeout with an error that names it."""
    events = new_events()
    t0 = time.monotonic()
    with pytest.raises(TrainingError, match=r"no go from the driver within 0\.5 s \(worker\.GO_TIMEOUT_S\)"):
        await_go(events, timeout_s=0.5)
    assert time.monotonic() - t0 < 10
    ray.get(events.decide.remote({"codec": "c", "tracking_run": None}))
    assert await_go(events, timeout_s=0.5) == {"codec": "c", "tracking_run": None}


def test_the_autoregressive_decoder_trains_on_two_workers_and_generates_on_any(ray_local, s3_server):
    """model.decoder=autoregressive through DDP (its masks are buffers the workers share) and the Ray
    generate job: the checkpoint is that model, it beats its untrained self, and 1 or 2 generate
    workers commit the same rows, in the training table's columns."""
    root = _adult_on_s3()
    cfg = VaeflowConfig.model_validate(
        {
            "name": "adult-ar",
            "data": {"uri": root, "id_column": None},
            "model": {"hidden": [32], "latent_dim": 4, "decoder": "autoregressive"},
            "train": {"epochs": 3, "batch_size": 64, "lr": 0.01, "runs_uri": f"{make_bucket()}/runs"},
            "compute": {"num_workers": 2, "cpus_per_worker": 1, "data_cpus": 1},
        }
    )
    result = train_on_ray(cfg, run_name="adult-ar", progress=lambda m: None)
    assert result.checkpoint.model.is_autoregressive and result.checkpoint.meta.world_size == 2
    assert result.history[-1].val_elbo > result.checkpoint.meta.val_elbo_init
    out, job = make_bucket(), GenerateConfig(rows=400, rows_per_file=200, seed=3)
    one = generate_rows(result.checkpoint_uri, f"{out}/w1", job, ComputeConfig(num_workers=1))
    two = generate_rows(result.checkpoint_uri, f"{out}/w2", job, ComputeConfig(num_workers=2))
    columns = read_adult("train").column_names
    a, b = (read_table(r.table_uri).sort_by([(c, "ascending") for c in columns]) for r in (one, two))
    assert a.num_rows == 400 and a.equals(b)
    assert a.column_names == columns
    assert set(a.column("income").to_pylist()) == {"<=50K", ">50K"}
