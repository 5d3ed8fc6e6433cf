"""Launching Ray Train: the cluster, the TorchTrainer and its run settings, and the driver's link to
rank 0 (the `Events` actor: rank 0's records out, the driver's go in) while the run goes on."""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import ray
import ray.train
import ray.train.torch
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from vae_core.config import VaeflowConfig
from vae_core.data.codecs import Codec, codec_to_json
from vae_core.data.dataset import (
    DatasetSpec,
    encode_schema,
)
from vae_core.data.storage import arrow_filesystem, filesystem, join, scheme
from vae_core.errors import TrainingError
from vae_core.training.records import EpochRecord, Record

from . import ray_internals
from .cluster import check_resources, ensure_ray, is_own_local_cluster
from .feed import LoopConfig, Splits, build_datasets
from .runs import RAY_MARKER
from .worker import worker_loop


def storage_settings(runs_uri: str, storage_options: dict) -> dict[str, Any]:
    """RunConfig's storage for runs_uri: a local path, or a path and pyarrow filesystem for Ray Train."""
    if scheme(runs_uri) == "file":
        from pathlib import Path

        return {"storage_path": str(Path(runs_uri.removeprefix("file://")).resolve())}
    # Ray Train uploads checkpoints (and reads them back on resume) through this filesystem: single
    # PUTs, so a worker killed during an upload leaves no incomplete multipart upload.
    fs, path = arrow_filesystem(runs_uri, storage_options, for_writing=True)
    return {"storage_path": path, "storage_filesystem": fs}


# Ray Train V2's helpers that a local cluster of our own has no use for (Ray 2.60), each an actor
# process polling in the background on the cores the workers train on: the preemption watcher polls
# node drain state every 5 s (nothing drains a local node); the controller's metrics callbacks feed a
# dashboard that is not running. The controller polls the workers every 2 s by default, so a run
# ended up to 2 s after its last report; 0.5 s costs one remote call per worker.
# The user's own settings of these variables win.
LOCAL_TRAIN_ENV = {
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}


@contextlib.contextmanager
def local_train_env() -> Iterator[None]:
    """LOCAL_TRAIN_ENV while a trainer starts on our own local cluster (Ray Train reads these variables
    on the driver when fit() starts the controller, and hands them to it)."""
    own = is_own_local_cluster()
    added = {k: v for k, v in LOCAL_TRAIN_ENV.items() if own and k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def in_context_thread(target: Callable[[], None], name: str) -> threading.Thread:
    """A started daemon thread running target() in a copy of the caller's context: a Prefect task's
    logger needs its run context."""
    thread = threading.Thread(target=contextvars.copy_context().run, args=(target,), daemon=True, name=name)
    thread.start()
    return thread


def start_cluster(cfg: VaeflowConfig) -> None:
    """Connect to (or start) Ray for cfg.compute and set Ray Data's options for training."""
    ensure_ray(cfg.compute)
    check_resources(cfg.compute)
    ctx = ray.data.DataContext.get_current()
    # Small shards otherwise coalesce into one block and a single reader (Ray 2.60).
    ctx.target_max_block_size = min(ctx.target_max_block_size or 8 << 20, 8 << 20)
    ctx.enable_progress_bars = False  # the loop prints one line per epoch instead
    ctx.print_on_execution_start = False
    # Deterministic block order and block-to-worker assignment: a rerun with the same seed sees the
    # same batches, so runs are reproducible and comparable across worker counts.
    ctx.execution_options.preserve_order = True


def make_trainer(
    cfg: VaeflowConfig,
    name: str,
    loop: Callable[[dict[str, Any]], None],
    loop_config: dict[str, Any],
    datasets: dict[str, ray.data.Dataset],
) -> ray.train.torch.TorchTrainer:
    """The Ray Train run `name` of `loop(loop_config)` on every worker, as cfg.compute and cfg.train
    set it."""
    trainer = ray_internals.TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=cfg.compute.num_workers,
            use_gpu=cfg.compute.use_gpu,
            resources_per_worker={"CPU": cfg.compute.cpus_per_worker},
            placement_strategy="SPREAD" if cfg.compute.num_workers > 1 else "PACK",
        ),
        run_config=RunConfig(
            name=name,
            logging_config=LoggingConfig(log_level="WARNING"),
            # Without this, Ray Train routes print() through its logger as well: every line twice.
            worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.train.keep_checkpoints,
                checkpoint_score_attribute="val_elbo",
                checkpoint_score_order="max",
            ),
            **storage_settings(cfg.train.runs_uri, cfg.data.storage_options),
        ),
        datasets=datasets,
        # One worker takes whole datasets: no split coordinator actors to start and feed through.
        dataset_config=ray.train.DataConfig(datasets_to_split="all" if cfg.compute.num_workers > 1 else []),
    )
    trainer.local = is_own_local_cluster()  # no placement-group cleaner on our own cluster
    return trainer


