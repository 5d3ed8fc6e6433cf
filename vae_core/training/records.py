"""What a training run reports as it goes: its start and each finished epoch, typed, with one writer
(`EpochRecord.of`, `to_dict`) and one reader (`from_dict`) for every place they go: progress lines,
the Prefect progress artifact, MLflow, and the history in every checkpoint's meta.json."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from vae_core.training.evaluation import EvalResult
from vae_core.training.loop import EpochStats

# The metrics of an epoch that go to Ray Train's report and MLflow (val_*: validated epochs only).
METRICS = ("loss", "elbo", "recon", "kl", "val_elbo", "val_recon", "val_kl", "samples_per_s", "seconds")


@dataclass(frozen=True)
class RunStart:
    """The run's first record (a fresh run, not a resume): the worker group and the untrained model."""

    kind: ClassVar[str] = "start"
    epochs: int
    world: int
    nodes: list[str]
    gradients: str  # how DDP averages them, e.g. "shared memory"
    val_elbo_init: float  # the untrained (or warm-started) model's validation ELBO
    warm: bool  # started from train.init_from's weights

    def line(self) -> str:
        start = "warm-started" if self.warm else "untrained"
        elbo = f"{start} val ELBO {self.val_elbo_init:.2f}"
        return f"{self.world} worker(s), gradients {self.gradients}; {elbo}"


@dataclass(kw_only=True)
class EpochRecord(EpochStats):
    """One finished epoch: the loop's EpochStats for the whole worker group (`samples` of all workers,
    so `samples_per_s` is the group's), where the train rows came from, and the validation on the
    epochs that validate."""

    kind: ClassVar[str] = "epoch"
    epochs: int  # the run's planned epochs (train.epochs)
    data_from: str = "storage"  # "storage" (streamed by Ray Data) or "memory" (the worker's cache)
    threads: int = 0  # torch threads of a worker
    finished_at: float = field(default_factory=time.time)
    val_elbo: float | None = None
    val_recon: float | None = None
    val_kl: float | None = None
    val_seconds: float | None = None

    @classmethod
    def of(
        cls,
        stats: EpochStats,
        epochs: int,
        world: int = 1,
        data_from: str = "storage",
        threads: int = 0,
        val: EvalResult | None = None,
        val_seconds: float | None = None,
    ) -> EpochRecord:
        """The record of `stats` from one of `world` workers that each processed the same rows."""
        return cls(
            **{**dataclasses.asdict(stats), "samples": stats.samples * world},
            epochs=epochs,
            data_from=data_from,
            threads=threads,
            val_elbo=None if val is None else val.elbo,
            val_recon=None if val is None else val.recon,
            val_kl=None if val is None else val.kl,
            val_seconds=val_seconds,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON for meta.json and reports; the val_* keys only on validated epochs."""
        d = {**dataclasses.asdict(self), "samples_per_s": self.samples_per_s}
        return {k: v for k, v in d.items() if not (k.startswith("val_") and v is None)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpochRecord:
        """A record as `to_dict` wrote it; older checkpoints' records lack some keys: their defaults
        (`epochs`: the record's own epoch)."""
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in d.items() if k in names}
        known.setdefault("epochs", known.get("epoch", 0))
        for k in ("loss", "recon", "kl", "elbo", "kl_weight", "seconds"):
            known.setdefault(k, float("nan"))
        for k in ("samples", "step"):
            known.setdefault(k, 0)
        return cls(**known)

    def metrics(self) -> dict[str, float]:
        """METRICS that this epoch has (val_*: validated epochs only)."""
        return {k: float(v) for k in METRICS if (v := getattr(self, k)) is not None}

    def line(self) -> str:
        val = f"val ELBO {self.val_elbo:.2f}  " if self.val_elbo is not None else ""
        return (
            f"epoch {self.epoch}/{self.epochs}  loss {self.loss:.2f}  recon {self.recon:.2f}  "
            f"kl {self.kl:.2f}  {val}{self.samples_per_s:,.0f} samples/s"
        )


Record = RunStart | EpochRecord  # what rank 0 sends the driver while a run goes on
