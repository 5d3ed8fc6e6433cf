"""The pure training loop: Adam, KL schedule, optional grad clipping, per-epoch callback, NaN guard.

The distributed layer reuses this loop unchanged: it passes a per-epoch batch source (its data shard)
and an `on_epoch` callback (report metrics, checkpoint). Nothing here knows about Ray.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch

from vae_core.errors import NoExamplesError, NonFiniteLossError
from vae_core.models.model import LatentModel

Batches = Iterable[torch.Tensor] | Callable[[int], Iterable[torch.Tensor]]


@dataclass(frozen=True)
class KLSchedule:
    """kl_weight = beta * linear warm-up from 0, over `warmup_steps` steps or `warmup_epochs` epochs."""

    beta: float = 1.0
    warmup_epochs: int = 0
    warmup_steps: int = 0

    def weight(self, epoch: int, step: int) -> float:
        """epoch and step are 0-based counts of completed epochs and optimizer steps."""
        if self.warmup_steps:
            return self.beta * min(1.0, step / self.warmup_steps)
        if self.warmup_epochs:
            return self.beta * min(1.0, epoch / self.warmup_epochs)
        return self.beta


@dataclass(frozen=True)
class LRSchedule:
    """The learning rate of each epoch: `lr` (constant), or lr * (1 + cos(pi * epoch / epochs)) / 2
    (cosine: `lr` in the first epoch, about lr * 2.5 / epochs^2 in the last). A function of the epoch
    alone, so a resumed run continues it without any state of its own."""

    lr: float
    kind: str = "constant"
    epochs: int = 1

    def rate(self, epoch: int) -> float:
        """epoch: the 0-based count of completed epochs."""
        if self.kind == "constant":
            return self.lr
        return self.lr * 0.5 * (1 + math.cos(math.pi * min(epoch, self.epochs) / self.epochs))


@dataclass
class EpochStats:
    """Training metrics of one epoch, per example in nats (elbo at kl weight 1)."""

    epoch: int  # 1-based
    loss: float
    recon: float
    kl: float
    elbo: float
    kl_weight: float
    samples: int
    seconds: float
    step: int  # optimizer steps taken so far, over all epochs
    wait_seconds: float = 0.0  # of `seconds`, time spent waiting for the next batch (data loading)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "samples_per_s": self.samples_per_s}


EpochCallback = Callable[[EpochStats, LatentModel, torch.optim.Optimizer], None]


def make_optimizer(model: LatentModel, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam with torch's fused kernel (CPU and CUDA): one pass over all parameters instead of a loop
    of small ops per tensor, a cost a small model pays on every step; the updates are the same.
    weight_decay: Adam's L2 penalty (train.weight_decay), added to every parameter's gradient."""
    params = list(model.parameters())
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused)


def fit(
    model: LatentModel,
    batches: Batches,
    *,
    epochs: int,
    lr: float = 1e-3,
    optimizer: torch.optim.Optimizer | None = None,
    schedule: KLSchedule | None = None,
    lr_schedule: LRSchedule | None = None,
    recon_weight: float = 1.0,
    grad_clip: float | None = None,
    start_epoch: int = 0,
    start_step: int = 0,
    on_epoch: EpochCallback | None = None,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> list[EpochStats]:
    """Train `model` for epochs start_epoch+1 .. epochs and return their stats.

    batches: a re-iterable of x tensors (B, D), or a function epoch -> iterable (a fresh data shard
    per epoch). Resuming passes the restored optimizer, start_epoch and start_step.
    `model` may be wrapped (e.g. DistributedDataParallel): the forward pass goes through the wrapper
    (gradient sync), the loss through the wrapped LatentModel. autocast_dtype (e.g. torch.bfloat16
    on GPU) runs the forward pass and loss under torch.autocast. recon_weight scales the
    reconstruction term: 0 with schedule beta 1 trains on the KL alone (the beta study's KL-only arm).
    lr_schedule sets the optimizer's learning rate at the start of every epoch (none: left as it is).
    """
    core: LatentModel = getattr(model, "module", model)
    device_type = torch.device(device).type
    schedule = schedule or KLSchedule()
    optimizer = optimizer or make_optimizer(model, lr)
    step = start_step
    history: list[EpochStats] = []
    for epoch in range(start_epoch, epochs):
        model.train()
        kl_weight = schedule.weight(epoch, step)
        if lr_schedule is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_schedule.rate(epoch)
        sums = torch.zeros(3, dtype=torch.float64)  # loss, recon, kl (summed over examples)
        n, t0 = 0, time.perf_counter()
        wait, t_ready = 0.0, t0
        for x in batches(epoch) if callable(batches) else batches:
            wait += time.perf_counter() - t_ready
            x = x.to(device, non_blocking=True)
            if schedule.warmup_steps:
                kl_weight = schedule.weight(epoch, step)
            with torch.autocast(
                device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
            ):
                out = model(x)
                terms = core.loss(x, out, kl_weight, recon_weight)
            if not torch.isfinite(terms.loss):
                raise NonFiniteLossError(
                    f"non-finite loss at epoch {epoch + 1}, step {step + 1}: "
                    f"loss={terms.loss.item():.4g}, recon={terms.recon.mean().item():.4g}, "
                    f"kl={terms.kl.mean().item():.4g}, kl_weight={kl_weight:.4g}: the training diverged; "
                    f"lower train.lr (now {optimizer.param_groups[0]['lr']:.4g}) or set train.grad_clip"
                )
            optimizer.zero_grad(set_to_none=True)
            terms.loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            step += 1
            b = x.shape[0]
            sums += torch.tensor(
                [terms.loss.item() * b, terms.recon.sum().item(), terms.kl.sum().item()],
                dtype=torch.float64,
            )
            n += b
            t_ready = time.perf_counter()
        if n == 0:
            raise NoExamplesError(f"epoch {epoch + 1}: the batch source yielded no data")
        loss, recon, kl = (sums / n).tolist()
        stats = EpochStats(
            epoch=epoch + 1,
            loss=loss,
            recon=recon,
            kl=kl,
            elbo=-(recon + kl),
            kl_weight=kl_weight,
            samples=n,
            seconds=time.perf_counter() - t0,
            step=step,
            wait_seconds=wait,
        )
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats, core, optimizer)
    return history
