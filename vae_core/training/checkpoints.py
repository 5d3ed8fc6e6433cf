"""Checkpoints as safetensors (weights, optimizer tensors) + JSON (config, codec, metadata). Never pickle.

Layout of a checkpoint directory (any URI):
    model.safetensors      model state_dict
    optimizer.safetensors  optimizer tensors, keyed "state.<param index>.<name>" (optional)
    optimizer.json         optimizer param_groups and non-tensor state (optional)
    config.json            the VaeflowConfig, secrets in data.storage_options redacted ("***")
    codec.json             the fitted feature codec: how rows of the training schema become x and back
    latent_mixture.safetensors  a Gaussian mixture fitted to the aggregate posterior (models.sampler;
                           optional: VAEs, for `generate --sampler mixture`)
    meta.json              CheckpointMeta: epoch, step, history, data schema and shape; written last, so it
                           marks a complete checkpoint

Checkpoints written before codec.json hold tabular.json (a fitted tabular transformer) or nothing; their
codec is rebuilt from it, or from config.data and the saved data shape (vae_core.data.codecs.legacy_codec).
"""

from __future__ import annotations

import dataclasses
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import torch
from pydantic import ValidationError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from vae_core.config import VaeflowConfig, validation_message
from vae_core.data.codecs import Codec, codec_from_json, codec_to_json, legacy_codec
from vae_core.data.dataset import decode_schema
from vae_core.data.layout import Block
from vae_core.data.storage import filesystem, join
from vae_core.errors import CheckpointError
from vae_core.models.families import DataShape, build_model
from vae_core.models.model import LatentModel
from vae_core.models.sampler import LatentMixture
from vae_core.redaction import holds_redacted
from vae_core.training.records import EpochRecord

MODEL_FILE, OPTIM_FILE, OPTIM_JSON = "model.safetensors", "optimizer.safetensors", "optimizer.json"
CONFIG_FILE, CODEC_FILE, META_FILE = "config.json", "codec.json", "meta.json"
SAMPLER_FILE = "latent_mixture.safetensors"
LEGACY_TABULAR_FILE = "tabular.json"  # the codec of checkpoints written before codec.json
# What a model needs for inference and evaluation, meta.json (the completeness marker) last. Optimizer
# state stays with the training run.
MODEL_FILES = (MODEL_FILE, CONFIG_FILE, CODEC_FILE, LEGACY_TABULAR_FILE, SAMPLER_FILE, META_FILE)
META_FORMAT = "vaeflow/1"


