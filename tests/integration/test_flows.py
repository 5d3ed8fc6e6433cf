"""Prefect flows under Prefect's test harness, data on moto S3, a local Ray cluster: the nightly
registers and promotes a model, commits embeddings and samples as Delta tables with artifacts; a bad candidate
leaves the champion alone and the run says why."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from datetime import date
from uuid import UUID

import pytest

from tests.datasets import write_mnist_sample
from tests.integration.conftest import make_bucket
from vae_core.config import VaeflowConfig
from vae_core.data.importers import ShardWriter
from vae_core.data.objects import read_json
from vae_core.data.packaged import mnist_table
from vae_core.data.storage import join
from vae_core.data.tables import history, read_table
from vae_core.operations.pipeline import PipelineConfig, drift_uri, embeddings_uri, samples_uri
from vae_core.operations.registry import champion_record, list_versions, read_version

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

TRAIN_ROWS, TEST_ROWS, SAMPLES = 2_000, 500, 200


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A temporary Prefect API (SQLite) for this session's flow runs."""
    from prefect.testing.utilities import prefect_test_harness

    for name in ("ray.data", "ray.train", "ray"):  # Ray Data's DEBUG lines flood captured output
        logging.getLogger(name).setLevel(logging.INFO)
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def small_mnist_s3(s3_server: str) -> str:
    """2,000 + 500 MNIST rows as Parquet shards in a fresh bucket."""
    return write_mnist_sample(f"{make_bucket()}/mnist", TRAIN_ROWS, TEST_ROWS)


def configs(data_uri: str, bucket: str, **train) -> tuple[VaeflowConfig, PipelineConfig]:
    config = VaeflowConfig.model_validate(
        {
            "name": "mnist-vae",
            "data": {"uri": data_uri, "vector_column": "image", "image_shape": [1, 28, 28], "scale": 255},
            "model": {"family": "vae", "hidden": [200], "latent_dim": 8},
            "train": {"epochs": 3, "batch_size": 100, "runs_uri": f"{bucket}/runs", **train},
            "compute": {"num_workers": 1, "cpus_per_worker": 1, "data_cpus": 1},
            "embed": {"passthrough": ["label"]},
            "generate": {"rows": SAMPLES},
        }
    )
    pipeline = PipelineConfig(root=f"{bucket}/vaeflow", iwae_k=10, max_eval_rows=200, gate_margin=2.0)
    return config, pipeline


