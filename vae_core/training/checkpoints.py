"""Checkpoints as safetensors (weights, optimizer tensors) + JSON (config, metadata). Never pickle.

Layout of a checkpoint directory (any URI):
    model.safetensors      model state_dict
    optimizer.safetensors  optimizer tensors, keyed "state.<param index>.<name>" (optional)
    optimizer.json         optimizer param_groups and non-tensor state (optional)
    config.json            the VaeflowConfig, secrets in data.storage_options redacted ("***")
    tabular.json           the fitted tabular transformer (tabular datasets only)
    meta.json              data shape, epoch, step, metrics; written last, so it marks a complete checkpoint
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from vae_core.config import VaeflowConfig, holds_redacted
from vae_core.data.layout import Block
from vae_core.data.storage import filesystem, join
from vae_core.data.tabular import TabularTransformer
from vae_core.models.families import DataShape, build_model
from vae_core.models.model import LatentModel

MODEL_FILE, OPTIM_FILE, OPTIM_JSON = "model.safetensors", "optimizer.safetensors", "optimizer.json"
CONFIG_FILE, META_FILE, TABULAR_FILE = "config.json", "meta.json", "tabular.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or not in the safetensors + JSON format."""


@dataclass
class Checkpoint:
    model: LatentModel
    config: VaeflowConfig
    meta: dict[str, Any]
    optimizer_state: dict[str, Any] | None = field(default=None, repr=False)
    transformer: TabularTransformer | None = field(default=None, repr=False)


def shape_to_json(shape: DataShape) -> dict[str, Any]:
    return {
        "dim": shape.dim,
        "image_shape": list(shape.image_shape) if shape.image_shape else None,
        "layout": [[b.kind, b.start, b.width] for b in shape.layout] if shape.layout else None,
    }


def shape_from_json(d: dict[str, Any]) -> DataShape:
    layout = [Block(k, s, w) for k, s, w in d["layout"]] if d.get("layout") else None
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
    shape: DataShape,
    optimizer: torch.optim.Optimizer | None = None,
    meta: dict[str, Any] | None = None,
    transformer: TabularTransformer | None = None,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Write a checkpoint directory at `uri` (opened with `storage_options`) and return it.

    config.json is the redacted config: no credential is ever written. meta.json goes last
    (completeness marker). Each file is one pipe_file: one PUT on S3, so a killed writer leaves no
    incomplete multipart upload.
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
    if transformer is not None:
        fs.pipe_file(join(root, TABULAR_FILE), transformer.to_json().encode())
    meta_json = json.dumps({**(meta or {}), "data_shape": shape_to_json(shape), "format": "vaeflow/1"})
    fs.pipe_file(join(root, META_FILE), meta_json.encode())
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
            raise CheckpointError(f"{uri}: incomplete checkpoint, {name} is missing")
    weights = _read_safetensors(fs, join(root, MODEL_FILE))
    with fs.open(join(root, CONFIG_FILE), "r") as f:
        config = VaeflowConfig.from_json(f.read())
    if storage_options is not None and holds_redacted(config.data.storage_options):
        data = config.data.model_copy(update={"storage_options": {**storage_options}})
        config = config.model_copy(update={"data": data})
    meta = _read_json(fs, join(root, META_FILE))
    model = build_model(config.model, shape_from_json(meta["data_shape"]))
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{uri}: weights do not match the model in config.json: {e}") from e
    optimizer_state = None
    if with_optimizer and fs.exists(join(root, OPTIM_FILE)):
        optimizer_state = _optimizer_from_files(
            _read_safetensors(fs, join(root, OPTIM_FILE)), _read_json(fs, join(root, OPTIM_JSON))
        )
    transformer = None
    if fs.exists(join(root, TABULAR_FILE)):
        with fs.open(join(root, TABULAR_FILE), "r") as f:
            transformer = TabularTransformer.from_json(f.read())
    return Checkpoint(model, config, meta, optimizer_state, transformer)


def data_shape(checkpoint: Checkpoint) -> DataShape:
    return shape_from_json(checkpoint.meta["data_shape"])