@dataclass
class CheckpointMeta:
    """meta.json: where training stood when the checkpoint was written. Every field has a default, so
    the meta of older checkpoints and of hand-made ones reads; keys this version does not know are
    kept in `extra` and written back."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken
    history: list[EpochRecord] = field(default_factory=list)  # one record per epoch
    val_elbo: float | None = None
    val_elbo_init: float | None = None  # validation ELBO of the untrained model
    data_schema: str | None = None  # the training columns' Arrow schema (dataset.encode_schema)
    world_size: int = 1
    worker_nodes: list[str] = field(default_factory=list)
    gradients: str | None = None  # how DDP averaged gradients, e.g. "shared memory", "gloo (...)"
    restarts: list[dict[str, Any]] = field(default_factory=list)  # {"from_epoch", "at"} per resume
    data_shape: DataShape | None = None  # set by save_checkpoint from the codec
    extra: dict[str, Any] = field(default_factory=dict)

    def schema(self) -> pa.Schema | None:
        """The training schema (types of the id and feature columns), when recorded."""
        return decode_schema(self.data_schema) if self.data_schema else None

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        d["data_shape"] = _shape_to_json(self.data_shape) if self.data_shape else None
        d["history"] = [r.to_dict() for r in self.history]
        return {**self.extra, **d, "format": META_FORMAT}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CheckpointMeta:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names and v is not None}
        known["history"] = [EpochRecord.from_dict(r) for r in known.get("history", [])]
        if "data_shape" in known:
            known["data_shape"] = _shape_from_json(known["data_shape"])
        extra = {k: v for k, v in d.items() if k not in names and k != "format"}
        return cls(**known, extra=extra)


@dataclass
class Checkpoint:
    model: LatentModel
    config: VaeflowConfig
    codec: Codec  # rows <-> x for this model
    meta: CheckpointMeta
    optimizer_state: dict[str, Any] | None = field(default=None, repr=False)
    sampler: LatentMixture | None = field(default=None, repr=False)  # fitted to the aggregate posterior


def _shape_to_json(shape: DataShape) -> dict[str, Any]:
    return {
        "dim": shape.dim,
        "image_shape": list(shape.image_shape) if shape.image_shape else None,
        "layout": [[b.kind, b.start, b.width, b.column] for b in shape.layout] if shape.layout else None,
    }


def _shape_from_json(d: dict[str, Any]) -> DataShape:
    # [kind, start, width, column]; checkpoints written before blocks named their column have 3 entries
    layout = [Block(*entry) for entry in d["layout"]] if d.get("layout") else None
    image_shape = tuple(d["image_shape"]) if d.get("image_shape") else None
    return DataShape(d["dim"], image_shape, layout)  # type: ignore[arg-type]


def _optimizer_to_files(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for idx, entry in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    return {"state": dict(sorted(state.items())), "param_groups": meta["param_groups"]}


def save_checkpoint(
    uri: str,
    model: LatentModel,
    config: VaeflowConfig,
    codec: Codec,
    optimizer: torch.optim.Optimizer | None = None,
    meta: CheckpointMeta | None = None,
    storage_options: dict[str, Any] | None = None,
    sampler: LatentMixture | None = None,
) -> str:
    """Write a checkpoint directory at `uri` (opened with `storage_options`) and return it.

    config.json is the redacted config: no credential is ever written. meta.json goes last
    (completeness marker), its data_shape that of `codec`. Each file is one pipe_file: one PUT on S3,
    so a killed writer leaves no incomplete multipart upload.
    """
    fs, root = filesystem(uri, storage_options)
    fs.makedirs(root, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    fs.pipe_file(join(root, MODEL_FILE), st_save(weights))
    if optimizer is not None:
        tensors, rest = _optimizer_to_files(optimizer.state_dict())
        fs.pipe_file(join(root, OPTIM_FILE), st_save(tensors))
        fs.pipe_file(join(root, OPTIM_JSON), json.dumps(rest).encode())
    fs.pipe_file(join(root, CONFIG_FILE), config.to_json().encode())
    fs.pipe_file(join(root, CODEC_FILE), codec_to_json(codec).encode())
    if sampler is not None:
        fs.pipe_file(join(root, SAMPLER_FILE), st_save(sampler.to_tensors()))
    meta = dataclasses.replace(meta or CheckpointMeta(), data_shape=DataShape.of(codec))
    fs.pipe_file(join(root, META_FILE), meta.to_json().encode())
    return uri


def _read_safetensors(fs: Any, path: str) -> dict[str, torch.Tensor]:
    """Read a safetensors file, refusing anything else (pickle, torch.save zip) before parsing it."""
    with fs.open(path, "rb") as f:
        data = f.read()
    # safetensors: 8-byte little-endian header length, then a JSON header starting with '{'.
    ok = len(data) >= 10 and data[8:9] == b"{" and struct.unpack("<Q", data[:8])[0] <= len(data) - 8
    if not ok:
        kind = "a pickle" if data[:1] == b"\x80" else "a zip (torch.save)" if data[:2] == b"PK" else "not"
        raise CheckpointError(
            f"{path}: not a safetensors file ({kind} file); vaeflow loads only safetensors + JSON "
            "checkpoints and never unpickles"
        )
    try:
        return st_load(data)
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path}: corrupt safetensors file: {e}") from e


def _read_json(fs: Any, path: str) -> Any:
    try:
        with fs.open(path, "r") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON: {e}") from e


def _checkpoints_in(fs: Any, folder: str) -> list[str]:
    """The names of the checkpoint folders (epoch_NNNN holding MODEL_FILE) directly in `folder`."""
    try:
        entries = fs.ls(folder, detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return []
    names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in entries)
    return [n for n in names if n.startswith("epoch_") and fs.exists(join(folder, n, MODEL_FILE))]


def _not_a_checkpoint(fs: Any, root: str, uri: str, missing: str) -> str:
    """Why `uri` holds no checkpoint, and where the checkpoints are: a run's folder (its checkpoints
    listed), a checkpoint that is not there (its run's listed), a dataset, or a checkpoint missing a
    file (`missing`)."""

    def listed(names: list[str], run: str) -> str:
        shown = ", ".join(names[-8:]) + (f" (and {len(names) - 8} earlier)" if len(names) > 8 else "")
        return f"holds the checkpoints {shown}: give one, e.g. --model {join(run, names[-1])}"

    fs.invalidate_cache(root)
    if here := _checkpoints_in(fs, root):
        return f"{uri}: a training run's folder, not a checkpoint; it {listed(here, uri.rstrip('/'))}"
    if not fs.exists(root):
        run = uri.rstrip("/").rsplit("/", 1)[0]
        siblings = _checkpoints_in(fs, root.rstrip("/").rsplit("/", 1)[0])
        where = f"; its run {listed(siblings, run)}" if siblings else ""
        return f"{uri}: no checkpoint there (the path does not exist){where}"
    if any(p.endswith(".parquet") for p in fs.find(root, maxdepth=2)):
        return f"{uri}: holds Parquet files (a dataset or table), not a checkpoint (a folder of {MODEL_FILE})"
    return f"{uri}: incomplete checkpoint, {missing} is missing"


def load_checkpoint(
    uri: str, with_optimizer: bool = False, storage_options: dict[str, Any] | None = None
) -> Checkpoint:
    """Rebuild the model from config + data shape and load its weights. Never unpickles.

    `storage_options` open `uri`. config.json holds redacted storage options ("***" for secrets);
    when it does and `storage_options` are given, the loaded config's data.storage_options are the
    given ones, so the checkpoint's config can open its data again. Without them, they stay "***" and
    opening data with them fails with a message saying to pass the real options.
    """
    fs, root = filesystem(uri, storage_options)
    if fs.isfile(root):
        raise CheckpointError(
            f"{uri}: is a single file; a vaeflow checkpoint is a directory holding {MODEL_FILE}, "
            f"{CONFIG_FILE} and {META_FILE} (pickle files are refused)"
        )
    for name in (MODEL_FILE, CONFIG_FILE, META_FILE):
        if not fs.exists(join(root, name)):
            raise CheckpointError(_not_a_checkpoint(fs, root, uri, name))
    weights = _read_safetensors(fs, join(root, MODEL_FILE))
    with fs.open(join(root, CONFIG_FILE), "r") as f:
        text = f.read()
    try:
        config = VaeflowConfig.from_json(text)
    except ValidationError as e:
        wrong = validation_message(e)
        raise CheckpointError(f"{join(uri, CONFIG_FILE)}: not a vaeflow config: {wrong}") from e
    if storage_options is not None and holds_redacted(config.data.storage_options):
        data = config.data.model_copy(update={"storage_options": {**storage_options}})
        config = config.model_copy(update={"data": data})
    meta = CheckpointMeta.from_dict(_read_json(fs, join(root, META_FILE)))
    codec = _read_codec(fs, root, uri, config, meta)
    model = build_model(config.model, DataShape.of(codec))
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{uri}: weights do not match the model in config.json: {e}") from e
    optimizer_state = None
    if with_optimizer and fs.exists(join(root, OPTIM_FILE)):
        optimizer_state = _optimizer_from_files(
            _read_safetensors(fs, join(root, OPTIM_FILE)), _read_json(fs, join(root, OPTIM_JSON))
        )
    sampler = None
    if fs.exists(join(root, SAMPLER_FILE)):
        tensors = _read_safetensors(fs, join(root, SAMPLER_FILE))
        try:
            sampler = LatentMixture.from_tensors(tensors)
        except KeyError as e:
            raise CheckpointError(f"{join(uri, SAMPLER_FILE)}: not a latent mixture (no {e})") from e
    return Checkpoint(model, config, codec, meta, optimizer_state, sampler)


def _read_codec(fs: Any, root: str, uri: str, config: VaeflowConfig, meta: CheckpointMeta) -> Codec:
    """codec.json, or for a checkpoint from before it, the codec rebuilt from tabular.json / config.data."""
    if fs.exists(join(root, CODEC_FILE)):
        with fs.open(join(root, CODEC_FILE), "r") as f:
            text = f.read()
        try:
            return codec_from_json(text, source=join(uri, CODEC_FILE))
        except (CheckpointError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{join(uri, CODEC_FILE)}: not a readable codec: {e}") from e
    tabular_json = None
    if fs.exists(join(root, LEGACY_TABULAR_FILE)):
        with fs.open(join(root, LEGACY_TABULAR_FILE), "r") as f:
            tabular_json = f.read()
    if meta.data_shape is None:
        raise CheckpointError(f"{uri}: {META_FILE} has no data_shape and there is no {CODEC_FILE}")
    shape = meta.data_shape
    try:
        return legacy_codec(
            config.data,
            shape.dim,
            shape.image_shape,
            meta.schema(),
            tabular_json,
            unit_interval=config.model.likelihood in ("bernoulli", "auto"),
        )
    except (CheckpointError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{uri}: no {CODEC_FILE}, and the codec cannot be rebuilt: {e}") from e
