"""Prefect tasks: one unit of side effect each (a Ray job, a registry write, an artifact).

Every side effect here is idempotent, so retries are safe where they are set: a retried training
task resumes the same Ray Train run from its latest checkpoint; registry writes refuse to change a
published version and a repeated promotion is a no-op; embed and generate publish exactly once
(the same run key is skipped). Tasks return small records, never models, and never cache.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from vae_core import registry
from vae_core.config import VaeflowConfig
from vae_core.dataset import DataError, list_shards
from vae_core.drift import DRIFT_FILE, LatentStats, compare, pool, previous_record
from vae_core.publish import atomic_write_json
from vae_core.storage import join


def _log(msg: str) -> None:
    get_run_logger().info(msg)


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


# ---- data and training ------------------------------------------------------------------------


def _retry_unless_data_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry I/O failures, not a DataError: that one says what to fix, and a retry would not."""
    try:
        state.result()
    except DataError:
        return False
    except Exception:
        return True
    return True


@task(
    name="ensure-dataset",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=_retry_unless_data_error,
    cache_policy=NO_CACHE,
)
def ensure_dataset(config: VaeflowConfig, bootstrap: str | None) -> str:
    """Check that data.uri has train shards; without any, import the bundled dataset `bootstrap`, but
    only into a location that does not exist or holds no object: anything else is a DataError naming
    data.uri and what is there, and nothing is written or removed.

    Safe to retry: an import that fails removes the shards it wrote.
    """
    try:
        list_shards(join(config.data.uri, "train"), config.data.storage_options)
        return config.data.uri
    except DataError:
        if bootstrap is None:
            raise
    from vae_core import importers

    _log(f"{config.data.uri} has no training shards: importing {bootstrap} if that location is empty")
    importers.import_bundled(bootstrap, config.data.uri, config.data.storage_options, progress=_log)
    return config.data.uri


@dataclass
class TrainSummary:
    run_name: str
    checkpoint_uri: str  # latest
    best_checkpoint_uri: str  # best by validation ELBO
    history: list[dict[str, Any]]
    val_elbo_init: float


@task(name="train-model", retries=1, retry_delay_seconds=10, cache_policy=NO_CACHE)
def train_model(config: VaeflowConfig, run_name: str) -> TrainSummary:
    """Ray Train. A retry relaunches the same run name and resumes from its latest checkpoint."""
    from vae_core.distributed.trainer import train

    result = train(config, run_name=run_name, progress=_log)
    return TrainSummary(
        run_name,
        result.checkpoint_uri,
        result.best_checkpoint_uri,
        result.history,
        float(result.checkpoint.meta["val_elbo_init"]),
    )


