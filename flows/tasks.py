"""Prefect tasks: one unit of side effect each (a Ray job, a registry write, an artifact).

Every side effect here is idempotent, so retries are safe where they are set: a retried training
task resumes the same Ray Train run from its latest checkpoint; registry writes refuse to change a
published version and a repeated promotion is a no-op; embed and generate commit exactly once
(one Delta commit each; the same run key is skipped). Tasks return small records, never models,
and never cache.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from vae_core.config import VaeflowConfig
from vae_core.data.dataset import list_shards
from vae_core.data.storage import join
from vae_core.data.tables import Committed
from vae_core.errors import ChampionConflict, DataError, ObjectStoreBusy, UserError
from vae_core.operations import registry, tracking
from vae_core.operations.drift import (
    DriftRecord,
    EmbeddedSplit,
    LatentStats,
    assess,
    pool,
    previous_record,
    write_drift_record,
)
from vae_core.reports.report import ReportResult, write_report
from vae_core.training.model_report import ModelReport
from vae_core.training.records import EpochRecord, Record


def _log(msg: str) -> None:
    """The flows' Progress (vae_core.progress): each line goes to the Prefect run log."""
    get_run_logger().info(msg)


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


# ---- data and training ------------------------------------------------------------------------


def _retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry I/O failures, a store shedding load included, not a user's mistake (bad data, config,
    ...): that one says what to fix, and a retry would not."""
    try:
        state.result()
    except ObjectStoreBusy:
        return True
    except UserError:
        return False
    except Exception:
        return True
    return True


@task(
    name="ensure-dataset",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=_retry_unless_user_error,
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
    from vae_core.data import importers

    _log(f"{config.data.uri} has no training shards: importing {bootstrap} if that location is empty")
    importers.import_bundled(bootstrap, config.data.uri, config.data.storage_options, progress=_log)
    return config.data.uri


@dataclass
class TrainSummary:
    run_name: str
    checkpoint_uri: str  # latest
    best_checkpoint_uri: str  # best by validation ELBO
    history: list[EpochRecord]
    val_elbo_init: float


class EpochProgress:
    """A Prefect progress artifact (`<run name>-epochs`, 0-100 %) that moves with each epoch Ray Train
    reports; the epoch lines themselves reach the run log through the task's Progress."""

    def __init__(self, run_name: str, epochs: int) -> None:
        self.epochs = epochs
        self.id = create_progress_artifact(
            0.0, key=artifact_key(run_name, "epochs"), description=f"Ray Train run {run_name}: epochs done"
        )

    def __call__(self, record: Record) -> None:
        if isinstance(record, EpochRecord):
            val = f", val ELBO {record.val_elbo:.2f}" if record.val_elbo is not None else ""
            done = f"epoch {record.epoch}/{self.epochs}{val}"
            update_progress_artifact(self.id, 100.0 * record.epoch / self.epochs, description=done)


@task(name="train-model", retries=1, retry_delay_seconds=10, cache_policy=NO_CACHE)
def train_model(config: VaeflowConfig, run_name: str) -> TrainSummary:
    """Ray Train. A retry relaunches the same run name and resumes from its latest checkpoint: the
    task asks for resuming explicitly, and a stored run with other data/model/train settings is
    still refused (RunNameError). Each epoch's line reaches the run log as it finishes, and a progress
    artifact follows the epochs."""
    from vae_core.distributed.trainer import train_on_ray

    on_record = EpochProgress(run_name, config.train.epochs)
    result = train_on_ray(config, run_name=run_name, progress=_log, resume=True, on_record=on_record)
    return TrainSummary(
        run_name,
        result.checkpoint_uri,
        result.best_checkpoint_uri,
        result.history,
        float(result.checkpoint.meta.val_elbo_init),
    )