@ray.remote(num_cpus=0)
class Events:
    """Where rank 0 leaves its records (the run's start, each finished epoch) for the driver, which
    polls them: epoch lines reach the caller's Progress (a terminal, the Prefect run log) and its
    `on_record` (MLflow, a progress artifact) instead of a worker's stdout. 0 CPUs: it must not take
    a CPU that the workers or Ray Data reserve. Start one with `new_events`."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.decided, self.go = False, None

    def add(self, record: Record) -> None:
        self.records.append(record)

    def take(self) -> list[Record]:
        records, self.records = self.records, []
        return records

    def decide(self, go: dict[str, Any] | None) -> None:
        """The driver's go for the workers that wait in await_go (a dict), or its abort (None)."""
        self.decided, self.go = True, go

    def decision(self) -> tuple[bool, dict[str, Any] | None]:
        return self.decided, self.go


def new_events() -> Any:
    """An `Events` actor on the driver's node and nowhere else, as Ray Train places its own controller:
    it lives and dies with the driver. Left to Ray it may go to any node: one the driver does not need
    takes it down when it dies, and one killed just before the launch may still pass for alive."""
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return Events.options(scheduling_strategy=here).remote()  # type: ignore[attr-defined]


@contextlib.contextmanager
def _relay(
    events: Any,
    progress: Callable[[str], None],
    on_record: Callable[[Record], None] | None,
    val_note: Callable[[], str] = str,
) -> Iterator[None]:
    """While the run goes on, a thread hands rank 0's records to `progress` (as lines) and `on_record`,
    twice a second, in this thread's context (a Prefect task's logger needs its run context); the
    records left when the run ends are handed over before this returns. `val_note()` ends the line of
    each validated epoch (what the validation split holds that training never saw). A failing `on_record` (an
    unreachable tracking server) is reported once and never stops the training."""
    stop, failed = threading.Event(), []

    def deliver() -> None:
        for record in ray.get(events.take.remote()):
            validated = isinstance(record, EpochRecord) and record.val_elbo is not None
            progress(record.line() + (val_note() if validated else ""))
            if on_record is None:
                continue
            try:
                on_record(record)
            except Exception as e:  # tracking is best effort: the run goes on
                if not failed:
                    progress(f"could not record epoch {getattr(record, 'epoch', 0)}: {e}")
                failed.append(e)

    def poll() -> None:
        while not stop.wait(0.5):
            deliver()

    thread = in_context_thread(poll, "vaeflow-epochs")
    try:
        yield
    finally:
        stop.set()
        thread.join()
        deliver()


