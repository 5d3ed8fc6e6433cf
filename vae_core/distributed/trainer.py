"""Ray Train: vae_core's pure training loop on every worker, data streamed from Parquet shards by Ray Data.

Ray touches the plain PyTorch loop at marked places only: the data shard (get_dataset_shard),
the DDP wrapper (prepare_model), and the per-epoch report with rank 0's checkpoint (ray.train.report).
Resuming: a restarted worker group, or a relaunch with the same run name and storage, gets the latest
checkpoint from ray.train.get_checkpoint() and continues with the next epoch.

Run names: the first launch of a run writes runs_uri/<name>/vaeflow-run.json (the redacted config).
Relaunching a name that has a stored run is an error unless resuming is asked for (`resume=True`,
`vaeflow train --resume`), and even then when the stored config differs in a data/model/train key
(named in the error): a run is one model trained on one dataset. Not compared: train.epochs (a
resume with more epochs extends a finished run), and settings that do not change what is trained
(train.runs_uri, train.max_failures, train.keep_checkpoints, train.checkpoint_every,
train.validate_every, train.cache_mb, the compute section).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.data.collate_fn import ArrowBatchCollateFn
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig

from vae_core.config import DataConfig, ModelConfig, TrainConfig, VaeflowConfig
from vae_core.data.codecs import Codec, codec_from_json, codec_to_json, encode_by_file, fit_on_train
from vae_core.data.dataset import DatasetSpec, encode_schema, open_dataset, with_recorded_id
from vae_core.data.storage import absolute, arrow_filesystem, create_only_write, filesystem, join, scheme
from vae_core.errors import DataError
from vae_core.models.families import DataShape, build_model, check_likelihood
from vae_core.models.model import LatentModel
from vae_core.models.sampler import LatentMixture, fit_latent_mixture
from vae_core.operations import tracking
from vae_core.training.checkpoints import Checkpoint, CheckpointMeta, load_checkpoint, save_checkpoint
from vae_core.training.evaluation import EvalResult, evaluate
from vae_core.training.loop import EpochStats, KLSchedule, LRSchedule, fit, make_optimizer

from . import allreduce
from .cluster import check_resources, ensure_ray, is_own_local_cluster
from .errors import reraise_data_error

PATH = "path"  # the column read_parquet(include_paths=True) adds


Record = dict[str, Any]  # an event from rank 0: {"kind": "start" | "epoch", ...}


class TrainingError(RuntimeError):
    """The Ray Train run failed after its allowed restarts."""


class RunNameError(ValueError):
    """The run name belongs to a stored run that this launch may not continue."""


@dataclass
class TrainResult:
    history: list[dict[str, Any]]  # one record per epoch, across restarts and relaunches
    checkpoint_uri: str  # the latest checkpoint
    best_checkpoint_uri: str  # best by validation ELBO among those kept
    checkpoint: Checkpoint = field(repr=False)  # the latest, loaded

    @property
    def model(self) -> torch.nn.Module:
        return self.checkpoint.model


# ---- data -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoopConfig:
    """What the driver hands every worker (Ray's train_loop_config is one JSON string of this)."""

    config: str  # VaeflowConfig JSON, unredacted: workers open the data with the real storage options
    codec: str | None  # codec_to_json of the codec fitted on train; None: the driver's go brings it
    schema: str  # the training columns' Arrow schema (dataset.encode_schema), recorded in checkpoints
    tracking_run: str | None = None  # the MLflow run id, recorded in checkpoints (operations.tracking)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> LoopConfig:
        return cls(**json.loads(text))


def _read(shards: list[str], columns: list[str], storage_options: dict) -> ray.data.Dataset:
    """The shards' `columns` plus PATH, the file each row came from (for error messages), one read
    task per shard.

    Ray 2.60's default (V2) Parquet datasource plans a file-listing task before the reads: 2.7 s a
    pass over a 500-row split on a warm local cluster, 5.9 s for the first, against 0.25 s and 1.5 s
    with the V1 datasource, which the read takes (the setting is read when the dataset is created).
    """
    fs, _ = arrow_filesystem(shards[0], storage_options)
    paths = [arrow_filesystem(s, storage_options)[1] for s in shards]
    ctx = ray.data.DataContext.get_current()
    v2, ctx.use_datasource_v2 = ctx.use_datasource_v2, False
    # The V1 datasource logs its sampled encoding ratio and batch size at INFO, twice per dataset.
    log = logging.getLogger("ray.data._internal.datasource.parquet_datasource")
    level = log.level
    log.setLevel(max(level, logging.WARNING))
    try:
        ds = ray.data.read_parquet(
            paths, filesystem=fs, include_paths=True, override_num_blocks=len(paths)
        ).select_columns([*columns, PATH])
    finally:
        ctx.use_datasource_v2 = v2
        log.setLevel(level)
    return ds


def build_datasets(
    cfg: VaeflowConfig, columns: list[str], shards: dict[str, list[str]]
) -> dict[str, ray.data.Dataset]:
    """Ray Datasets of the raw `columns` that the codec reads (and each row's file): rows become x on
    the workers (`Encode`), so Ray Data moves the stored types (uint8 pixels, not float32)."""
    out = {}
    for name, split_shards in shards.items():
        # The id column rides along (8 bytes a row) so that a bad row's error names it, as embed's does.
        ids = [cfg.data.id_column] if cfg.data.id_column and cfg.data.id_column not in columns else []
        ds = _read(split_shards, [*columns, *ids], cfg.data.storage_options)
        if name == "train":  # shards arrive in a seeded random order, rows then mix in the shuffle buffer
            ds = ds.randomize_block_order(seed=cfg.train.seed)
        out[name] = ds
    return out


class Encode(ArrowBatchCollateFn):
    """Ray Data's collate step on a worker: an Arrow batch of rows -> x (B, D) float32 via the codec.

    It runs in the data iterator's prefetch threads, overlapping the training step. A bad row fails
    with the codec's message naming its file: the batch is encoded again one file at a time to find it.
    """

    def __init__(self, codec: Codec, data_uri: str, id_column: str | None) -> None:
        super().__init__()
        self.codec, self.data_uri, self.id_column = codec, data_uri, id_column

    def __call__(self, batch: pa.Table) -> torch.Tensor:
        x = encode_by_file(self.codec, batch, batch.column(PATH), self.data_uri, self.id_column)
        return torch.from_numpy(x)


# ---- the per-worker loop ----------------------------------------------------------------------


def _all_reduce_sum(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def _validate(model: torch.nn.Module, batches: Iterator[torch.Tensor], seed: int) -> EvalResult:
    """ELBO on this worker's part of the validation split, summed over all workers."""
    try:
        local = evaluate(model, batches, seed=seed)
        sums = [local.recon * local.n, local.kl * local.n, float(local.n)]
    except DataError:  # a ValueError too, but a bad row, not an empty shard
        raise
    except ValueError:  # this worker's shard is empty
        sums = [0.0, 0.0, 0.0]
    recon, kl, n = _all_reduce_sum(sums)
    if n == 0:
        raise ValueError("validation split is empty")
    return EvalResult(elbo=-(recon + kl) / n, recon=recon / n, kl=kl / n, n=int(n))


@dataclass
class RunState:
    """Where the run stands on this worker: fresh, or restored from the run's latest checkpoint."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per completed epoch
    val_elbo_init: float | None = None  # the untrained model's validation ELBO
    restarts: list[dict[str, Any]] = field(default_factory=list)
    resumed: bool = False

    @classmethod
    def restore(cls, model: LatentModel, optimizer: torch.optim.Optimizer, rank: int) -> RunState:
        """Ray: the run's latest checkpoint (a restarted worker group or a relaunch), loaded into
        `model` and `optimizer`; a fresh state when there is none."""
        resumed = ray.train.get_checkpoint()
        if resumed is None:
            return cls()
        # A private directory per worker: Checkpoint.as_directory() downloads into one temp path
        # shared by all workers on a node behind a non-blocking lock, and a worker that loses the
        # race can fail with "Checkpoint directory ... does not exist" (seen with Ray 2.60).
        with tempfile.TemporaryDirectory(prefix=f"vaeflow-resume-{rank}-") as d:
            resumed.to_directory(d)
            restored = load_checkpoint(d, with_optimizer=True)
        model.load_state_dict(restored.model.state_dict())
        optimizer.load_state_dict(restored.optimizer_state)
        meta = restored.meta
        # Each resume (worker-group restart or relaunch) is recorded: the run's history is auditable.
        restarts = [*meta.restarts, {"from_epoch": meta.epoch, "at": time.time()}]
        return cls(meta.epoch, meta.step, meta.history, meta.val_elbo_init, restarts, resumed=True)


class ShardBatches:
    """x batches (B, D) of this worker's dataset shards, encoded by the codec on the way in.

    The first pass over a shard streams it from storage through Ray Data; when its decoded rows fit
    in `train.cache_mb` (train and validation together), they are kept in this worker's memory and
    later passes read them from there: the per-batch path of Ray Data (conversion, shuffle buffer,
    prefetch threads competing with torch for the worker's cores) is paid once, not every epoch.
    Cached epochs shuffle with a seeded permutation per epoch and rank, as the streamed ones do
    through the local shuffle buffer; the batch count per epoch is the same either way (DDP needs it).
    """

    def __init__(self, cfg: VaeflowConfig, codec: Codec, rank: int, device: torch.device) -> None:
        self.train_shard = ray.train.get_dataset_shard("train")  # Ray: this worker's data shards
        self.encode = Encode(codec, cfg.data.uri, cfg.data.id_column)
        self.batch_size, self.seed, self.rank, self.device = (
            cfg.train.batch_size,
            cfg.train.seed,
            rank,
            device,
        )
        self.budget = cfg.train.cache_mb << 20  # bytes left for cached x
        self.cached: dict[str, torch.Tensor] = {}
        self.train_from = "storage"  # where the last epoch's train rows came from: storage or memory
        self.threads_when_cached = cfg.compute.threads_when_cached

    def train(self, epoch: int) -> Iterator[torch.Tensor]:
        """One epoch, shuffled with a seed per epoch and rank. Once both splits are cached, torch runs
        on the worker's CPUs and its share of the data CPUs (compute.threads_when_cached)."""
        seed = self.seed * 10_007 + 101 * epoch + self.rank
        self.train_from = "memory" if "train" in self.cached else "storage"
        if "train" in self.cached and "val" in self.cached:
            torch.set_num_threads(self.threads_when_cached)
        if "train" in self.cached:
            return self._from_memory(self.cached["train"], seed)
        stream = self._stream(
            self.train_shard, local_shuffle_buffer_size=16 * self.batch_size, local_shuffle_seed=seed
        )
        return self._keeping("train", stream)

    def val(self) -> Iterator[torch.Tensor]:
        """The validation split in order."""
        if "val" in self.cached:
            return self._from_memory(self.cached["val"], None)
        return self._keeping("val", self._stream(ray.train.get_dataset_shard("val")))

    def _stream(self, shard: Any, **shuffle: int) -> Iterator[torch.Tensor]:
        yield from shard.iter_torch_batches(
            batch_size=self.batch_size, collate_fn=self.encode, device=self.device, **shuffle
        )

    def _keeping(self, name: str, batches: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Pass the batches on, keeping a CPU copy while they fit the budget; a full pass that fit
        becomes the cache (a pass cut short keeps nothing)."""
        kept: list[torch.Tensor] | None = [] if self.budget > 0 else None
        size = 0
        for x in batches:
            if kept is not None:
                size += x.nelement() * x.element_size()
                kept = kept if size <= self.budget else None
                if kept is not None:
                    kept.append(x.detach().to("cpu", copy=x.device.type != "cpu"))
            yield x
        if kept:
            self.cached[name] = torch.cat(kept)
            self.budget -= size

    def _from_memory(self, x: torch.Tensor, seed: int | None) -> Iterator[torch.Tensor]:
        order = (
            None if seed is None else torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        )
        for start in range(0, len(x), self.batch_size):
            # index_select gathers the shuffled rows at half the cost of x[idx] (45 vs 99 us a batch
            # of 128 x 784 on 2 cores), which ran at 5% of a training step in py-spy.
            rows = (
                x[start : start + self.batch_size]
                if order is None
                else torch.index_select(x, 0, order[start : start + self.batch_size])
            )
            yield rows.to(self.device, non_blocking=True)


@dataclass
class EpochEnd:
    """fit's per-epoch callback: validate on all workers, record the epoch, and report it to Ray Train
    with rank 0's checkpoint."""

    cfg: VaeflowConfig
    codec: Codec
    loop: LoopConfig  # the training schema and the MLflow run id, recorded in every checkpoint
    state: RunState
    data: ShardBatches
    rank: int
    world: int
    nodes: list[str]
    gradients: str  # how DDP averages them (_prepare_model)
    events: Any  # the driver's _Events actor

    def __call__(self, stats: EpochStats, core: LatentModel, optimizer: torch.optim.Optimizer) -> None:
        record = self._record(stats, core)
        self.state.history.append(record)
        keys = ("epoch", "loss", "elbo", "recon", "kl", "val_elbo", "samples_per_s")
        metrics = {k: record[k] for k in keys if k in record}  # val_elbo: validated epochs only
        if self.rank == 0:
            self.events.add.remote({"kind": "epoch", "epochs": self.cfg.train.epochs, **record})
        if self.rank != 0 or not self._checkpoints(stats.epoch):
            # Ray: every rank reports every epoch; only rank 0 writes a checkpoint, on every `every`-th
            # epoch and the last (train.checkpoint_every).
            ray.train.report(metrics)
            return
        meta = CheckpointMeta(
            epoch=stats.epoch,
            step=stats.step,
            history=self.state.history,
            val_elbo=record["val_elbo"],
            val_elbo_init=self.state.val_elbo_init,
            data_schema=self.loop.schema,
            world_size=self.world,
            worker_nodes=self.nodes,
            gradients=self.gradients,
            restarts=self.state.restarts,
        )
        if self.loop.tracking_run:
            meta.extra[tracking.RUN_ID_KEY] = self.loop.tracking_run
        sampler = self._sampler(stats.epoch, core)
        if sampler is not None:
            tried = ", ".join(f"{k}: {ll:.2f}" for k, ll in sampler.heldout.items())
            meta.extra["sampler"] = (
                f"latent mixture: {len(sampler.weights)} full-covariance Gaussians on "
                f"{len(sampler.active)} active of {sampler.latent_dim} latent dimensions"
                + (f" (held-out log-likelihood of training codes by components: {tried})" if tried else "")
            )
        with tempfile.TemporaryDirectory() as d:
            save_checkpoint(d, core, self.cfg, self.codec, optimizer=optimizer, meta=meta, sampler=sampler)
            ray.train.report(  # Ray: the checkpoint is uploaded to the run's storage
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(d),
                checkpoint_dir_name=f"epoch_{stats.epoch:04d}",
            )

    def _checkpoints(self, epoch: int) -> bool:
        """Rank 0 writes a checkpoint on every train.checkpoint_every-th epoch and the last."""
        return epoch % self.cfg.train.checkpoint_every == 0 or epoch == self.cfg.train.epochs

    def _validates(self, epoch: int) -> bool:
        """Every train.validate_every-th epoch, the last, and every epoch with a checkpoint (it carries
        its val ELBO, by which Ray keeps the best train.keep_checkpoints)."""
        return epoch % self.cfg.train.validate_every == 0 or self._checkpoints(epoch)

    def _sampler(self, epoch: int, core: LatentModel) -> LatentMixture | None:
        """The latent mixture for the final epoch's checkpoint (models.sampler), fitted to the codes of
        this worker's cached train rows; None for other epochs (a fit takes seconds: on 2 threads, 6 s
        for 115 active dimensions of Adult, 0.7 s for 13), or when the rows are not in memory."""
        components = self.cfg.train.latent_mixture
        if not components or epoch != self.cfg.train.epochs:
            return None
        x = self.data.cached.get("train")
        if x is None:
            return None
        return fit_latent_mixture(core, x.to(next(core.parameters()).device), self.cfg.train.seed, components)

    def _record(self, stats: EpochStats, core: LatentModel) -> dict[str, Any]:
        """The epoch's record; the val_* keys only on the epochs that validate (train.validate_every)."""
        record = {
            **stats.to_dict(),
            "data_from": self.data.train_from,
            "threads": torch.get_num_threads(),
            # Samples/s of the whole group: every worker processed the same number of rows.
            "samples": stats.samples * self.world,
            "samples_per_s": stats.samples_per_s * self.world,
        }
        if self._validates(stats.epoch):
            t0 = time.perf_counter()
            val = _validate(core, self.data.val(), self.cfg.train.seed + stats.epoch)
            record.update(
                val_elbo=val.elbo, val_recon=val.recon, val_kl=val.kl, val_seconds=time.perf_counter() - t0
            )
        return {**record, "finished_at": time.time()}


def _optimizer_to(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Optimizer state restored on CPU follows the parameters to the device (the step count too when
    the optimizer is fused: its kernel reads it on the device)."""
    fused = bool(optimizer.defaults.get("fused"))
    for state in optimizer.state.values():
        for k, v in state.items():
            if isinstance(v, torch.Tensor) and (fused or k != "step"):
                state[k] = v.to(device)


def _worker_nodes(world: int) -> list[str]:
    """The node id of every rank, in rank order."""
    node = ray.get_runtime_context().get_node_id()
    if world == 1:
        return [node]
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, node)
    return gathered


def _prepare_model(
    cfg: VaeflowConfig, model: LatentModel, device: torch.device, world: int, nodes: list[str]
) -> tuple[torch.nn.Module, str]:
    """Ray: the model wrapped for DDP and moved to the device, and how its gradients are averaged:
    through shared memory when every rank trains on this CPU node (allreduce.py: 1.7x gloo's samples/s
    with 2 workers on 2 cores), else through the process group."""
    if world == 1:
        return ray.train.torch.prepare_model(model), "local (1 worker)"
    why_not = (
        allreduce.usable(list(model.parameters()), device, world, len(set(nodes)) == 1)
        if cfg.compute.shared_memory_allreduce
        else "compute.shared_memory_allreduce is off"
    )
    if why_not is not None:
        return ray.train.torch.prepare_model(model), f"{dist.get_backend()} ({why_not})"
    ddp = ray.train.torch.prepare_model(
        model, parallel_strategy_kwargs=allreduce.ddp_arguments(list(model.parameters()))
    )
    allreduce.install(ddp, ray.train.get_context().get_world_rank(), world)  # type: ignore[arg-type]
    return ddp, "shared memory"


def _await_go(events: Any) -> dict[str, Any] | None:
    """The driver's go (_Launch.go: the codec and the MLflow run id), or None if it aborted the run."""
    while True:
        decided, go = ray.get(events.decision.remote())
        if decided:
            return go
        time.sleep(0.05)


def _worker_loop(train_loop_config: dict[str, Any]) -> None:
    """The training function of every Ray Train worker: vae_core's `fit` over this worker's shard.
    Started while the driver still fits the codec (_Launch), it first waits for the driver's go."""
    loop = LoopConfig.from_json(train_loop_config["loop"])
    events = train_loop_config["events"]
    if loop.codec is None:
        go = _await_go(events)
        if go is None:  # the driver refused the data: end without a report, so without a checkpoint
            return
        loop = LoopConfig(loop.config, go["codec"], loop.schema, go["tracking_run"])
    cfg, codec = VaeflowConfig.from_json(loop.config), codec_from_json(str(loop.codec))
    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(cfg.compute.threads_per_worker)

    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
    model = build_model(cfg.model, DataShape.of(codec))
    optimizer = make_optimizer(model, cfg.train.lr, cfg.train.weight_decay)
    state = RunState.restore(model, optimizer, rank)
    if cfg.train.init_from and not state.resumed:  # warm start: the weights, not the optimizer state
        init = load_checkpoint(cfg.train.init_from, storage_options=cfg.data.storage_options)
        model.load_state_dict(init.model.state_dict())
    nodes = _worker_nodes(world)
    ddp, gradients = _prepare_model(cfg, model, device, world, nodes)  # Ray: DDP; moves to device
    core: LatentModel = getattr(ddp, "module", ddp)
    # Per-worker, per-resume randomness (reparameterisation noise, DAE corruption).
    torch.manual_seed(cfg.train.seed * 100_003 + 1_009 * state.epoch + rank)
    _optimizer_to(optimizer, device)

    data = ShardBatches(cfg, codec, rank, device)
    if state.val_elbo_init is None:
        state.val_elbo_init = _validate(core, data.val(), cfg.train.seed).elbo
    if rank == 0 and not state.resumed:
        start = {"world": world, "nodes": nodes, "gradients": gradients, "val_elbo_init": state.val_elbo_init}
        events.add.remote(
            {"kind": "start", "epochs": cfg.train.epochs, "warm": bool(cfg.train.init_from), **start}
        )
    fit(
        ddp,
        data.train,
        epochs=cfg.train.epochs,
        optimizer=optimizer,
        schedule=KLSchedule(cfg.train.beta, cfg.train.warmup_epochs, cfg.train.warmup_steps),
        lr_schedule=LRSchedule(cfg.train.lr, cfg.train.lr_schedule, cfg.train.epochs),
        grad_clip=cfg.train.grad_clip,
        start_epoch=state.epoch,
        start_step=state.step,
        on_epoch=EpochEnd(cfg, codec, loop, state, data, rank, world, nodes, gradients, events),
        device=device,
        autocast_dtype=torch.bfloat16 if device.type == "cuda" else None,
    )


def _feed_loop(train_loop_config: dict[str, str]) -> None:
    """A worker that trains nothing: it takes this worker's train shard through the same path as
    training (Ray Data, the codec in the collate step, torch batches on the device), streamed every
    pass, and reports the rows it received and the seconds each pass took."""
    loop = LoopConfig.from_json(train_loop_config["loop"])
    cfg, codec = VaeflowConfig.from_json(loop.config), codec_from_json(str(loop.codec))
    torch.set_num_threads(cfg.compute.threads_per_worker)
    data = ShardBatches(cfg, codec, ray.train.get_context().get_world_rank(), ray.train.torch.get_device())
    passes = []
    for epoch in range(cfg.train.epochs):
        t0, rows, values = time.perf_counter(), 0, 0
        for x in data.train(epoch):
            rows, values = rows + x.shape[0], values + x.nelement()
        seconds = time.perf_counter() - t0
        group_rows, group_values = _all_reduce_sum([rows, values])
        passes.append({"rows": group_rows, "seconds": seconds, "tensor_bytes": 4 * group_values})
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report({"passes": passes})  # Ray: every rank reports
        return
    # Ray Train V2 keeps the metrics of reports that carry a checkpoint: rank 0 attaches one.
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "feed.json"), "w") as f:
            json.dump(passes, f)
        ray.train.report({"passes": passes}, checkpoint=ray.train.Checkpoint.from_directory(d))


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
    with _local_train_env():
        result = _trainer(cfg, name, _feed_loop, {"loop": loop_cfg.to_json()}, datasets).fit()
    passes = result.metrics["passes"]
    return [{**p, "rows_per_s": p["rows"] / p["seconds"]} for p in passes]


# ---- the driver -------------------------------------------------------------------------------


def _storage(runs_uri: str, storage_options: dict) -> dict[str, Any]:
    if scheme(runs_uri) == "file":
        from pathlib import Path

        return {"storage_path": str(Path(runs_uri.removeprefix("file://")).resolve())}
    # Ray Train uploads checkpoints (and reads them back on resume) through this filesystem: single
    # PUTs, so a worker killed during an upload leaves no incomplete multipart upload.
    fs, path = arrow_filesystem(runs_uri, storage_options, for_writing=True)
    return {"storage_path": path, "storage_filesystem": fs}


RUN_FILE = "vaeflow-run.json"
RAY_MARKER = ".validate_storage_marker"  # Ray Train writes it into a run's folder when it starts
COMPARED_SECTIONS = ("data", "model", "train")
# Settings a resume may change: they do not change which model is trained on which data.
NOT_COMPARED = frozenset(
    {
        "train.epochs",
        "train.runs_uri",
        "train.max_failures",
        "train.keep_checkpoints",
        "train.checkpoint_every",
        "train.validate_every",
        "train.cache_mb",
        "train.latent_mixture",
    }
)


def _leaves(value: Any, prefix: str) -> dict[str, Any]:
    """Nested dicts as {"a.b.c": leaf}; lists are leaves."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_leaves(v, f"{prefix}.{k}"))
        return out
    return {prefix: value}


def config_differences(stored: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (stored, current)} for data/model/train keys that differ, both redacted JSON.

    A key that the stored config lacks counts as its default: a run recorded before a setting existed
    trained the way that setting's default does (a new setting's default keeps the earlier behaviour)."""
    a = {k: v for s in COMPARED_SECTIONS for k, v in _leaves(stored.get(s, {}), s).items()}
    b = {k: v for s in COMPARED_SECTIONS for k, v in _leaves(current.get(s, {}), s).items()}
    defaults = {
        k: v
        for s, section in zip(COMPARED_SECTIONS, (DataConfig, ModelConfig, TrainConfig), strict=True)
        for k, v in _leaves(section().model_dump(mode="json"), s).items()
    }
    a.update({k: defaults[k] for k in b.keys() - a.keys() if k in defaults})
    missing = object()
    return {
        k: (a.get(k), b.get(k))
        for k in sorted(a.keys() | b.keys())
        if k not in NOT_COMPARED and a.get(k, missing) != b.get(k, missing)
    }


def _stored_config(run_uri: str, storage_options: dict) -> tuple[bool, dict[str, Any] | None]:
    """(does run_uri hold a run, its stored config): vaeflow-run.json, else the newest checkpoint's
    config.json (runs from before vaeflow-run.json), else None."""
    fs, root = filesystem(run_uri, storage_options)
    fs.invalidate_cache(root)  # s3fs caches listings; Ray writes checkpoints through another client
    if not fs.exists(root):
        return False, None
    names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))
    if not [n for n in names if n != RAY_MARKER]:  # a launch stopped before its run was recorded
        return False, None
    if RUN_FILE in names:
        with fs.open(join(root, RUN_FILE), "r") as f:
            return True, json.load(f)["config"]
    for name in reversed([n for n in names if n.startswith("epoch_")]):
        if fs.exists(join(root, name, "config.json")):
            with fs.open(join(root, name, "config.json"), "r") as f:
                return True, json.load(f)
    return True, None


def check_run_name(cfg: VaeflowConfig, name: str, resume: bool) -> bool:
    """Whether run `name` under cfg.train.runs_uri is stored (to be resumed) or new; reads only.

    Raises RunNameError when the stored config differs in a data/model/train key (naming them), or
    when the run exists and resume is False.
    """
    exists, stored = _stored_config(join(cfg.train.runs_uri, name), cfg.data.storage_options)
    if not exists:
        return False
    if stored is not None:
        current = json.loads(cfg.to_json())  # redacted, as stored: rotated credentials are no difference
        diff = config_differences(stored, current)
        if diff:
            lines = "\n".join(f"  {k}: {a!r} (stored) != {b!r} (now)" for k, (a, b) in diff.items())
            raise RunNameError(
                f"run {name!r} under {cfg.train.runs_uri} was launched with a different configuration; "
                f"these keys differ: {', '.join(diff)}\n{lines}\n"
                "Choose another --run-name for a new run (train.epochs may differ: that extends a run)."
            )
    if not resume:
        raise RunNameError(
            f"run {name!r} already exists under {cfg.train.runs_uri}: "
            "pass --resume to continue it or choose another --run-name"
        )
    return True


def record_run(cfg: VaeflowConfig, name: str, resume: bool) -> bool:
    """Write runs_uri/<name>/vaeflow-run.json (the redacted config) for a new run, create-only.

    Returns whether the run is resumed after all: a concurrent first launch of the same name that
    wrote first makes this one a relaunch, checked as such (check_run_name)."""
    record = {
        "format": "vaeflow-run/1",
        "run_name": name,
        "created_at": time.time(),
        "config": json.loads(cfg.to_json()),
    }
    uri = join(cfg.train.runs_uri, name, RUN_FILE)
    if create_only_write(uri, json.dumps(record, indent=2).encode(), cfg.data.storage_options):
        return False
    return check_run_name(cfg, name, resume)


# Ray Train V2's helpers that a local cluster of our own has no use for (Ray 2.60), each an actor
# process polling in the background beside the workers (about 1% of a core each, measured): the
# preemption watcher polls node drain state every 5 s (nothing drains a local node); the controller's
# metrics callbacks feed a dashboard that is not running. The controller polls the workers every 2 s
# by default, so a run ended up to 2 s after its last report; 0.5 s costs one remote call per worker.
# The user's own settings of these variables win.
LOCAL_TRAIN_ENV = {
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}


@contextlib.contextmanager
def _local_train_env() -> Iterator[None]:
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


class _Trainer(ray.train.torch.TorchTrainer):
    """TorchTrainer that, on our own local cluster, starts no PlacementGroupCleaner: that actor asks
    the State API once a second whether the controller is alive, the State API needs the dashboard,
    which a local cluster here runs without, so every query failed and logged "Failed to query Ray
    Train Controller actor state" (50+ lines a run). Its job, removing the workers' placement group
    should the controller die, is done on a local cluster by the cluster's own shutdown.
    (`_create_default_callbacks` is a private Ray API, Ray 2.60; on other clusters nothing changes.)"""

    def _create_default_callbacks(self) -> list[Any]:
        callbacks = super()._create_default_callbacks()
        if not is_own_local_cluster():
            return callbacks
        from ray.train.v2._internal.callbacks.placement_group_callback import (
            PlacementGroupCleanerCallback,
        )

        return [c for c in callbacks if not isinstance(c, PlacementGroupCleanerCallback)]


def _checkpoint_uri(ckpt: ray.train.Checkpoint, runs_uri: str) -> str:
    kind = scheme(runs_uri)
    return ckpt.path if kind == "file" else f"{kind}://{ckpt.path.lstrip('/')}"


def _warm_start_codec(cfg: VaeflowConfig, schema: pa.Schema, progress: Callable[[str], None]) -> Codec:
    """train.init_from: the checkpoint's codec (its weights expect that feature layout; a codec fitted
    anew could order tabular modes differently), once its model settings are cfg's and the data has the
    columns it reads; else a ValueError naming the setting and what differs."""
    uri = cfg.train.init_from or ""
    if uri == "champion":
        raise ValueError(
            "train.init_from=champion names the registry's champion, which only the nightly flow "
            "(`vaeflow run`, `vaeflow serve`) resolves; give a checkpoint URI to `vaeflow train`"
        )
    init = load_checkpoint(uri, storage_options=cfg.data.storage_options)
    was, now = init.config.model.model_dump(), cfg.model.model_dump()
    diff = [f"model.{k}: {was[k]!r} (checkpoint) != {now[k]!r} (now)" for k in was if was[k] != now.get(k)]
    if diff:
        raise ValueError(
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


Splits = dict[str, list[str]]  # the shards of "train" and "val"
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
    `then(spec, schema, shards, codec)` (the trainer's start, _Launch.start) runs in this thread after
    `meanwhile`, with codec None while it still fits, unless the fit has failed by then."""
    train_shards, schema, spec = open_dataset(cfg.data, "train")
    val_shards, val_schema, _ = open_dataset(cfg.data, cfg.train.val_split)
    if val_schema != schema:
        raise ValueError(f"{cfg.data.uri}: the {cfg.train.val_split!r} split's schema differs from train's")
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
    cfg: VaeflowConfig, progress: Callable[[str], None], launch: _Launch | None = None
) -> tuple[DatasetSpec, pa.Schema, Splits, Codec]:
    """prepare_data with the cluster starting alongside the codec fit, and `launch`'s trainer after
    the cluster. Should the fit (or the likelihood check after it) refuse the data, the launch is
    aborted and a local cluster started here is shut down again: a bad input leaves no cluster
    running."""
    started_here = not ray.is_initialized()
    try:
        return prepare_data(
            cfg, progress, meanwhile=lambda: _start_cluster(cfg), then=launch and launch.start
        )
    except BaseException:
        own = started_here and is_own_local_cluster()
        if launch is not None:
            launch.abort(wait=not own)  # our own cluster's shutdown ends its trainer at once
        if own:
            ray.shutdown()
        if launch is not None:
            launch.clean()
        raise


def _in_context_thread(target: Callable[[], None], name: str) -> threading.Thread:
    """A started daemon thread running target() in a copy of the caller's context: a Prefect task's
    logger needs its run context."""
    thread = threading.Thread(target=contextvars.copy_context().run, args=(target,), daemon=True, name=name)
    thread.start()
    return thread


def _alongside(
    work: Callable[[], Any], meanwhile: Callable[[], None] | None, then: Callable[[], None] | None = None
) -> Any:
    """work() in a background thread while meanwhile() and then then() run in this one; work's result,
    or its error raised here. then() is skipped when work() has failed before it would start. The
    codec fit is one core's work for seconds (13 s on Adult) and the local cluster's start is mostly
    waiting for its processes (6 s): side by side, `vaeflow train` on Adult reached its trainer about
    5 s sooner on 2 cores. ray.init stays in the calling thread: started from another,
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

    thread = _in_context_thread(run, "vaeflow-fit")
    if meanwhile is not None:
        meanwhile()
    if then is not None and "error" not in done:
        then()
    thread.join()
    if "error" in done:
        raise done["error"]
    return done["result"]


def _start_cluster(cfg: VaeflowConfig) -> None:
    """Connect to (or start) Ray for cfg.compute and set Ray Data's options for training."""
    ensure_ray(cfg.compute)
    check_resources(cfg.compute)
    ctx = ray.data.DataContext.get_current()
    # Small shards otherwise coalesce into one block and a single reader (seen with Ray 2.60).
    ctx.target_max_block_size = min(ctx.target_max_block_size or 8 << 20, 8 << 20)
    ctx.enable_progress_bars = False  # the loop prints one line per epoch instead
    ctx.print_on_execution_start = False
    # Deterministic block order and block-to-worker assignment: a rerun with the same seed sees the
    # same batches, so runs are reproducible and comparable across worker counts.
    ctx.execution_options.preserve_order = True


def _trainer(
    cfg: VaeflowConfig,
    name: str,
    loop: Callable[[dict[str, Any]], None],
    loop_config: dict[str, Any],
    datasets: dict[str, ray.data.Dataset],
) -> ray.train.torch.TorchTrainer:
    """The Ray Train run `name` of `loop(loop_config)` on every worker, as cfg.compute and cfg.train
    set it."""
    return _Trainer(
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
            **_storage(cfg.train.runs_uri, cfg.data.storage_options),
        ),
        datasets=datasets,
        # One worker takes whole datasets: no split coordinator actors to start and feed through.
        dataset_config=ray.train.DataConfig(datasets_to_split="all" if cfg.compute.num_workers > 1 else []),
    )


@ray.remote(num_cpus=0)
class _Events:
    """Where rank 0 leaves its records (the run's start, each finished epoch) for the driver, which
    polls them: epoch lines reach the caller's Progress (a terminal, the Prefect run log) and its
    `on_record` (MLflow, a progress artifact) instead of a worker's stdout. 0 CPUs: it must not take
    a CPU that the workers or Ray Data reserve."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.decided, self.go = False, None

    def add(self, record: Record) -> None:
        self.records.append(record)

    def take(self) -> list[Record]:
        records, self.records = self.records, []
        return records

    def decide(self, go: dict[str, Any] | None) -> None:
        """The driver's go for the workers that wait in _await_go (a dict), or its abort (None)."""
        self.decided, self.go = True, go

    def decision(self) -> tuple[bool, dict[str, Any] | None]:
        return self.decided, self.go


def record_line(record: Record) -> str:
    """One plain line for a record of rank 0 ("epoch 3/10  loss ...")."""
    if record["kind"] == "start":
        return (
            f"{record['world']} worker(s), gradients {record['gradients']}; "
            f"{'warm-started' if record['warm'] else 'untrained'} val ELBO {record['val_elbo_init']:.2f}"
        )
    val = f"val ELBO {record['val_elbo']:.2f}  " if "val_elbo" in record else ""
    return (
        f"epoch {record['epoch']}/{record['epochs']}  loss {record['loss']:.2f}  "
        f"recon {record['recon']:.2f}  kl {record['kl']:.2f}  {val}{record['samples_per_s']:,.0f} samples/s"
    )


@contextlib.contextmanager
def _relay(
    events: Any, progress: Callable[[str], None], on_record: Callable[[Record], None] | None
) -> Iterator[None]:
    """While the run goes on, a thread hands rank 0's records to `progress` (as lines) and `on_record`,
    twice a second, in this thread's context (a Prefect task's logger needs its run context); the
    records left when the run ends are handed over before this returns. A failing `on_record` (an
    unreachable tracking server) is reported once and never stops the training."""
    stop, failed = threading.Event(), []

    def deliver() -> None:
        for record in ray.get(events.take.remote()):
            progress(record_line(record))
            if on_record is None:
                continue
            try:
                on_record(record)
            except Exception as e:  # tracking is best effort: the run goes on
                if not failed:
                    progress(f"could not record epoch {record.get('epoch', 0)}: {e}")
                failed.append(e)

    def poll() -> None:
        while not stop.wait(0.5):
            deliver()

    thread = _in_context_thread(poll, "vaeflow-epochs")
    try:
        yield
    finally:
        stop.set()
        thread.join()
        deliver()


class _Launch:
    """Ray Train started while the driver still fits the codec (prepare_data's `then`).

    Before a worker runs its loop, Ray Train starts its controller and worker processes, and each
    imports torch, Ray Train and this package: about 15 s on 2 cores, one after the other, when it
    followed the codec fit (14-19 s on Adult, one core's work). Now the two overlap. The workers wait
    in _await_go until the driver has checked the data and recorded the run: `go` hands them the
    codec and the MLflow run id through the _Events actor. On `abort` they end without a report, so
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
        self.thread: threading.Thread | None = None
        self.scope = contextlib.ExitStack()

    def start(self, spec: DatasetSpec, schema: pa.Schema, shards: Splits, codec: Codec | None) -> None:
        """Start the trainer in a background thread (cluster up, codec `None` while it still fits)."""
        cfg = self.cfg
        wanted = set(spec.feature_columns)
        self.columns = codec.columns if codec is not None else [n for n in schema.names if n in wanted]
        self.events = _Events.remote()  # type: ignore[attr-defined]
        loop = LoopConfig(cfg.to_json(redact=False), None, encode_schema(schema))
        datasets = build_datasets(cfg, self.columns, shards)
        loop_config = {"loop": loop.to_json(), "events": self.events}
        trainer = _trainer(cfg, self.name, _worker_loop, loop_config, datasets)
        self.scope.enter_context(_local_train_env())
        self.scope.enter_context(_relay(self.events, self.progress, self._deliver))

        def run() -> None:
            try:
                self.outcome["result"] = trainer.fit()
            except BaseException as e:  # re-raised by result()
                self.outcome["error"] = e

        self.thread = _in_context_thread(run, "vaeflow-train")

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
    reach the driver while the run goes on: each as a line through `progress` and as a dict through
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
    launch = _Launch(cfg, name, progress, existed=resuming)
    _, _, _, codec = _prepare_and_start(cfg, progress, launch)
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
        reraise_data_error(e)  # a bad row: the codec's message naming its file, column and row
        raise TrainingError(f"run {name!r} failed: {e}") from e
    if result.checkpoint is None:
        raise TrainingError(f"run {name!r} finished without a checkpoint")
    best = result.get_best_checkpoint(metric="val_elbo", mode="max") or result.checkpoint
    with result.checkpoint.as_directory() as d:
        latest = load_checkpoint(d, storage_options=cfg.data.storage_options)
    uri = _checkpoint_uri(result.checkpoint, cfg.train.runs_uri)
    progress(f"latest checkpoint: {uri}")
    if tracked:
        tracked.end(ok=True, checkpoint_uri=uri)
    return TrainResult(latest.meta.history, uri, _checkpoint_uri(best, cfg.train.runs_uri), latest)


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