@task(name="write-report", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def write_model_report(
    model_uri: str,
    out_uri: str,
    data_uri: str | None,
    iwae_k: int,
    max_eval_rows: int | None,
    storage_options: dict[str, Any] | None = None,
) -> ReportResult:
    """Evaluate a model and write report.html + metrics.json under out_uri (overwritten on retry); with
    MLFLOW_TRACKING_URI set, log both to the MLflow run that trained the model."""
    result = write_report(
        model_uri,
        out_uri,
        data_uri,
        iwae_k=iwae_k,
        max_eval_rows=max_eval_rows,
        progress=_log,
        storage_options=storage_options,
    )
    if run_id := tracking.log_report(model_uri, out_uri, storage_options):
        _log(f"report logged to MLflow run {run_id}")
    return result


# ---- the registry -----------------------------------------------------------------------------


@task(name="register-model", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def register_model(
    root: str,
    name: str,
    version: str,
    checkpoint_uri: str,
    report: ModelReport,
    report_uri: str | None,
    extra: dict[str, Any],
    storage_options: dict[str, Any] | None = None,
) -> registry.ModelVersion:
    v = registry.publish_version(
        root, name, version, checkpoint_uri, report, report_uri, extra, storage_options
    )
    _log(f"registered {name} {version} at {v.uri}")
    return v


@task(name="read-champion", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def read_champion(
    root: str, name: str, storage_options: dict[str, Any] | None = None
) -> registry.ChampionRecord | None:
    """The champion record as of now (None before the first promotion): a nightly reads it once, at
    its start, gates against it, promotes over it and serves it."""
    record = registry.champion_record(root, name, storage_options)
    _log(
        f"champion of {name}: {record.version} (record {record.seq})" if record else f"{name} has no champion"
    )
    return record


@dataclass
class Promotion:
    """One gate decision against one champion record, and what became of the candidate."""

    passed: bool  # the gate's verdict
    promoted: bool  # the candidate is the champion now
    reason: str  # the gate's reason; for a lost compare-and-swap, who was promoted instead
    compared_with: str | None  # the champion the candidate was gated against (None: there was none)
    champion: str | None  # the champion after the decision
    conflict: bool = False  # passed the gate, but another run promoted a different version first
    champion_report: ModelReport | None = field(default=None, repr=False)


@task(name="gate-and-promote", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def gate_and_promote(
    root: str,
    name: str,
    candidate: registry.ModelVersion,
    expected: registry.ChampionRecord | None,
    margin: float,
    night: str,
    flow_run_id: str,
    storage_options: dict[str, Any] | None = None,
) -> Promotion:
    """Gate the candidate against the champion record `expected` (read at the night's start) and,
    when it passes, promote it by compare-and-swap on that same record.

    Decision and swap concern one version: if another run promoted meanwhile, the candidate is not
    promoted (conflict=True) rather than replacing a champion it was never compared with. A retry
    re-reads the same immutable metrics and repeats the same swap, a no-op once it has landed.
    """
    log = get_run_logger()
    result = registry.gate_against(candidate.report, expected, margin)
    champion_report = result.champion_report
    (log.info if result.passed else log.warning)(
        f"gate {'passed' if result.passed else 'FAILED'}: {result.reason}"
    )
    before = expected.version if expected else None
    if not result.passed:
        return Promotion(False, False, result.reason, before, before, champion_report=champion_report)
    if expected is not None and expected.night == night and expected.flow_run_id != flow_run_id:
        # One promotion per night: a second run of the same night (a duplicate trigger queued
        # behind the first) serves the night's champion instead of moving it again.
        reason = (
            f"night {night} already promoted {expected.version} (flow run {expected.flow_run_id}); "
            "the champion moves at most once a night"
        )
        log.warning(reason)
        return Promotion(True, False, reason, before, before, champion_report=champion_report)
    try:
        record = registry.promote(
            root,
            name,
            candidate.version,
            result.reason,
            expected_seq=expected.seq if expected else None,
            storage_options=storage_options,
            night=night,
            flow_run_id=flow_run_id,
        )
    except ChampionConflict as e:
        log.error(str(e))
        return Promotion(
            True,
            False,
            str(e),
            before,
            e.current.version,
            conflict=True,
            champion_report=champion_report,
        )
    _log(f"champion of {name} is now {record.version} (record {record.seq}, was {record.previous})")
    return Promotion(True, True, result.reason, before, record.version, champion_report=champion_report)


@task(name="resolve-model", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def resolve_model(
    root: str, name: str, version: str | None, storage_options: dict[str, Any] | None = None
) -> registry.ModelVersion:
    """The version asked for, else the champion."""
    return registry.resolve(root, name, version, storage_options)


# ---- Ray Data jobs ----------------------------------------------------------------------------


@dataclass
class Output:
    """A committed batch-job output: the Delta table and the version holding tonight's rows."""

    uri: str  # the Delta table
    version: int
    rows: int  # the rows this version added (embeddings: all the table holds after it, see `carried`)
    files: int  # files this run committed (0 when skipped)
    skipped: bool
    stats: dict[str, Any] = field(default_factory=dict, repr=False)
    embedded: int = 0  # rows this run processed (0 when skipped)
    carried: int = 0  # rows already in the table that it kept (incremental embeds, earlier attempts)


def _output(committed: Committed) -> Output:
    stats = dict(committed.record.stats)
    embedded = 0 if committed.skipped else stats.get("rows_embedded", committed.rows)
    held = stats["z_mean"]["count"] if "z_mean" in stats else committed.rows  # rows in the table now
    return Output(
        committed.table_uri,
        committed.version,
        held,
        len(committed.files),
        committed.skipped,
        stats,
        embedded=embedded,
        carried=held - embedded,
    )


@task(name="embed-corpus", retries=1, retry_delay_seconds=10, cache_policy=NO_CACHE)
def embed_split(model_uri: str, input_uri: str, output_uri: str, config: VaeflowConfig, night: str) -> Output:
    """Ray Data embed job with `config.embed` and `config.compute`, one Delta commit, incremental: with
    the same model only the shards the table does not hold yet are embedded and appended; a new model
    re-embeds everything as a new version replacing the table's rows. A retry takes over the files a
    failed attempt finished."""
    from vae_core.distributed.embed import embed_corpus

    job = config.embed.model_copy(update={"incremental": True})
    return _nightly_job(embed_corpus, config, night, model_uri, input_uri, output_uri, job)


@task(name="generate-rows", retries=1, retry_delay_seconds=10, cache_policy=NO_CACHE)
def generate_samples(model_uri: str, output_uri: str, config: VaeflowConfig, night: str) -> Output:
    """Ray Data generate job with `config.generate` and `config.compute`, one Delta commit (a new
    version replacing the table's rows)."""
    from vae_core.distributed.generate import generate_rows

    return _nightly_job(generate_rows, config, night, model_uri, output_uri, config.generate)


def _nightly_job(job: Callable[..., Committed], config: VaeflowConfig, night: str, *where: Any) -> Output:
    """A batch job on `where` (its URIs and its config section) as a night runs it: the config's
    compute and storage options, the night's rows replacing the table's (mode overwrite)."""
    committed = job(
        *where,
        config.compute,
        mode="overwrite",
        night=night,
        storage_options=config.data.storage_options,
        progress=_log,
    )
    return _output(committed)


@task(name="maintain-table", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def maintain_table(uri: str, keep_nights: int, vacuum_every: int, storage_options: dict | None) -> None:
    """data/maintenance.py on a table the night committed to: compaction, a checkpoint when due, and
    once `vacuum_every` nights followed the last one, VACUUM keeping the last `keep_nights` nights'
    versions (a rerun does nothing)."""
    from vae_core.data.maintenance import maintain

    done = maintain(uri, storage_options, keep_nights=keep_nights, vacuum_every=vacuum_every)
    _log(f"maintained {uri}: " + "; ".join(done.lines()))


@task(name="record-drift", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def record_drift(
    night_uri: str,
    nights_uri: str,
    run_date: date,
    model: registry.ModelVersion,
    outputs: dict[str, Output],
    threshold: float,
    storage_options: dict[str, Any] | None = None,
) -> DriftRecord:
    """Pool tonight's aggregate-posterior moments over the splits, compare them with the previous
    night's record and N(0, I), and write <night_uri>/drift.json (overwritten on retry)."""
    current = pool([LatentStats.from_dict(o.stats["z_mean"]) for o in outputs.values()])
    previous = previous_record(nights_uri, run_date, storage_options)
    splits = {split: EmbeddedSplit(o.uri, o.version) for split, o in outputs.items()}
    record = assess(run_date, model.version, model.uri, splits, current, previous, threshold)
    write_drift_record(night_uri, record, storage_options)
    verdict = record.verdict
    message = f"latent drift vs {record.previous_night or 'nothing'}: {'; '.join(verdict.reasons)}"
    log = get_run_logger()
    (log.warning if verdict.alert else log.info)(message)
    return record


# ---- artifacts --------------------------------------------------------------------------------


@task(name="markdown-artifact", retries=1, cache_policy=NO_CACHE)
def markdown_artifact(key: str, markdown: str, description: str) -> None:
    create_markdown_artifact(markdown, key=artifact_key(key), description=description)


@task(name="table-artifact", retries=1, cache_policy=NO_CACHE)
def table_artifact(key: str, rows: list[dict[str, Any]], description: str) -> None:
    create_table_artifact(rows, key=artifact_key(key), description=description)
