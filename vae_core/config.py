"""One validated configuration: data, model, train, compute and the embed and generate jobs, as JSON.

The one carrier of settings from the CLI and flow parameters to Ray workers and checkpoints.

Secrets in `data.storage_options` stay in memory as given; they are redacted ("***") only where a
config leaves the process as text: `to_json()` (the default), `model_dump_json()`, `model_dump(mode="json")`
(Prefect parameters and artifacts) and `repr()`. Ray workers get `to_json(redact=False)`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from vae_core.config_text import apply_overrides, validation_message
from vae_core.errors import ConfigError
from vae_core.redaction import redact

# The feature codecs: name -> (its class as "module:class", what it reads). Adding a codec is one module in
# vae_core.data.codecs plus its line here (config stays free of pyarrow and torch).
CODECS: dict[str, tuple[str, str]] = {
    "vector": ("vae_core.data.codecs.vector:VectorCodec", "one numeric vector column / scale (pixels)"),
    "tabular": ("vae_core.data.codecs.table:TabularCodec", "continuous and categorical table columns"),
    "standardized": (
        "vae_core.data.codecs.standardized:StandardizedCodec",
        "a float vector column standardized per dimension",
    ),
}


class _Section(BaseModel):
    # extra="forbid": a misspelt key is an error, not a silently ignored setting. allow_inf_nan=False:
    # JSON has no Infinity, so an infinite setting would be written as null and refused on reading.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(_Section):
    """Where the training data live and how rows become feature vectors."""

    uri: str = Field(
        "", description="Dataset root URI (local path, file://, s3://, memory://) with train/ and test/."
    )
    id_column: str | None = Field("id", description="Stable row id column; None generates ids.")
    vector_column: str | None = Field(
        None, description="One fixed-length numeric vector column holding the features."
    )
    image_shape: tuple[int, int, int] | None = Field(
        None, description="(C, H, W) of the vector column when it holds images."
    )
    vector_dim: int | None = Field(
        None, ge=1, description="Length of the vector column when it is a variable-length list."
    )
    scale: float = Field(1.0, gt=0, description="Vector features are divided by this (255 for uint8).")
    codec: str = Field(
        "auto",
        description="How rows become x, a name from config.CODECS: auto = vector with data.vector_column, "
        "else tabular; standardized = a float vector column standardized per dimension (Gaussian).",
    )
    columns: list[str] | None = Field(
        None, description="Tabular feature columns; None takes every column but the id."
    )
    exclude: list[str] = Field(
        default_factory=list, description="Tabular columns left out of the features (by name)."
    )
    categorical: list[str] = Field(default_factory=list, description="Force these columns categorical.")
    continuous: list[str] = Field(default_factory=list, description="Force these numeric columns continuous.")
    max_categories: int = Field(1000, ge=1, description="Rarer categories share the null/unseen slot.")
    continuous_bins: int = Field(
        64,
        ge=0,
        description="Continuous columns as up to this many quantile bins each, a value's rank within its "
        "bin beside it (a frequent value is a bin of its own, so spikes stay exact); 0: Gaussian modes "
        "(mode-specific normalisation, as TVAE).",
    )
    dependencies: bool = Field(
        True,
        description="Find columns that another column fixes in every training row (education -> "
        "education_num) and generate them from it, so generated rows keep the map.",
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options for the URI; default: the AWS environment."
    )

    @field_validator("codec")
    @classmethod
    def _known_codec(cls, value: str) -> str:
        if value != "auto" and value not in CODECS:
            raise ValueError(f"unknown codec {value!r}; known: auto, {', '.join(CODECS)}")
        return value

    # JSON only: configs written next to checkpoints, printed, or stored as Prefect parameters carry
    # no credentials; model_dump() (python mode, e.g. with_overrides) keeps them.
    @field_serializer("storage_options", when_used="json")
    def _redact_secrets(self, options: dict[str, Any]) -> dict[str, Any]:
        return redact(options)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, redact(value) if name == "storage_options" else value


# The model families: name -> (its builder as "module:function", what it is). Adding a family is one
# builder function in vae_core.models.families plus its line here; validating a config imports no torch.
FAMILIES: dict[str, tuple[str, str]] = {
    "ae": ("vae_core.models.families:build_ae", "autoencoder: a deterministic code, reconstruction loss"),
    "dae": (
        "vae_core.models.families:build_dae",
        "denoising autoencoder: Gaussian-noise or masked input, clean target",
    ),
    "vae": (
        "vae_core.models.families:build_vae",
        "variational autoencoder: ELBO = reconstruction + beta * KL to N(0, I)",
    ),
}


class ModelConfig(_Section):
    """Model family, backbone and likelihood; sizes are plain numbers passed to the modules."""

    family: str = Field("vae", description="A model family from config.FAMILIES: ae, dae or vae.")
    backbone: Literal["mlp", "conv"] = "mlp"
    hidden: list[int] = Field(default_factory=lambda: [400], min_length=1)
    latent_dim: int = Field(20, ge=1)
    conv_channels: list[int] = Field(default_factory=lambda: [32, 64], min_length=1)
    likelihood: Literal["auto", "bernoulli", "gaussian", "tabular"] = Field(
        "auto",
        description="Observation model: auto follows the data (tables -> tabular, features in [0, 1] such "
        "as uint8 pixels / 255 -> bernoulli, other floats -> gaussian); an explicit choice that does not "
        "fit the data is refused before training.",
    )
    gaussian_sigma: float | None = Field(
        None, gt=0, description="Fixed observation std; None learns a per-feature std."
    )
    decoder: Literal["factorized", "autoregressive"] = Field(
        "factorized",
        description="p(x | z) of a table: factorized (the columns independent given z) or autoregressive "
        "(each column given z and the columns before it, in the table's order; drawing a row takes one "
        "decoder pass per column). Autoregressive needs model.likelihood tabular and the mlp backbone.",
    )
    corruption: Literal["none", "gaussian", "mask"] = "none"
    noise_std: float = Field(0.3, ge=0, description="Std of the Gaussian corruption (dae).")
    mask_prob: float = Field(0.25, ge=0, lt=1, description="Masking probability (dae).")

    @model_validator(mode="after")
    def _check_family(self) -> ModelConfig:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown model family {self.family!r}; known: {sorted(FAMILIES)}")
        if self.family == "dae" and self.corruption == "none":
            raise ValueError("family 'dae' needs corruption 'gaussian' or 'mask'")
        if self.family != "dae" and self.corruption != "none":
            raise ValueError(f"corruption is a denoising setting; use family 'dae', not {self.family!r}")
        return self


class TrainConfig(_Section):
    """Optimisation and the KL schedule (beta and its linear warm-up)."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant",
        description="The learning rate per epoch: `lr` throughout (constant), or cosine-annealed from `lr` "
        "in the first epoch towards 0 after the last (cosine, over train.epochs: extending a run "
        "stretches it).",
    )
    weight_decay: float = Field(
        0.0,
        ge=0,
        description="L2 penalty on the weights, added to their gradients by Adam (TVAE: 1e-5); 0 adds none.",
    )
    grad_clip: float | None = Field(None, gt=0, description="Max global grad norm; None disables.")
    beta: float = Field(1.0, ge=0, description="Weight of the KL term; 0 is reconstruction only.")
    warmup_epochs: int = Field(0, ge=0, description="Linear KL warm-up over this many epochs.")
    warmup_steps: int = Field(0, ge=0, description="Linear KL warm-up over this many steps.")
    seed: int = 0
    val_split: str = Field("test", description="Held-out split (a prefix under data.uri) for validation.")
    runs_uri: str = Field("data/runs", description="Where runs keep checkpoints (path or s3:// URI).")
    keep_checkpoints: int = Field(2, ge=1, description="Keep the best K checkpoints by validation ELBO.")
    checkpoint_every: int = Field(
        1,
        ge=1,
        description="Write a checkpoint every N epochs, and always after the last one; a restarted worker "
        "group resumes from the latest, so up to N-1 epochs are trained again. Every epoch is still "
        "reported.",
    )
    validate_every: int = Field(
        1,
        ge=1,
        description="Validate (val ELBO on the val split) every N epochs, and always on the last epoch and "
        "on every epoch that writes a checkpoint (a checkpoint carries its val ELBO); the other epochs "
        "report training metrics only.",
    )
    max_failures: int = Field(1, ge=0, description="Worker-group restarts allowed before the run fails.")
    latent_prior: Literal["posterior", "clusters", "mixture"] = Field(
        "posterior",
        description="The Gaussian mixture fitted to the aggregate posterior after the last epoch (VAEs "
        "whose train split fits train.cache_mb), saved with the final checkpoint for `generate --sampler "
        "mixture`: posterior, q(z) itself, each training row's posterior Gaussian (at most 50,000 rows; "
        "closest to the data, but at a low train.beta its draws sit near training rows: the report's "
        "privacy section shows it); clusters, a diagonal Gaussian per k-means cluster of the codes, one "
        "per 100 rows; mixture, train.latent_mixture full-covariance Gaussians.",
    )
    latent_mixture: int = Field(
        30,
        ge=0,
        description="Components of the full-covariance mixture (train.latent_prior=mixture; at most one per "
        "100 training rows); 0 fits no mixture of either kind.",
    )
    init_from: str | None = Field(
        None,
        description="Warm start: a checkpoint URI whose weights (and codec) a new run starts from instead of "
        "random ones; the model settings must match it. In `vaeflow run`/the nightly, `champion` means the "
        "registry's current champion (a first night, with none, starts from random weights).",
    )
    cache_mb: int = Field(
        2048,
        ge=0,
        description="Per Ray worker: keep its decoded train and validation rows in memory after the first "
        "pass when they fit in this many MB (later epochs read no storage); larger splits stream every "
        "epoch; 0 always streams.",
    )

    @model_validator(mode="after")
    def _one_warmup(self) -> TrainConfig:
        if self.warmup_epochs and self.warmup_steps:
            raise ValueError("give the KL warm-up in epochs or in steps, not both")
        return self


