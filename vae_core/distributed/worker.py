"""The training function every Ray Train worker runs: vae_core's `fit` over this worker's shard.

Ray touches the plain PyTorch loop at marked places only: the data shard (get_dataset_shard),
the DDP wrapper (prepare_model), and the per-epoch report with rank 0's checkpoint (ray.train.report).
Resuming: a restarted worker group, or a relaunch with the same run name and storage, gets the latest
checkpoint from ray.train.get_checkpoint() and continues with the next epoch.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from vae_core.config import VaeflowConfig
from vae_core.data.codecs import Codec, codec_from_json
from vae_core.errors import DataError, TrainingError
from vae_core.models.families import DataShape, build_model
from vae_core.models.model import LatentModel
from vae_core.models.sampler import (
    LatentMixture,
    fit_latent_clusters,
    fit_latent_mixture,
    fit_latent_posterior,
)
from vae_core.operations import tracking
from vae_core.training.checkpoints import CheckpointMeta, load_checkpoint, save_checkpoint
from vae_core.training.evaluation import EvalResult, evaluate
from vae_core.training.loop import EpochStats, KLSchedule, LRSchedule, fit, make_optimizer
from vae_core.training.records import EpochRecord, RunStart

from . import allreduce
from .feed import LoopConfig, ShardBatches, all_reduce_sum


def _validate(model: torch.nn.Module, batches: Iterator[torch.Tensor], seed: int) -> EvalResult:
    """ELBO on this worker's part of the validation split, summed over all workers (a worker's part
    may be empty: it adds nothing, but takes part in the sum)."""
    batches = iter(batches)
    first = next(batches, None)
    sums = [0.0, 0.0, 0.0]
    if first is not None:
        local = evaluate(model, itertools.chain([first], batches), seed=seed)
        sums = [local.recon * local.n, local.kl * local.n, float(local.n)]
    recon, kl, n = all_reduce_sum(sums)
    if n == 0:
        raise DataError("the validation split (train.val_split) has no rows")
    return EvalResult(elbo=-(recon + kl) / n, recon=recon / n, kl=kl / n, n=int(n))


@dataclass
class RunState:
    """Where the run stands on this worker: fresh, or restored from the run's latest checkpoint."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken
    history: list[EpochRecord] = field(default_factory=list)  # one record per completed epoch
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
        # race can fail with "Checkpoint directory ... does not exist" (Ray 2.60).
        with tempfile.TemporaryDirectory(prefix=f"vaeflow-resume-{rank}-") as d:
            resumed.to_directory(d)
            restored = load_checkpoint(d, with_optimizer=True)
        model.load_state_dict(restored.model.state_dict())
        optimizer.load_state_dict(restored.optimizer_state)
        meta = restored.meta
        # Each resume (worker-group restart or relaunch) is recorded: the run's history is auditable.
        restarts = [*meta.restarts, {"from_epoch": meta.epoch, "at": time.time()}]
        return cls(meta.epoch, meta.step, meta.history, meta.val_elbo_init, restarts, resumed=True)


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
    events: Any  # the driver's Events actor

    def __call__(self, stats: EpochStats, core: LatentModel, optimizer: torch.optim.Optimizer) -> None:
        record = self._record(stats, core)
        self.state.history.append(record)
        metrics = {"epoch": record.epoch, **record.metrics()}  # val_*: validated epochs only
        if self.rank == 0:
            self.events.add.remote(record)
        if self.rank != 0 or not self._checkpoints(stats.epoch):
            # Ray: every rank reports every epoch; only rank 0 writes a checkpoint, on every `every`-th
            # epoch and the last (train.checkpoint_every).
            ray.train.report(metrics)
            return
        meta = CheckpointMeta(
            epoch=stats.epoch,
            step=stats.step,
            history=self.state.history,
            val_elbo=record.val_elbo,
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
            kind = {
                "mixture": "full-covariance",
                "clusters": "k-means cluster",
                "posterior": "training-row posterior",
            }[self.cfg.train.latent_prior]
            meta.extra["sampler"] = (
                f"latent mixture: {len(sampler.weights)} {kind} Gaussians on "
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
        this worker's cached train rows; None for other epochs (a fit takes seconds, growing with the
        active dimensions), or when the rows are not in memory."""
        components = self.cfg.train.latent_mixture
        if not components or epoch != self.cfg.train.epochs:
            return None
        x = self.data.cached.get("train")
        if x is None:
            return None
        x, seed = x.to(next(core.parameters()).device), self.cfg.train.seed
        if self.cfg.train.latent_prior == "clusters":
            return fit_latent_clusters(core, x, seed)
        if self.cfg.train.latent_prior == "posterior":
            return fit_latent_posterior(core, x, seed)
        return fit_latent_mixture(core, x, seed, components)

    def _record(self, stats: EpochStats, core: LatentModel) -> EpochRecord:
        """The epoch's record; validated on the epochs that validate (train.validate_every)."""
        val, seconds = None, None
        if self._validates(stats.epoch):
            t0 = time.perf_counter()
            val = _validate(core, self.data.val(), self.cfg.train.seed + stats.epoch)
            seconds = time.perf_counter() - t0
        threads = torch.get_num_threads()
        epochs, source = self.cfg.train.epochs, self.data.train_from
        return EpochRecord.of(stats, epochs, self.world, source, threads, val, seconds)


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
    through shared memory when every rank trains on this CPU node, which is faster than gloo there
    (allreduce.py; bench/results/train_throughput_ddp.json), else through the process group."""
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


# Python's GIL switch interval on a training worker. Ray Data's threads in the worker process (its
# streaming executor for a dataset that is not split, the iterator's prefetch and collate threads) take
# the GIL whenever the training thread releases it around a torch op; at Python's default (5 ms) the
# training thread can then wait that long to get it back, op after op. A short interval hands it back
# sooner (bench/results/train_throughput_streamed.json, the streamed epochs).
GIL_SWITCH_S = 0.0002

# How long a worker waits for the driver's go. The driver decides once the codec has fitted and the
# run is recorded; a driver that died takes the Events actor with it (the wait then fails at once),
# so this bounds only a driver that hangs, e.g. on an object store that stopped answering.
GO_TIMEOUT_S = 3600.0


def await_go(events: Any, timeout_s: float = GO_TIMEOUT_S) -> dict[str, Any] | None:
    """The driver's go (Launch.go: the codec and the MLflow run id), or None if it aborted the run;
    TrainingError after `timeout_s` without either."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        decided, go = ray.get(events.decision.remote())
        if decided:
            return go
        time.sleep(0.05)
    raise TrainingError(
        f"no go from the driver within {timeout_s:g} s (worker.GO_TIMEOUT_S): it fits the codec and "
        "records the run before the workers train; is the driver alive and its object store reachable?"
    )


def worker_loop(train_loop_config: dict[str, Any]) -> None:
    """The training function of every Ray Train worker: vae_core's `fit` over this worker's shard.
    Started while the driver still fits the codec (Launch), it first waits for the driver's go."""
    loop = LoopConfig.from_json(train_loop_config["loop"])
    events = train_loop_config["events"]
    if loop.codec is None:
        go = await_go(events)
        if go is None:  # the driver refused the data: end without a report, so without a checkpoint
            return
        loop = LoopConfig(loop.config, go["codec"], loop.schema, go["tracking_run"])
    cfg, codec = VaeflowConfig.from_json(loop.config), codec_from_json(str(loop.codec))
    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(cfg.compute.threads_per_worker)
    sys.setswitchinterval(GIL_SWITCH_S)

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
        warm = bool(cfg.train.init_from)
        events.add.remote(RunStart(cfg.train.epochs, world, nodes, gradients, state.val_elbo_init, warm))
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


def feed_loop(train_loop_config: dict[str, str]) -> None:
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
        group_rows, group_values = all_reduce_sum([rows, values])
        passes.append({"rows": group_rows, "seconds": seconds, "tensor_bytes": 4 * group_values})
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report({"passes": passes})  # Ray: every rank reports
        return
    # Ray Train V2 keeps the metrics of reports that carry a checkpoint: rank 0 attaches one.
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "feed.json"), "w") as f:
            json.dump(passes, f)
        ray.train.report({"passes": passes}, checkpoint=ray.train.Checkpoint.from_directory(d))
