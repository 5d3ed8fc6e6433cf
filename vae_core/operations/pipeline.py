"""Settings and object-store layout of the nightly pipeline: train, evaluate, promote, embed, generate.

Layout under one root URI (a local folder, s3://bucket/prefix, ...):
    <root>/models/<name>/<version>/...            the model registry (vae_core.operations.registry)
    <root>/embeddings/<name>/<split>/             Delta table per corpus split: one version per night
    <root>/samples/<name>/                        Delta table of generated rows: one version per night
    <root>/drift/<name>/<YYYY-MM-DD>/drift.json   aggregate-posterior stats and the drift verdict

A night replaces a table's rows with a new version (Delta overwrite: no file is deleted, and every
earlier night stays readable with `DeltaTable(uri, version=v)`; each commit's metadata names its
night in `vaeflow.night`). A night whose job was already committed (same model, same input, same
parameters) adds no version: its rows are the latest version's.
Training runs keep their checkpoints under the config's `train.runs_uri`.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from vae_core.config import VaeflowConfig
from vae_core.data.storage import absolute, join


class PipelineConfig(BaseModel):
    """What only the nightly flow decides: where its outputs live, which model serves, the gate and the
    drift threshold, what the report evaluates. The model, data, training, compute and the embed and
    generate jobs' settings live in VaeflowConfig."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    root: str = Field(
        description="Object-store root: registry under models/, outputs under embeddings/, samples/."
    )
    model_version: str | None = Field(
        None, description="Embed and generate with this registry version instead of the champion."
    )
    gate_margin: float = Field(
        2.0, ge=0, description="A candidate may trail the champion's held-out ELBO by at most this many nats."
    )
    drift_threshold: float = Field(
        1.0, gt=0, description="Report latent drift when a night-over-night KL (nats) exceeds this."
    )
    embed_uri: str | None = Field(None, description="Corpus root to embed; default: the training data.uri.")
    keep_nights: int = Field(
        7,
        ge=1,
        description="After its commits the night maintains the embeddings and samples tables (`vaeflow "
        "maintain`): the versions of this many latest nights stay readable, older replaced files go.",
    )
    vacuum_every: int = Field(
        7,
        ge=1,
        description="The night's maintenance runs VACUUM once this many nights followed the last one "
        "(weekly): each lists the table's files and reads every retained version.",
    )
    embed_splits: list[str] = Field(default_factory=lambda: ["train", "test"], min_length=1)
    iwae_k: int = Field(1000, ge=1, description="Importance samples per row for the IWAE bound.")
    max_eval_rows: int | None = Field(10_000, ge=1, description="Held-out rows the report evaluates.")
    bootstrap: Literal["mnist", "adult"] | None = Field(
        None,
        description="Import this bundled dataset into data.uri when it has no training shards, only if "
        "data.uri does not exist or holds nothing; anything else is an error and nothing is touched.",
    )


def embeddings_uri(root: str, name: str, split: str) -> str:
    """The Delta table of a corpus split's embeddings."""
    return join(root, "embeddings", name, split)


def drift_uri(root: str, name: str, run_date: date | None = None) -> str:
    """Drift records: one folder per night under this one."""
    nights = join(root, "drift", name)
    return nights if run_date is None else join(nights, run_date.isoformat())


def samples_uri(root: str, name: str) -> str:
    """The Delta table of generated rows."""
    return join(root, "samples", name)


def local_defaults(root: str | Path = "data", epochs: int = 3) -> tuple[VaeflowConfig, PipelineConfig]:
    """The embedded default behind `make run`: MNIST in a local folder, one Ray worker, a short run.

    `root` is a local folder or an object-store URI (s3://bucket/prefix). The only configuration that
    bootstraps: MNIST is imported into `<root>/datasets/mnist` while that
    folder is empty or missing (a config file given to `vaeflow run` does not inherit this).

    Sized for a 2-core machine: 3 epochs of the 784-400-20 VAE, IWAE (k=1000) on 1,000 held-out rows,
    embeddings of all 70,000 rows (with their `label`), 1,000 samples.
    """
    base = absolute(str(root))  # Ray Train wants absolute local storage paths; a URI stays as it is
    config = VaeflowConfig.model_validate(
        {
            "name": "mnist-vae",
            "data": {
                "uri": join(base, "datasets", "mnist"),
                "vector_column": "image",
                "image_shape": [1, 28, 28],
                "scale": 255,
            },
            "model": {"family": "vae", "hidden": [400], "latent_dim": 20},
            "train": {"epochs": epochs, "batch_size": 128, "runs_uri": join(base, "runs")},
            "compute": {"num_workers": 1, "cpus_per_worker": 1, "data_cpus": 1},
            "embed": {"passthrough": ["label"]},
            "generate": {"rows": 1000},
        }
    )
    pipeline = PipelineConfig(root=base, max_eval_rows=1000, bootstrap="mnist")
    return config, pipeline