class ComputeConfig(_Section):
    """Resources for the distributed layer: training, embed and generate alike."""

    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0, description="Logical CPUs each training worker reserves.")
    data_cpus: float = Field(
        1.0, ge=0, description="Logical CPUs left free for Ray Data reading next to the workers."
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="Intra-op threads per worker; None: the CPUs the worker reserves, plus its share of "
        "data_cpus once its splits are cached in memory (train.cache_mb).",
    )
    shared_memory_allreduce: bool = Field(
        True,
        description="DDP workers that all train on one CPU node (x86-64) average gradients through "
        "shared memory instead of gloo's loopback TCP; false keeps gloo.",
    )

    @property
    def threads_per_worker(self) -> int:
        """torch's intra-op threads on each worker or actor: torch_threads, else the CPUs it reserves
        (Ray sets OMP_NUM_THREADS=1 for fractional CPUs, and a 1-thread worker holding more CPUs
        leaves them idle)."""
        return self.torch_threads or max(1, int(self.cpus_per_worker))

    @property
    def threads_when_cached(self) -> int:
        """torch's threads on a training worker once its train and validation rows are all in memory
        (train.cache_mb): no Ray Data read runs for it any more, so it also takes its share of
        data_cpus (1 worker with 1 CPU + 1 data CPU: 2 threads; 2 such workers: 1 each), which the
        training step then runs faster on (bench/results/train_throughput.json). torch_threads, when
        given, holds throughout."""
        share = self.data_cpus / self.num_workers
        return self.torch_threads or max(1, int(self.cpus_per_worker + share))


