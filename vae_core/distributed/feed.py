"""The data feed of training: the splits' shards as Ray Datasets, encoded to x on each worker.

Rows become tensors on the workers (`Encode`, the codec in Ray Data's collate step), so Ray Data moves
the stored types (uint8 pixels, not float32); `ShardBatches` keeps a worker's decoded rows in memory
after the first pass when they fit `train.cache_mb`.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.data.collate_fn import ArrowBatchCollateFn

from vae_core.config import VaeflowConfig
from vae_core.data.codecs import Codec, encode_by_file
from vae_core.data.storage import arrow_filesystem

from . import ray_internals

PATH = "path"  # the column read_parquet(include_paths=True) adds
CHUNK_BATCHES = 16  # batches Ray Data hands a worker at a time; streamed epochs shuffle within them
Splits = dict[str, list[str]]  # the shards of "train" and "val"


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

    Ray 2.60's default (V2) Parquet datasource plans a file-listing task before the reads, which
    costs seconds every pass over a small split; the read takes the V1 datasource instead (the
    setting is read when the dataset is created).
    """
    fs, _ = arrow_filesystem(shards[0], storage_options)
    paths = [arrow_filesystem(s, storage_options)[1] for s in shards]
    ctx = ray.data.DataContext.get_current()
    v2, ctx.use_datasource_v2 = ctx.use_datasource_v2, False
    log = logging.getLogger(ray_internals.PARQUET_V1_LOGGER)  # its INFO lines, twice per dataset
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
        if name == "train":
            # The shards in a seeded random order; rows then mix within runs (ShardBatches._stream).
            # Ray Data's randomize_block_order is an all-to-all step: every epoch it waited for all the
            # split's reads before the first block (bench/results/train_throughput_streamed.json).
            split_shards = split_shards.copy()
            random.Random(cfg.train.seed).shuffle(split_shards)
        out[name] = _read(split_shards, [*columns, *ids], cfg.data.storage_options)
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


def all_reduce_sum(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


class ShardBatches:
    """x batches (B, D) of this worker's dataset shards, encoded by the codec on the way in.

    The first pass over a shard streams it from storage through Ray Data; when its decoded rows fit
    in `train.cache_mb` (train and validation together), they are kept in this worker's memory and
    later passes read them from there: Ray Data's path (reading, conversion, prefetch threads competing
    with torch for the worker's cores) is paid once, not every epoch.
    Cached epochs shuffle with a seeded permutation per epoch and rank, as the streamed ones do
    within runs of batches; the batch count per epoch is the same either way (DDP needs it).
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
        return self._keeping("train", self._stream(self.train_shard, seed))

    def val(self) -> Iterator[torch.Tensor]:
        """The validation split in order."""
        if "val" in self.cached:
            return self._from_memory(self.cached["val"], None)
        return self._keeping("val", self._stream(ray.train.get_dataset_shard("val")))

    def _stream(self, shard: Any, seed: int | None = None) -> Iterator[torch.Tensor]:
        """Batches of the shard as Ray Data streams it, shuffled within runs of CHUNK_BATCHES batches
        when a seed is given. Ray Data hands over whole runs, encoded at once in its prefetch thread,
        and they are cut into batches here: one pass through its per-batch path (batching, collate)
        for every CHUNK_BATCHES steps. The batch count is the same as Ray Data's batch_size would
        give: each run but the last is whole."""
        order = None if seed is None else torch.Generator().manual_seed(seed)
        runs = shard.iter_torch_batches(batch_size=CHUNK_BATCHES * self.batch_size, collate_fn=self.encode)
        for x in runs:
            yield from self._batches(x.to(self.device, non_blocking=True), order)  # one copy a run

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
        order = None if seed is None else torch.Generator().manual_seed(seed)
        yield from (rows.to(self.device, non_blocking=True) for rows in self._batches(x, order))

    def _batches(self, x: torch.Tensor, order: torch.Generator | None) -> Iterator[torch.Tensor]:
        """x in batches, in order or (`order` given) shuffled by a permutation drawn from it."""
        rows = None if order is None else torch.randperm(len(x), generator=order)
        for start in range(0, len(x), self.batch_size):
            # index_select gathers the shuffled rows faster than indexing (x[idx]) does, on the
            # path of every cached training step.
            yield (
                x[start : start + self.batch_size]
                if rows is None
                else torch.index_select(x, 0, rows[start : start + self.batch_size])
            )
