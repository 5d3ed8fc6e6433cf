"""Model registry in object storage: immutable versions and an atomically updated champion pointer.

Layout (any URI):
    <root>/models/<name>/<version>/model.safetensors   weights (copied from the training checkpoint)
    <root>/models/<name>/<version>/config.json         the VaeflowConfig the model was trained with
    <root>/models/<name>/<version>/meta.json           data shape, epoch, training history
    <root>/models/<name>/<version>/tabular.json        the fitted tabular transformer (tabular data only)
    <root>/models/<name>/<version>/metrics.json        evaluation metrics (what the gate reads)
    <root>/models/<name>/<version>/report/...          the evaluation report (report.html, ...)
    <root>/models/<name>/<version>/version.json        written last: marks a complete version
    <root>/models/<name>/champion.json                 {"version", "uri", ...}: one atomic PUT

A version directory is a loadable checkpoint (`vae_core.checkpoint.load_checkpoint(version.uri)`).
The champion changes only through `promote`, after `gate` has passed the candidate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from vae_core.checkpoint import CONFIG_FILE, META_FILE, MODEL_FILE, TABULAR_FILE
from vae_core.publish import atomic_write_json, read_json
from vae_core.storage import filesystem, join

MODELS_DIR = "models"
VERSION_FILE, CHAMPION_FILE, METRICS_FILE = "version.json", "champion.json", "metrics.json"
REPORT_DIR, REPORT_HTML = "report", "report.html"
# Optimizer state stays with the training run: a registered model is for inference and evaluation.
MODEL_FILES = (MODEL_FILE, CONFIG_FILE, TABULAR_FILE, META_FILE)
GATE_METRIC = ("test", "elbo")  # held-out ELBO in nats per row; higher is better


class RegistryError(RuntimeError):
    """A version is missing, incomplete, or would be overwritten by a different model."""


@dataclass
class ModelVersion:
    name: str
    version: str
    uri: str  # the version directory: a loadable checkpoint
    metrics: dict[str, Any]
    record: dict[str, Any]  # the whole version.json

    @property
    def report_uri(self) -> str | None:
        return self.record.get("report_uri")


@dataclass
class GateResult:
    passed: bool
    reason: str


def model_uri(root: str, name: str) -> str:
    return join(root, MODELS_DIR, name)


def version_uri(root: str, name: str, version: str) -> str:
    return join(root, MODELS_DIR, name, version)


def new_version(run_date: date, run_id: str) -> str:
    """A sortable, unique version id: the run date and a short run id, e.g. 20261124-3f2a9c1e."""
    return f"{run_date:%Y%m%d}-{run_id.replace('-', '')[:8]}"


def _copy(src: str, dst: str, storage_options: dict | None) -> None:
    sfs, spath = filesystem(src, storage_options)
    dfs, dpath = filesystem(dst, storage_options)
    data = sfs.cat_file(spath)
    parent = dpath.rsplit("/", 1)[0]
    dfs.makedirs(parent, exist_ok=True)
    dfs.pipe_file(dpath, data)


def _files_under(uri: str, storage_options: dict | None) -> list[str]:
    """Paths relative to `uri` of every file below it."""
    fs, root = filesystem(uri, storage_options)
    fs.invalidate_cache(root)
    if not fs.exists(root):
        raise RegistryError(f"{uri}: does not exist")
    base = root.rstrip("/")
    return sorted(p[len(base) + 1 :] for p in fs.find(root))


def publish_version(
    root: str,
    name: str,
    version: str,
    checkpoint_uri: str,
    metrics: dict[str, Any],
    report_uri: str | None = None,
    extra: dict[str, Any] | None = None,
    storage_options: dict | None = None,
) -> ModelVersion:
    """Copy a checkpoint (weights, config, meta, tabular transformer), its report folder and metrics
    into `<root>/models/<name>/<version>/`, then write version.json as the completeness marker.

    Idempotent: publishing the same checkpoint as the same version again returns the existing one
    (a retried task); a different checkpoint under an existing version is an error.
    """
    uri = version_uri(root, name, version)
    existing = read_json(join(uri, VERSION_FILE), storage_options)
    if existing is not None:
        if existing.get("source_checkpoint") != checkpoint_uri:
            raise RegistryError(
                f"{uri}: version {version!r} already holds {existing.get('source_checkpoint')}, "
                f"not {checkpoint_uri}; versions are immutable"
            )
        return read_version(root, name, version, storage_options)
    present = set(_files_under(checkpoint_uri, storage_options))
    for required in (MODEL_FILE, CONFIG_FILE, META_FILE):
        if required not in present:
            raise RegistryError(f"{checkpoint_uri}: incomplete checkpoint, {required} is missing")
    files = [f for f in MODEL_FILES if f in present]
    for f in files:
        _copy(join(checkpoint_uri, f), join(uri, f), storage_options)
    report_files = []
    if report_uri is not None:
        for rel in _files_under(report_uri, storage_options):
            _copy(join(report_uri, rel), join(uri, REPORT_DIR, rel), storage_options)
            report_files.append(f"{REPORT_DIR}/{rel}")
    atomic_write_json(join(uri, METRICS_FILE), metrics, storage_options)
    record = {
        "name": name,
        "version": version,
        "uri": uri,
        "source_checkpoint": checkpoint_uri,
        "files": [*files, METRICS_FILE, *report_files],
        "report_uri": (
            join(uri, REPORT_DIR, REPORT_HTML) if f"{REPORT_DIR}/{REPORT_HTML}" in report_files else None
        ),
        "created_at": datetime.now(UTC).isoformat(),
        **(extra or {}),
    }
    atomic_write_json(join(uri, VERSION_FILE), record, storage_options)
    return ModelVersion(name, version, uri, metrics, record)


def read_version(root: str, name: str, version: str, storage_options: dict | None = None) -> ModelVersion:
    """A complete registered version; an unknown or half-written one is a RegistryError."""
    uri = version_uri(root, name, version)
    record = read_json(join(uri, VERSION_FILE), storage_options)
    if record is None:
        raise RegistryError(f"{uri}: no such model version (or not completely published)")
    metrics = read_json(join(uri, METRICS_FILE), storage_options) or {}
    return ModelVersion(name, version, uri, metrics, record)


def list_versions(root: str, name: str, storage_options: dict | None = None) -> list[str]:
    """Complete versions of model `name`, oldest first (version ids sort by date)."""
    fs, path = filesystem(model_uri(root, name), storage_options)
    fs.invalidate_cache(path)
    if not fs.exists(path):
        return []
    out = []
    for p in fs.ls(path, detail=False):
        version = p.rstrip("/").rsplit("/", 1)[-1]
        if fs.exists(f"{p.rstrip('/')}/{VERSION_FILE}"):
            out.append(version)
    return sorted(out)


def champion(root: str, name: str, storage_options: dict | None = None) -> ModelVersion | None:
    """The current champion of model `name`, or None before the first promotion."""
    pointer = read_json(join(model_uri(root, name), CHAMPION_FILE), storage_options)
    if pointer is None:
        return None
    return read_version(root, name, pointer["version"], storage_options)


def champion_record(root: str, name: str, storage_options: dict | None = None) -> dict[str, Any] | None:
    """The champion pointer itself (version, uri, promoted_at, reason, previous)."""
    return read_json(join(model_uri(root, name), CHAMPION_FILE), storage_options)


def promote(
    root: str, name: str, version: str, reason: str, storage_options: dict | None = None
) -> dict[str, Any]:
    """Point `champion.json` at a complete version with one atomic write; returns the pointer."""
    target = read_version(root, name, version, storage_options)  # refuses incomplete versions
    previous = champion_record(root, name, storage_options)
    if previous and previous["version"] == version:
        return previous  # a retried promotion: already done
    pointer = {
        "name": name,
        "version": version,
        "uri": target.uri,
        "reason": reason,
        "promoted_at": datetime.now(UTC).isoformat(),
        "previous": previous["version"] if previous else None,
    }
    atomic_write_json(join(model_uri(root, name), CHAMPION_FILE), pointer, storage_options)
    return pointer


def resolve(
    root: str, name: str, version: str | None = None, storage_options: dict | None = None
) -> ModelVersion:
    """The version asked for, else the champion; a RegistryError when there is neither."""
    if version is not None:
        return read_version(root, name, version, storage_options)
    current = champion(root, name, storage_options)
    if current is None:
        raise RegistryError(f"{model_uri(root, name)}: no champion yet; no model has passed the gate")
    return current


# ---- the promotion gate -----------------------------------------------------------------------


def _non_finite(metrics: Any, prefix: str = "") -> list[str]:
    """Dotted paths of NaN/inf numbers anywhere in a metrics tree."""
    if isinstance(metrics, dict):
        return [p for k, v in metrics.items() for p in _non_finite(v, f"{prefix}{k}.")]
    if isinstance(metrics, list | tuple):
        return [p for i, v in enumerate(metrics) for p in _non_finite(v, f"{prefix}{i}.")]
    if isinstance(metrics, float) and not math.isfinite(metrics):
        return [f"{prefix.rstrip('.')}={metrics}"]
    return []


def _gate_value(metrics: dict[str, Any]) -> float | None:
    section, key = GATE_METRIC
    value = metrics.get(section, {}).get(key)
    return None if value is None else float(value)


def gate(
    candidate: dict[str, Any],
    champion_metrics: dict[str, Any] | None,
    margin: float,
    champion_version: str | None = None,
) -> GateResult:
    """Pass a candidate when its metrics are finite and its held-out ELBO (nats per row, higher is
    better) is not worse than the champion's by more than `margin` nats."""
    bad = _non_finite(candidate)
    value = _gate_value(candidate)
    if value is None:
        return GateResult(False, "candidate has no held-out ELBO (metrics['test']['elbo'])")
    if bad:
        return GateResult(False, f"candidate metrics are not finite: {', '.join(bad[:5])}")
    if champion_metrics is None:
        return GateResult(True, f"no champion yet; candidate held-out ELBO {value:.2f} nats is finite")
    best = _gate_value(champion_metrics)
    label = f"champion {champion_version}" if champion_version else "champion"
    if best is None or not math.isfinite(best):
        return GateResult(True, f"{label} has no finite held-out ELBO; candidate {value:.2f} nats")
    if value < best - margin:
        return GateResult(
            False,
            f"candidate held-out ELBO {value:.2f} nats is {best - value:.2f} nats worse than {label} "
            f"({best:.2f}); the allowed margin is {margin:g}",
        )
    return GateResult(
        True, f"candidate held-out ELBO {value:.2f} nats vs {label} {best:.2f}: within the margin {margin:g}"
    )