class EmbedConfig(_Section):
    """The embed job: every row of a corpus mapped to its posterior mean (and log-variance)."""

    with_logvar: bool = Field(False, description="Also write z_logvar (VAE posteriors only).")
    passthrough: list[str] = Field(
        default_factory=list, description="Input columns copied next to z_mean (the id column always is)."
    )
    chunk_rows: int = Field(4096, ge=1, description="Rows per forward pass on a worker.")
    rows_per_file: int | None = Field(
        None,
        ge=1,
        description="Rows per output Parquet file; default: as many as make about 16 MiB of output (in "
        "memory) a file, within each input shard (a narrow embedding: hundreds of thousands of rows).",
    )
    incremental: bool = Field(
        False,
        description="Embed only the input shards (by content fingerprint) that the output table does not "
        "hold yet from this model and these settings, appending them; when its rows come from another "
        "model, or an embedded shard has changed or gone, embed everything (mode decides how). The "
        "nightly always embeds incrementally.",
    )
    strict: bool = Field(
        False,
        description="Refuse input drift (unknown categories, nulls where training had none, values "
        "outside the training range) before writing anything; default: embed it and record the counts "
        "per column in the commit's stats.drift.",
    )
    local_rows: int = Field(
        0,
        ge=0,
        description="As generate.local_rows, for the rows a run embeds (e.g. a night's new shard): at most "
        "this many run in the calling process when no Ray cluster is set up. 0 (default): always on Ray.",
    )