class Launch:
    """Ray Train started while the driver still fits the codec (prepare_data's `then`).

    Before a worker runs its loop, Ray Train starts its controller and worker processes, and each
    imports torch, Ray Train and this package: seconds that, after the codec fit (one core's work),
    added to it, so the two overlap (bench/results/command_overhead.json). The workers wait
    in await_go until the driver has checked the data and recorded the run: `go` hands them the
    codec and the MLflow run id through the Events actor. On `abort` they end without a report, so
    the trainer finishes without a checkpoint, and `clean` removes the storage marker that Ray Train
    wrote into the run's folder, where that marker is all the folder holds: a refused launch leaves
    no run behind.
    """

    def __init__(self, cfg: VaeflowConfig, name: str, progress: Callable[[str], None], existed: bool) -> None:
        self.cfg, self.name, self.progress, self.existed = cfg, name, progress, existed
        self.events: Any = None
        self.columns: list[str] = []
        self.listeners: list[Callable[[Record], None]] = []
        self.outcome: dict[str, Any] = {}
        self.val_note = ""  # appended to validated epochs' lines (trainer.validation_drift)
        self.thread: threading.Thread | None = None
        self.scope = contextlib.ExitStack()

    def start(self, spec: DatasetSpec, schema: pa.Schema, shards: Splits, codec: Codec | None) -> None:
        """Start the trainer in a background thread (cluster up, codec `None` while it still fits)."""
        cfg = self.cfg
        wanted = set(spec.feature_columns)
        self.columns = codec.columns if codec is not None else [n for n in schema.names if n in wanted]
        self.events = new_events()
        loop = LoopConfig(cfg.to_json(redact=False), None, encode_schema(schema))
        datasets = build_datasets(cfg, self.columns, shards)
        loop_config = {"loop": loop.to_json(), "events": self.events}
        trainer = make_trainer(cfg, self.name, worker_loop, loop_config, datasets)
        self.scope.enter_context(local_train_env())
        self.scope.enter_context(_relay(self.events, self.progress, self._deliver, lambda: self.val_note))

        def run() -> None:
            try:
                self.outcome["result"] = trainer.fit()
            except BaseException as e:  # re-raised by result()
                self.outcome["error"] = e

        self.thread = in_context_thread(run, "vaeflow-train")

    def _deliver(self, record: Record) -> None:
        for listener in self.listeners:
            listener(record)

    def go(self, codec: Codec, tracked: Any, listeners: list[Callable[[Record], None]]) -> None:
        """The data are checked and the run recorded: the workers may train."""
        if not set(codec.columns) <= set(self.columns):  # the datasets read what the codec reads
            raise TrainingError(f"the codec reads {codec.columns}, the training datasets {self.columns}")
        self.listeners = listeners
        go = {"codec": codec_to_json(codec), "tracking_run": tracked.run_id if tracked else None}
        ray.get(self.events.decide.remote(go))

    def result(self) -> Any:
        """The trainer's result, once it has finished; its error raised here."""
        assert self.thread is not None
        try:
            self.thread.join()
        finally:
            self.scope.close()
        if "error" in self.outcome:
            raise self.outcome["error"]
        return self.outcome["result"]

    def abort(self, wait: bool) -> None:
        """Tell the workers to end, and with `wait` wait for the trainer to finish (errors ignored)."""
        if self.thread is not None:
            self.progress("not training: stopping the Ray Train workers that started beside the codec fit")
            with contextlib.suppress(Exception):
                ray.get(self.events.decide.remote(None), timeout=30)
                if wait:
                    self.thread.join(timeout=300)
        with contextlib.suppress(Exception):  # also after a start that failed half-way
            self.scope.close()

    def clean(self) -> None:
        """Remove the marker Ray Train wrote into a new run's folder, if it is all the folder holds."""
        if self.thread is None or self.existed:
            return
        run_uri = join(self.cfg.train.runs_uri, self.name)
        with contextlib.suppress(Exception):
            fs, root = filesystem(run_uri, self.cfg.data.storage_options)
            fs.invalidate_cache(root)
            names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]
            if names == [RAY_MARKER]:
                fs.rm(join(root, RAY_MARKER))
                if scheme(run_uri) == "file":
                    fs.rmdir(root)
