"""Pipeline settings: the `make run` default, overrides for `vaeflow run`, the nightly's schedule and
concurrency limit as `vaeflow serve` reads them from deploy/prefect.yaml."""

from datetime import date

import pytest
from pydantic import ValidationError

from vae_core.pipeline import PipelineConfig, embeddings_uri, local_defaults, samples_uri


def test_local_default_is_mnist_in_the_data_folder(tmp_path):
    config, pipeline = local_defaults(tmp_path / "data")
    root = str((tmp_path / "data").resolve())
    assert pipeline.root == root and pipeline.bootstrap == "mnist"
    assert config.data.uri == f"{root}/datasets/mnist" and config.train.runs_uri == f"{root}/runs"
    assert config.compute.num_workers == 1 and config.train.epochs == 3
    assert embeddings_uri(root, "m", date(2026, 1, 2), "test") == f"{root}/embeddings/m/2026-01-02/test"
    assert samples_uri(root, "m", date(2026, 1, 2)) == f"{root}/samples/m/2026-01-02"


def test_run_overrides_split_between_config_and_pipeline(tmp_path):
    from flows.local import build

    config, pipeline = build(
        str(tmp_path), 1, None, ["train.lr=0.01", "pipeline.sample_rows=5", 'pipeline.embed_splits=["test"]']
    )
    assert config.train.epochs == 1 and config.train.lr == 0.01
    assert pipeline.sample_rows == 5 and pipeline.embed_splits == ["test"]
    with pytest.raises(ValidationError, match="gate_margn"):
        build(str(tmp_path), None, None, ["pipeline.gate_margn=1"])
    with pytest.raises(ValidationError):
        PipelineConfig(root="x", drift_threshold=0)


def test_only_the_pure_local_default_bootstraps(tmp_path):
    from flows.local import build

    _, pipeline = build(str(tmp_path), None, None, [])
    assert pipeline.bootstrap == "mnist"  # `vaeflow run`: MNIST into its own folder on first use
    config_file = tmp_path / "config.json"
    config_file.write_text('{"name": "mine", "data": {"uri": "s3://bucket/data"}}')
    config, pipeline = build(str(tmp_path), None, str(config_file), [])
    assert config.data.uri == "s3://bucket/data" and pipeline.bootstrap is None
    _, pipeline = build(str(tmp_path), None, str(config_file), ["pipeline.bootstrap=adult"])
    assert pipeline.bootstrap == "adult"  # only when asked for explicitly


def test_serve_takes_schedule_and_concurrency_from_prefect_yaml():
    from flows.serve import PREFECT_FILE, concurrency, nightly_spec, schedules

    spec = nightly_spec(PREFECT_FILE)
    assert spec["entrypoint"] == "flows/nightly.py:nightly"
    [cron] = schedules(spec)
    assert cron.cron == "30 2 * * *" and cron.timezone == "Europe/Berlin"
    limit = concurrency(spec)
    assert limit.limit == 1 and limit.collision_strategy.value == "ENQUEUE"


def test_every_prefect_yaml_entrypoint_is_a_flow():
    import importlib

    import yaml
    from prefect import Flow

    from flows.serve import PREFECT_FILE

    names = {}
    for d in yaml.safe_load(PREFECT_FILE.read_text())["deployments"]:
        path, func = d["entrypoint"].split(":")
        obj = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), func)
        assert isinstance(obj, Flow), d["entrypoint"]
        names[obj.name] = d["name"]
    assert names == {
        "vae-nightly": "nightly", "vae-train": "manual", "vae-evaluate": "manual",
        "vae-embed": "manual", "vae-generate": "manual",
    }  # fmt: skip
