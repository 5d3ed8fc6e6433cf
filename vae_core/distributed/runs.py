"""Run records: which runs exist under `train.runs_uri`, and whether a launch may continue one.

The first launch of a run writes runs_uri/<name>/vaeflow-run.json (the redacted config). Relaunching
a name that has a stored run is an error unless resuming is asked for (`resume=True`,
`vaeflow train --resume`), and even then when the stored config differs in a data/model/train key
(named in the error): a run is one model trained on one dataset. Not compared: train.epochs (a
resume with more epochs extends a finished run), and settings that do not change what is trained
(NOT_COMPARED, and the compute section).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from vae_core.config import NAME_PATTERN, RUN_NAME_MAX, DataConfig, ModelConfig, TrainConfig, VaeflowConfig
from vae_core.data.storage import create_only_write, filesystem, join
from vae_core.errors import RunNameError

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

    Raises RunNameError when the name is not one folder name (NAME_PATTERN, RUN_NAME_MAX), when the
    stored config differs in a data/model/train key (naming them), or when the run exists and resume is
    False.
    """
    if not re.fullmatch(NAME_PATTERN, name) or len(name) > RUN_NAME_MAX:
        shown = name if len(name) <= 80 else f"{name[:60]}... ({len(name)} characters)"
        raise RunNameError(
            f"run name {shown!r}: use letters, digits, '.', '_' and '-', starting with a letter or "
            f"digit, at most {RUN_NAME_MAX} characters (it is one folder under train.runs_uri)"
        )
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