class GenerateConfig(_Section):
    """The generate job: rows in the training schema decoded from draws z ~ N(0, I), all of them or
    those that carry the `where` values."""

    rows: int = Field(1000, ge=1, description="Rows to generate.")
    seed: int = Field(0, description="Seed of the draws; the same seed gives the same rows.")
    sample_likelihood: bool | None = Field(
        None,
        description="Sample p(x|z) instead of taking its mean; None: sample for tables, mean otherwise.",
    )
    chunk_rows: int = Field(4096, ge=1, description="Rows per decoder forward pass on a worker.")
    rows_per_file: int = Field(10_000, ge=1, description="Rows per output Parquet file.")
    local_rows: int = Field(
        100_000,
        ge=0,
        description="A CPU job of at most this many rows runs in the calling process instead of on Ray when "
        "no cluster is set up (RAY_ADDRESS unset, Ray not started in the process): a local cluster and its "
        "map actor take seconds to start, longer than decoding such a job. Same files, rows and commit "
        "either way; compute.num_workers applies to Ray only, and GPU jobs (compute.use_gpu) always use "
        "Ray. 0: always on Ray.",
    )
    sampler: Literal["auto", "prior", "mixture"] = Field(
        "auto",
        description="Where z comes from: prior N(0, I), or mixture, the Gaussian mixture fitted to the "
        "aggregate posterior after training (train.latent_prior; closer to the data); auto: the "
        "mixture when the checkpoint holds one, else the prior.",
    )
    latent_scale: float = Field(
        1.0,
        gt=0,
        description="Spread of the draws of z: the noise of every draw (N(0, I), or each latent mixture "
        "component's around its mean) times this factor. Above 1 a model trained at a small train.beta, "
        "whose posterior draws (train.latent_prior=posterior) sit near training rows, draws rows further "
        "from them (the report's privacy section shows how far); below 1, more typical rows.",
    )
    match_shares: list[str] = Field(
        default_factory=list,
        description="Categorical columns whose values keep their training shares in the output, e.g. a "
        "label: each file draws half as many rows again and keeps those that bring the named columns to "
        "the shares recorded when the codec was fitted (raking, then weighted sampling without "
        "repeats); within a value the rows follow the model. Not with `where`.",
    )
    where: dict[str, str] = Field(
        default_factory=dict,
        description="Conditions, column -> value (on the command line COL=VALUE): only rows that carry "
        "every one are kept, drawn by rejection from the model's own distribution; the commit records "
        "how many draws it took.",
    )

    @field_validator("where", mode="before")
    @classmethod
    def _conditions(cls, value: Any) -> Any:
        """COL=VALUE strings (the command line) as a column -> value mapping; a mapping as it is."""
        if not isinstance(value, list | tuple):
            return value
        where: dict[str, str] = {}
        for item in value:
            column, eq, text = str(item).partition("=")
            if not eq or not column.strip():
                raise ValueError(f"expected COL=VALUE, got {item!r}")
            if column.strip() in where:
                raise ValueError(f"column {column.strip()!r} is given twice")
            where[column.strip()] = text
        return where


# A model's name and a run's name each become one folder (runs_uri/<run>, the registry's <name>/): no
# separator, no leading dot, short enough for a file name. A nightly's run is <name>-<version>.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
NAME_MAX, RUN_NAME_MAX = 64, 128


class VaeflowConfig(_Section):
    """Everything one run needs; written next to every checkpoint as JSON."""

    name: str = Field("vae", pattern=NAME_PATTERN, max_length=NAME_MAX)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)

    def to_json(self, redact: bool = True) -> str:
        """JSON text. Redacted (secrets in data.storage_options as "***") for files, logs and output;
        `redact=False` only to hand the config to another process of the same job (Ray workers)."""
        if redact:
            return self.model_dump_json(indent=2)
        return json.dumps(self.model_dump(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> VaeflowConfig:
        return cls.model_validate_json(text)

    @classmethod
    def from_file(cls, path: str | Path) -> VaeflowConfig:
        """The config in the JSON file `path`; a ConfigError naming the file when it cannot be read or
        is not a valid config."""
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the config file ({e.strerror or e})") from e
        try:
            return cls.model_validate_json(text)
        except ValidationError as e:
            raise ConfigError(f"{path}: invalid configuration: {validation_message(e, cls)}") from e

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VaeflowConfig:
        """model_validate for settings a user gave: what is wrong as a ConfigError naming each key."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ConfigError(validation_message(e, cls)) from e

    def with_overrides(self, overrides: list[str]) -> VaeflowConfig:
        """Apply `section.key=value` overrides (value parsed as JSON, else kept as a string)."""
        return VaeflowConfig.from_dict(apply_overrides(VaeflowConfig, self.model_dump(), overrides))
