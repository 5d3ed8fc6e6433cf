"""Training on Ray, the driver: check the data, fit the codec, record the run, start Ray Train and
return its result. `train_on_ray` is the entry point (`vaeflow train`, the nightly flow).

The parts, one module each: feed (Ray Datasets and the codec on the workers), worker (the training
function on every worker), runs (run records: new, resumed or refused), launch (the trainer, the
cluster and rank 0's records on their way to the driver).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import ray
import ray.train
import ray.train.torch
import torch

from vae_core.config import VaeflowConfig
from vae_core.data.codecs import Codec, codec_to_json, fit_on_train
from vae_core.data.codecs.base import Drift, add_drift, describe_drift
from vae_core.data.dataset import (
    DatasetSpec,
    encode_schema,
    iter_batches,
    open_dataset,
    with_recorded_id,
)
from vae_core.data.storage import absolute, scheme
from vae_core.errors import ConfigError, DataError, TrainingError, raise_found
from vae_core.models.families import DataShape, check_likelihood
from vae_core.operations import tracking
from vae_core.training.checkpoints import Checkpoint, load_checkpoint
from vae_core.training.records import EpochRecord, Record

from .cluster import is_own_local_cluster
from .feed import LoopConfig, Splits, build_datasets
from .launch import Launch, in_context_thread, local_train_env, make_trainer, start_cluster
from .runs import check_run_name, record_run
from .worker import feed_loop


@dataclass
class TrainResult:
    history: list[EpochRecord]  # one per epoch, across restarts and relaunches
    checkpoint_uri: str  # the latest checkpoint
    best_checkpoint_uri: str  # best by validation ELBO among those kept
    checkpoint: Checkpoint = field(repr=False)  # the latest, loaded
    val_drift: Drift = field(default_factory=dict)  # validation values training never saw (validation_drift)

    @property
    def best_reason(self) -> str:
        """Why the best checkpoint is the best, in words (for the line that names it)."""
        epoch = int(self.best_checkpoint_uri.rstrip("/").rsplit("_", 1)[-1])
        record = next((r for r in self.history if r.epoch == epoch and r.val_elbo is not None), None)
        if record is None:
            return "the latest: no kept checkpoint was validated"
        why = f"highest validation ELBO of the kept checkpoints, {record.val_elbo:.2f} at epoch {epoch}"
        if self.val_drift:
            why += (
                f"; mind the validation values outside what training saw ({describe_drift(self.val_drift)})"
            )
        return why

    @property
    def model(self) -> torch.nn.Module:
        return self.checkpoint.model


def _checkpoint_uri(ckpt: ray.train.Checkpoint, runs_uri: str) -> str:
    kind = scheme(runs_uri)
    return ckpt.path if kind == "file" else f"{kind}://{ckpt.path.lstrip('/')}"


def _warm_start_codec(cfg: VaeflowConfig, schema: pa.Schema, progress: Callable[[str], None]) -> Codec:
    """train.init_from: the checkpoint's codec (its weights expect that feature layout; a codec fitted
    anew could order tabular modes differently), once its model settings are cfg's and the data has the
    columns it reads; else a ConfigError or DataError naming the setting and what differs."""
    uri = cfg.train.init_from or ""
    if uri == "champion":
        raise ConfigError(
            "train.init_from=champion names the registry's champion, which only the nightly flow "
            "(`vaeflow run`, `vaeflow serve`) resolves; give a checkpoint URI to `vaeflow train`"
        )
    init = load_checkpoint(uri, storage_options=cfg.data.storage_options)
    was, now = init.config.model.model_dump(), cfg.model.model_dump()
    diff = [f"model.{k}: {was[k]!r} (checkpoint) != {now[k]!r} (now)" for k in was if was[k] != now.get(k)]
    if diff:
        raise ConfigError(
            f"train.init_from {uri}: its model settings differ from this run's: {'; '.join(diff)}"
        )
    missing = [c for c in init.codec.columns if c not in schema.names]
    if missing:
        raise DataError(
            f"train.init_from {uri}: its model reads columns {missing} that {cfg.data.uri}/train lacks"
        )
    elbo = "" if init.meta.val_elbo is None else f", val ELBO {init.meta.val_elbo:.2f}"
    progress(f"warm start from {uri} (epoch {init.meta.epoch}{elbo}): weights and {init.codec.kind} codec")
    return init.codec


Then = Callable[[DatasetSpec, pa.Schema, Splits, Codec | None], None]


def prepare_data(
    cfg: VaeflowConfig,
    progress: Callable[[str], None] = print,
    meanwhile: Callable[[], None] | None = None,
    then: Then | None = None,
) -> tuple[DatasetSpec, pa.Schema, Splits, Codec]:
    """Check both splits up front (clear errors before any worker starts) and fit the codec on train
    (a warm start takes its checkpoint's). `meanwhile` (the cluster's start, _prepare_and_start) runs
    in this thread once the splits' files and schemas are checked, while the codec fits in another:
    what only the fit finds (a bad row, a likelihood that does not fit the data) is raised after it.
    `then(spec, schema, shards, codec)` (the trainer's start, Launch.start) runs in this thread after
    `meanwhile`, with codec None while it still fits, unless the fit has failed by then."""
    train_shards, schema, spec = open_dataset(cfg.data, "train")
    val_shards, val_schema, _ = open_dataset(cfg.data, cfg.train.val_split)
    if val_schema != schema:
        raise DataError(f"{cfg.data.uri}: the {cfg.train.val_split!r} split's schema differs from train's")
    shards = {"train": train_shards, "val": val_shards}
    if cfg.train.init_from:
        codec = _warm_start_codec(cfg, schema, progress)
        check_likelihood(cfg.model, DataShape.of(codec))
        if meanwhile is not None:
            meanwhile()
        if then is not None:
            then(spec, schema, shards, codec)
        return spec, schema, shards, codec

    def fit() -> tuple[Codec, str, float]:
        t0 = time.perf_counter()
        codec = fit_on_train(spec, schema, train_shards, cfg.data, seed=cfg.train.seed)
        return codec, check_likelihood(cfg.model, DataShape.of(codec)), time.perf_counter() - t0

    start = None if then is None else lambda: then(spec, schema, shards, None)
    codec, likelihood, seconds = _alongside(fit, meanwhile, start)
    progress(
        f"fitted the {codec.kind} codec ({codec.dim} features, {likelihood} likelihood) in {seconds:.1f}s"
    )
    return spec, schema, shards, codec


def _prepare_and_start(
    cfg: VaeflowConfig, progress: Callable[[str], None], launch: Launch | None = None
) -> tuple[DatasetSpec, pa.Schema, Splits, Codec]:
    """prepare_data with the cluster starting alongside the codec fit, and `launch`'s trainer after
    the cluster. Should the fit (or the likelihood check after it) refuse the data, the launch is
    aborted and a local cluster started here is shut down again: a bad input leaves no cluster
    running."""
    started_here = not ray.is_initialized()
    try:
        return prepare_data(cfg, progress, meanwhile=lambda: start_cluster(cfg), then=launch and launch.start)
    except BaseException:
        own = started_here and is_own_local_cluster()
        if launch is not None:
            launch.abort(wait=not own)  # our own cluster's shutdown ends its trainer at once
        if own:
            ray.shutdown()
        if launch is not None:
            launch.clean()
        raise


def _alongside(
    work: Callable[[], Any], meanwhile: Callable[[], None] | None, then: Callable[[], None] | None = None
) -> Any:
    """work() in a background thread while meanwhile() and then then() run in this one; work's result,
    or its error raised here. then() is skipped when work() has failed before it would start. The
    codec fit is one core's work for seconds and the local cluster's start is mostly waiting for its
    processes, so side by side `vaeflow train` reaches its trainer sooner
    (bench/results/command_overhead.json). ray.init stays in the calling thread: started from another,
    it sets no SIGTERM handler, and a driver so started hung on its first task (Ray 2.60). An error of
    meanwhile() is raised at once, and wins over one of work(), which then ends in its daemon thread,
    unwaited."""
    if meanwhile is None and then is None:
        return work()
    done: dict[str, Any] = {}

    def run() -> None:
        try:
            done["result"] = work()
        except BaseException as e:  # re-raised in the calling thread
            done["error"] = e

    thread = in_context_thread(run, "vaeflow-fit")
    if meanwhile is not None:
        meanwhile()
    if then is not None and "error" not in done:
        then()
    thread.join()
    if "error" in done:
        raise done["error"]
    return done["result"]


def feed_rate(cfg: VaeflowConfig, progress: Callable[[str], None] = print) -> list[dict[str, float]]:
    """How fast the training data path delivers x to the workers, with no model: cfg.train.epochs
    passes over the train split, each streamed from storage (no cache). One dict per pass: rows (all
    workers), seconds, rows_per_s, tensor_bytes (float32 x delivered). For sizing a cluster: the rate
    a GPU worker would be fed at."""
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"cache_mb": 0})})
    _, schema, shards, codec = _prepare_and_start(cfg, progress)
    loop_cfg = LoopConfig(cfg.to_json(redact=False), codec_to_json(codec), encode_schema(schema))
    name = f"{cfg.name}-feed-{uuid.uuid4().hex[:8]}"
    datasets = build_datasets(cfg, codec.columns, {"train": shards["train"]})
    with local_train_env():
        result = make_trainer(cfg, name, feed_loop, {"loop": loop_cfg.to_json()}, datasets).fit()
    passes = result.metrics["passes"]
    return [{**p, "rows_per_s": p["rows"] / p["seconds"]} for p in passes]


def train_on_ray(
    cfg: VaeflowConfig,
    run_name: str | None = None,
    progress: Callable[[str], None] = print,
    resume: bool = False,
    on_record: Callable[[Record], None] | None = None,
) -> TrainResult:
    """Fit cfg's model with Ray Train as run `run_name` (default: cfg.name) under train.runs_uri.

    A new name starts a run. A name with a stored run is resumed from its latest checkpoint only with
    resume=True and a config equal in its data/model/train keys (train.epochs may grow: that extends
    the run); otherwise RunNameError, before any worker starts. The run is recorded once the data
    have been checked, so a launch that fails on its data leaves no run behind.

    Rank 0's records (the run's start, then each epoch: the EpochStats, validation and throughput)
    reach the driver while the run goes on: each as a line through `progress` and as a Record through
    `on_record`. With train.init_from the run starts from that checkpoint's weights and codec.
    """
    data = with_recorded_id(cfg.data.model_copy(update={"uri": absolute(cfg.data.uri)}))  # import's key
    cfg = cfg.model_copy(
        update={
            "data": data,
            "train": cfg.train.model_copy(update={"runs_uri": absolute(cfg.train.runs_uri)}),
        }
    )
    name = run_name or cfg.name
    resuming = check_run_name(cfg, name, resume)
    launch = Launch(cfg, name, progress, existed=resuming)
    _, _, shards, codec = _prepare_and_start(cfg, progress, launch)
    val_drift = validation_drift(
        codec, shards["val"], cfg.train.val_split, cfg.data.storage_options, progress
    )
    if val_drift:
        launch.val_note = f" (validation values outside training: {describe_drift(val_drift)})"
    tracked = None
    try:
        if not resuming:
            resuming = record_run(cfg, name, resume)
        tracked = _tracking_run(cfg, name, progress)
        what = "resuming" if resuming else "training"
        progress(f"{what} {cfg.model.family} on {cfg.data.uri} as run {name!r} under {cfg.train.runs_uri}")
        launch.go(codec, tracked, [f for f in (on_record, tracked and tracked.record) if f is not None])
    except BaseException:
        if tracked:
            tracked.end(ok=False)
        launch.abort(wait=True)
        launch.clean()
        raise
    try:
        result = launch.result()
    except Exception as e:  # Ray raises TrainingFailedError with the worker traceback inside
        if tracked:
            tracked.end(ok=False)
        raise_found(e, DataError)  # the codec's error naming its file, column and row
        raise TrainingError(f"run {name!r} failed: {e}") from e
    if result.checkpoint is None:
        raise TrainingError(f"run {name!r} finished without a checkpoint")
    best = result.get_best_checkpoint(metric="val_elbo", mode="max") or result.checkpoint
    with result.checkpoint.as_directory() as d:
        latest = load_checkpoint(d, storage_options=cfg.data.storage_options)
    uri = _checkpoint_uri(result.checkpoint, cfg.train.runs_uri)
    if tracked:
        tracked.end(ok=True, checkpoint_uri=uri)
    return TrainResult(latest.meta.history, uri, _checkpoint_uri(best, cfg.train.runs_uri), latest, val_drift)


VAL_DRIFT_ROWS = 1_000_000  # validation rows read for validation_drift at most


def validation_drift(
    codec: Codec, shards: list[str], split: str, storage_options: dict | None, progress: Callable[[str], None]
) -> Drift:
    """Values of the validation split that the training split never had (Codec.drift: values outside
    the training range, unknown categories, nulls where training had none), over its first
    VAL_DRIFT_ROWS rows; said in a line when there are any. Such a value is encoded as it is and can
    move the validation ELBO far (one price above the training maximum: thousands of nats), and with
    it the choice of the best checkpoint, so training says so, as embed counts drift."""
    drift: Drift = {}
    if codec.reads != "table_columns":  # a vector codec's encode refuses what it cannot take: no drift
        return drift
    rows = 0
    for _, batch in iter_batches(shards, codec.columns, storage_options=storage_options):
        add_drift(drift, codec.drift(batch))
        rows += batch.num_rows
        if rows >= VAL_DRIFT_ROWS:
            break
    if drift:
        read = f"the first {rows:,}" if rows >= VAL_DRIFT_ROWS else f"all {rows:,}"
        progress(
            f"validation split {split!r} ({read} rows read) has values training never saw: "
            f"{describe_drift(drift)}; its ELBO includes them"
        )
    return drift


def _tracking_run(cfg: VaeflowConfig, name: str, progress: Callable[[str], None]) -> Any:
    """The MLflow run of training run `name` when MLFLOW_TRACKING_URI is set (operations.tracking);
    None without it, or, with a line saying why, when the server cannot be reached: tracking never
    stops a training run."""
    if not tracking.enabled():
        return None
    try:
        tracked = tracking.TrainingRun.start(cfg, name)
    except Exception as e:  # an unreachable or refusing server: train untracked
        progress(f"MLflow at {os.environ[tracking.ENV]}: not tracking this run ({type(e).__name__}: {e})")
        return None
    progress(f"tracking in MLflow at {os.environ[tracking.ENV]} as run {tracked.run_id}")
    return tracked