@task(name="write-report", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def write_report(
    model_uri: str, out_uri: str, data_uri: str | None, iwae_k: int, max_eval_rows: int | None
) -> dict[str, Any]:
    """Evaluate a model and write report.html + metrics.json under out_uri (overwritten on retry)."""
    from vae_core.report import write_report as _write_report

    result = _write_report(
        model_uri, out_uri, data_uri, iwae_k=iwae_k, max_eval_rows=max_eval_rows, progress=_log
    )
    return {"html_uri": result.html_uri, "metrics_uri": result.metrics_uri, "metrics": result.metrics}


# ---- the registry -----------------------------------------------------------------------------


@task(name="register-model", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def register_model(
    root: str,
    name: str,
    version: str,
    checkpoint_uri: str,
    metrics: dict[str, Any],
    report_uri: str | None,
    extra: dict[str, Any],
) -> registry.ModelVersion:
    v = registry.publish_version(root, name, version, checkpoint_uri, metrics, report_uri, extra)
    _log(f"registered {name} {version} at {v.uri}")
    return v


@dataclass
class GateDecision:
    passed: bool
    reason: str
    champion_version: str | None  # the champion the candidate was compared with
    champion_metrics: dict[str, Any] | None = field(default=None, repr=False)


@task(name="gate-candidate", cache_policy=NO_CACHE)
def gate_candidate(root: str, name: str, candidate: registry.ModelVersion, margin: float) -> GateDecision:
    """Compare the candidate with the current champion (a read and a decision: nothing to retry)."""
    current = registry.champion(root, name)
    result = registry.gate(
        candidate.metrics,
        current.metrics if current else None,
        margin,
        champion_version=current.version if current else None,
    )
    level = "info" if result.passed else "warning"
    getattr(get_run_logger(), level)(f"gate {'passed' if result.passed else 'FAILED'}: {result.reason}")
    if current is None:
        return GateDecision(result.passed, result.reason, None, None)
    return GateDecision(result.passed, result.reason, current.version, current.metrics)


@task(name="promote-model", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def promote_model(root: str, name: str, version: str, reason: str) -> dict[str, Any]:
    """One atomic write of champion.json; a retry after success changes nothing."""
    pointer = registry.promote(root, name, version, reason)
    _log(f"champion of {name} is now {version} (was {pointer['previous']})")
    return pointer


@task(name="resolve-model", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def resolve_model(root: str, name: str, version: str | None) -> registry.ModelVersion:
    """The version asked for, else the champion."""
    return registry.resolve(root, name, version)


# ---- Ray Data jobs ----------------------------------------------------------------------------


@dataclass
class Output:
    uri: str
    manifest_uri: str
    rows: int
    files: int
    skipped: bool
    stats: dict[str, Any] = field(default_factory=dict, repr=False)


def _output(published: Any) -> Output:
    return Output(
        published.output_uri,
        published.manifest_uri,
        published.rows,
        len(published.files),
        published.skipped,
        dict(published.manifest.stats),
    )


@task(name="embed-corpus", retries=1, retry_delay_seconds=10, cache_policy=NO_CACHE)
def embed_split(
    model_uri: str,
    input_uri: str,
    output_uri: str,
    config: VaeflowConfig,
    passthrough: list[str],
    with_logvar: bool,
    overwrite: bool,
) -> Output:
    """Ray Data embed job, published exactly once: a retry or rerun of the same run key is skipped."""
    from vae_core.distributed.batch import embed_corpus

    published = embed_corpus(
        model_uri,
        input_uri,
        output_uri,
        with_logvar=with_logvar,
        passthrough=tuple(passthrough),
        num_workers=config.compute.num_workers,
        cpus_per_worker=config.compute.cpus_per_worker,
        use_gpu=config.compute.use_gpu,
        overwrite=overwrite,
        progress=_log,
    )
    return _output(published)


@task(name="generate-rows", retries=1, retry_delay_seconds=10, cache_policy=NO_CACHE)
def generate_samples(
    model_uri: str, rows: int, output_uri: str, config: VaeflowConfig, seed: int, overwrite: bool
) -> Output:
    """Ray Data generate job, published exactly once."""
    from vae_core.distributed.batch import generate_rows

    published = generate_rows(
        model_uri,
        rows,
        output_uri,
        seed=seed,
        num_workers=config.compute.num_workers,
        cpus_per_worker=config.compute.cpus_per_worker,
        use_gpu=config.compute.use_gpu,
        overwrite=overwrite,
        progress=_log,
    )
    return _output(published)


@task(name="record-drift", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def record_drift(
    night_uri: str,
    nights_uri: str,
    run_date: Any,
    model: registry.ModelVersion,
    outputs: dict[str, Output],
    threshold: float,
) -> dict[str, Any]:
    """Pool tonight's aggregate-posterior moments over the splits, compare them with the previous
    night's and N(0, I), and write drift.json next to the embeddings (overwritten on retry)."""
    current = pool([LatentStats.from_dict(o.stats["z_mean"]) for o in outputs.values()])
    previous = previous_record(nights_uri, run_date)
    prev_stats = LatentStats.from_dict(previous[1]["stats"]) if previous else None
    same_model = previous is not None and previous[1].get("model_version") == model.version
    result = compare(current, prev_stats, threshold=threshold, same_model=same_model)
    record = {
        "night": run_date.isoformat(),
        "model_version": model.version,
        "model_uri": model.uri,
        "splits": {split: o.uri for split, o in outputs.items()},
        "stats": current.to_dict(),
        "previous_night": previous[0] if previous else None,
        "previous_model_version": previous[1].get("model_version") if previous else None,
        **result.to_dict(),
    }
    atomic_write_json(join(night_uri, DRIFT_FILE), record)
    log = get_run_logger()
    message = f"latent drift vs {record['previous_night'] or 'nothing'}: {'; '.join(result.reasons)}"
    (log.warning if result.alert else log.info)(message)
    return record


# ---- artifacts --------------------------------------------------------------------------------


@task(name="markdown-artifact", retries=1, cache_policy=NO_CACHE)
def markdown_artifact(key: str, markdown: str, description: str) -> None:
    create_markdown_artifact(markdown, key=artifact_key(key), description=description)


@task(name="table-artifact", retries=1, cache_policy=NO_CACHE)
def table_artifact(key: str, rows: list[dict[str, Any]], description: str) -> None:
    create_table_artifact(rows, key=artifact_key(key), description=description)