def run_logs(flow_run_id: UUID) -> list[str]:
    """The log lines the Prefect API holds for a flow run and its sub-flow runs, in time order (after
    sending the lines this process still holds: Prefect ships logs in batches every few seconds)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.client.schemas.sorting import LogSort
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()

    async def read() -> list[str]:
        async with get_client() as client:
            children = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])
                )
            )
            ids = [flow_run_id, *(c.id for c in children)]
            found = await client.read_logs(
                LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)), sort=LogSort.TIMESTAMP_ASC
            )
            return [log.message for log in found]

    return asyncio.run(read())


def artifact_keys(flow_run_id: UUID) -> set[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read() -> set[str]:
        async with get_client() as client:
            found = await client.read_artifacts(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            return {a.key for a in found if a.key}

    return asyncio.run(read())


@pytest.fixture(scope="module")
def first_night(prefect_harness, ray_local, small_mnist_s3):
    from flows.nightly import nightly_flow

    bucket = make_bucket()
    config, pipeline = configs(small_mnist_s3, bucket)
    state = nightly_flow(config, pipeline, date(2026, 1, 1), return_state=True)
    return config, pipeline, state


def test_a_nightly_registers_promotes_embeds_generates_and_writes_artifacts(first_night):
    _, pipeline, state = first_night
    assert state.is_completed(), state.message
    result = state.result()
    assert state.message == f"promoted {result.candidate}"
    # Registry: one complete version, the champion pointer on it, report and metrics inside.
    assert list_versions(pipeline.root, "mnist-vae") == [result.candidate]
    assert result.candidate.startswith("20260101-")
    record = champion_record(pipeline.root, "mnist-vae")
    assert (record.seq, record.version, record.previous) == (0, result.candidate, None)
    assert record.night == "2026-01-01" and record.flow_run_id == str(state.state_details.flow_run_id)
    version = read_version(pipeline.root, "mnist-vae", result.candidate)
    assert version.report.test.n == 200 and version.report.heldout_elbo > -400
    assert version.report.to_dict()["training"]["epochs"] == 3  # the nightly's summary, kept
    assert "report/report.html" in version.record["files"]
    assert version.report_uri == result.report_uri
    # Embeddings: every row of both splits once, with ids, labels and the latent mean, one Delta
    # version each whose commit names the night and holds the aggregate-posterior moments.
    day = date(2026, 1, 1)
    for split, rows in (("train", TRAIN_ROWS), ("test", TEST_ROWS)):
        uri = embeddings_uri(pipeline.root, "mnist-vae", split)
        assert result.embeddings[split] == uri
        table = read_table(uri)
        assert table.num_rows == rows and len(set(table["id"].to_pylist())) == rows
        assert {"id", "label", "z_mean"} <= set(table.column_names)
        (version, record), *_ = history(uri)
        assert record.night == "2026-01-01" and record.stats["z_mean"]["count"] == rows
    drift = read_json(join(drift_uri(pipeline.root, "mnist-vae", day), "drift.json"))
    assert drift["model_version"] == result.candidate and drift["stats"]["count"] == TRAIN_ROWS + TEST_ROWS
    assert drift["previous_night"] is None and not drift["alert"]
    # Samples in the training schema (Delta types: uint8 pixels as short).
    samples = read_table(samples_uri(pipeline.root, "mnist-vae"))
    assert samples.num_rows == SAMPLES and "image" in samples.column_names
    # Artifacts on the nightly run: metrics table, report, output locations.
    keys = artifact_keys(state.state_details.flow_run_id)
    assert {"mnist-vae-metrics", "mnist-vae-report", "mnist-vae-outputs"} <= keys
    # A first night embeds every row; nothing is carried over.
    assert result.embedded == {"train": (TRAIN_ROWS, 0), "test": (TEST_ROWS, 0)}


def test_the_epoch_lines_reach_the_flow_run_log_and_a_progress_artifact(first_night):
    """Rank 0's epoch records reach the Prefect run log through the driver (not a worker's stdout),
    one line per epoch, in order, with a progress artifact that ends at 100%."""
    config, _, state = first_night
    lines = run_logs(state.state_details.flow_run_id)
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/3", "2/3", "3/3"], lines
    assert all("val ELBO" in line and "samples/s" in line for line in epochs)
    assert any(line.startswith("1 worker(s), gradients") for line in lines)
    assert f"embeddings (train): {TRAIN_ROWS:,} rows embedded, 0 carried over" in lines
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.tasks import artifact_key

    key = artifact_key(f"{config.name}-{state.result().candidate}", "epochs")

    async def progress() -> list:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
            )

    (artifact,) = asyncio.run(progress())
    assert artifact.type == "progress" and float(artifact.data) == 100.0


def test_an_untrained_candidate_fails_the_gate_and_the_champion_stays(first_night, small_mnist_s3):
    from flows.nightly import nightly_flow

    config, pipeline, _ = first_night
    before = champion_record(pipeline.root, "mnist-vae")
    # lr 1e-9: Adam moves each weight by ~1e-9 per step, so the candidate is the untrained model
    # (held-out ELBO ~-550 nats against ~-200 for the champion).
    bad = config.with_overrides(["train.lr=1e-9", "train.epochs=1"])
    state = nightly_flow(bad, pipeline, date(2026, 1, 2), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert not result.promoted
    assert f"candidate {result.candidate} rejected" in state.message
    assert "nats worse than champion" in state.message and f"champion stays {before.version}" in state.message
    assert champion_record(pipeline.root, "mnist-vae") == before  # no new champion record
    assert list_versions(pipeline.root, "mnist-vae") == sorted([before.version, result.candidate])
    # The night's outputs come from the unchanged champion; its latent drift against the previous
    # night (same model, same corpus) is nil.
    drift = read_json(join(drift_uri(pipeline.root, "mnist-vae", date(2026, 1, 2)), "drift.json"))
    assert drift["model_version"] == before.version and drift["previous_night"] == "2026-01-01"
    assert drift["kl_previous"] == pytest.approx(0.0, abs=1e-6) and not drift["alert"]
    # Same champion, same corpus: the night's jobs were already committed, so no new version.
    samples = samples_uri(pipeline.root, "mnist-vae")
    assert read_table(samples).num_rows == SAMPLES and len(history(samples)) == 1
    assert "mnist-vae-report" in artifact_keys(state.state_details.flow_run_id)


NEW_ROWS = 500


def test_a_night_with_the_same_champion_embeds_only_the_new_shard(first_night, small_mnist_s3):
    """Champion unchanged, one train shard added: only its rows are embedded and appended; the table
    then holds every id once, and the drift record counts the whole corpus."""
    from flows.nightly import nightly_flow

    config, pipeline, _ = first_night
    before = champion_record(pipeline.root, "mnist-vae")
    extra = mnist_table("train").slice(TRAIN_ROWS, NEW_ROWS)  # ids TRAIN_ROWS .. TRAIN_ROWS + 499
    ShardWriter(join(small_mnist_s3, "train", "added"), rows_per_shard=NEW_ROWS).write_all([extra])
    bad = config.with_overrides(["train.lr=1e-9", "train.epochs=1"])  # rejected: the champion stays
    state = nightly_flow(bad, pipeline, date(2026, 1, 3), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert not result.promoted and champion_record(pipeline.root, "mnist-vae") == before
    assert result.embedded == {"train": (NEW_ROWS, TRAIN_ROWS), "test": (0, TEST_ROWS)}
    uri = embeddings_uri(pipeline.root, "mnist-vae", "train")
    table = read_table(uri)
    assert table.num_rows == TRAIN_ROWS + NEW_ROWS == len(set(table["id"].to_pylist()))
    (_, record), *_ = history(uri)
    assert record.mode == "append" and record.rows == NEW_ROWS
    assert record.stats["rows_embedded"] == NEW_ROWS and record.stats["rows_carried"] == TRAIN_ROWS
    drift = read_json(join(drift_uri(pipeline.root, "mnist-vae", date(2026, 1, 3)), "drift.json"))
    assert drift["stats"]["count"] == TRAIN_ROWS + NEW_ROWS + TEST_ROWS
    lines = run_logs(state.state_details.flow_run_id)
    assert f"embeddings (train): {NEW_ROWS:,} rows embedded, {TRAIN_ROWS:,} carried over" in lines


def test_a_warm_started_night_matches_the_champion_in_a_third_of_its_epochs(first_night):
    """train.init_from=champion: one epoch from the champion's weights (it trained three) reaches its
    held-out ELBO within 1 nat; promoted, the new champion re-embeds the whole corpus."""
    from flows.nightly import nightly_flow

    config, pipeline, _ = first_night
    champion = champion_record(pipeline.root, "mnist-vae")
    was = read_version(pipeline.root, "mnist-vae", champion.version).report
    warm = config.with_overrides(["train.init_from=champion", "train.epochs=1"])
    state = nightly_flow(warm, pipeline, date(2026, 1, 4), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    now = read_version(pipeline.root, "mnist-vae", result.candidate).report
    assert 3 * now.to_dict()["training"]["epochs"] <= was.to_dict()["training"]["epochs"] == 3
    assert result.elbo >= was.heldout_elbo - 1.0, (result.elbo, was.heldout_elbo)
    lines = run_logs(state.state_details.flow_run_id)
    assert f"warm start from champion {champion.version}" in lines
    assert any(line.startswith("1 worker(s)") and "warm-started val ELBO" in line for line in lines)
    assert result.promoted, state.message
    assert result.embedded == {"train": (TRAIN_ROWS + NEW_ROWS, 0), "test": (TEST_ROWS, 0)}
