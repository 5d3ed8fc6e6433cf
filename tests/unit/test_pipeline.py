"""Pipeline settings: the `make run` default, overrides for `vaeflow run`, the nightly's schedule and
concurrency limit as `vaeflow serve` reads them from deploy/prefect.yaml."""

import pytest
from pydantic import ValidationError

from vae_core.errors import ConfigError
from vae_core.operations.pipeline import PipelineConfig, embeddings_uri, local_defaults, samples_uri
from vae_core.training.records import EpochRecord


def test_local_default_is_mnist_in_the_data_folder(tmp_path):
    config, pipeline = local_defaults(tmp_path / "data")
    root = str((tmp_path / "data").resolve())
    assert pipeline.root == root and pipeline.bootstrap == "mnist"
    assert config.data.uri == f"{root}/datasets/mnist" and config.train.runs_uri == f"{root}/runs"
    assert config.compute.num_workers == 1 and config.train.epochs == 3
    assert config.embed.passthrough == ["label"] and config.generate.rows == 1000
    assert embeddings_uri(root, "m", "test") == f"{root}/embeddings/m/test"
    assert samples_uri(root, "m") == f"{root}/samples/m"


def test_run_overrides_split_between_config_and_pipeline(tmp_path):
    from flows.local import build

    config, pipeline = build(
        str(tmp_path), 1, None, ["train.lr=0.01", "generate.rows=5", 'pipeline.embed_splits=["test"]']
    )
    assert config.train.epochs == 1 and config.train.lr == 0.01 and config.generate.rows == 5
    assert pipeline.embed_splits == ["test"] and pipeline.gate_margin == PipelineConfig(root="x").gate_margin
    with pytest.raises(ConfigError, match="sample_rows"):  # the job settings live in VaeflowConfig
        build(str(tmp_path), None, None, ["pipeline.sample_rows=5"])
    with pytest.raises(ConfigError, match="pipeline settings: gate_margn"):
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
    assert config.embed.passthrough == []  # MNIST's `label` is not assumed of the user's data
    _, pipeline = build(str(tmp_path), None, str(config_file), ["pipeline.bootstrap=adult"])
    assert pipeline.bootstrap == "adult"  # only when asked for explicitly


def test_serve_takes_schedule_and_concurrency_from_prefect_yaml():
    from flows.serve import PREFECT_FILE, concurrency, nightly_spec, schedules

    spec = nightly_spec(PREFECT_FILE)
    assert spec["entrypoint"] == "flows/nightly.py:nightly_flow"
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


# ---- the nightly's decision, with training, evaluation and the batch jobs faked ----------------


class _FakeNight:
    """Stands in for the sub-flows and artifact tasks of `nightly`; the registry tasks are real."""

    def __init__(self, tmp_path, elbo: float, during_training=None) -> None:
        import torch

        from vae_core.config import ModelConfig, VaeflowConfig
        from vae_core.data.codecs.vector import VectorCodec
        from vae_core.models.families import DataShape, build_model
        from vae_core.training.checkpoints import save_checkpoint

        self.root = str(tmp_path / "store")
        self.config = VaeflowConfig(name="m", model=ModelConfig(family="vae", hidden=[8], latent_dim=2))
        self.checkpoint = str(tmp_path / "runs" / "r" / "epoch_0001")
        shape = DataShape(6)
        torch.manual_seed(0)
        model, codec = build_model(self.config.model, shape), VectorCodec("x", 6, "float32")
        save_checkpoint(self.checkpoint, model, self.config, codec)
        self.report = tmp_path / "runs" / "r" / "report"
        self.report.mkdir(parents=True)
        (self.report / "report.html").write_text("<html></html>")
        self.elbo = elbo
        self.during_training = during_training
        self.served: list[tuple[str, str | None]] = []
        self.champion_reads = 0

    def patch(self, monkeypatch) -> None:
        import logging
        from types import SimpleNamespace

        import flows.nightly as nightly_module
        from flows import tasks

        logger = logging.getLogger("test-nightly")
        monkeypatch.setattr(tasks, "get_run_logger", lambda: logger)
        monkeypatch.setattr(nightly_module, "get_run_logger", lambda: logger)
        for name in ("register_model", "gate_and_promote", "resolve_model"):
            monkeypatch.setattr(nightly_module, name, getattr(tasks, name).fn)

        def read_champion(root, name, storage_options=None):
            self.champion_reads += 1
            return tasks.read_champion.fn(root, name, storage_options)

        def train(config, day, run_name):
            if self.during_training:
                self.during_training()
            return SimpleNamespace(
                run_name=run_name,
                best_checkpoint_uri=self.checkpoint,
                history=[EpochRecord.from_dict({"epoch": 1, "val_elbo": -130.0})],
                val_elbo_init=-550.0,
            )

        def evaluate(*args):
            from vae_core.reports.report import ReportResult

            html, metrics = str(self.report / "report.html"), str(self.report / "metrics.json")
            return ReportResult(html, metrics, self.model_report(self.elbo))

        def embed(config, pipeline, day):
            import numpy as np

            from vae_core.operations.drift import LatentStats, assess

            self.served.append(("embed", pipeline.model_version))
            stats = LatentStats(10, np.zeros(2), np.ones(2))
            drift = assess(day, pipeline.model_version, "m", {}, stats, None, pipeline.drift_threshold)
            test = SimpleNamespace(uri="e", embedded=10, carried=0)
            return SimpleNamespace(outputs={"test": test}, drift=drift)

        def generate(config, pipeline, day):
            self.served.append(("generate", pipeline.model_version))
            return SimpleNamespace(output=SimpleNamespace(uri="s"))

        monkeypatch.setattr(nightly_module, "ensure_dataset", lambda *a: None)
        monkeypatch.setattr(nightly_module, "read_champion", read_champion)
        monkeypatch.setattr(nightly_module, "train_flow", train)
        monkeypatch.setattr(nightly_module, "evaluate_flow", evaluate)
        monkeypatch.setattr(nightly_module, "embed_flow", embed)
        monkeypatch.setattr(nightly_module, "generate_flow", generate)
        monkeypatch.setattr(nightly_module, "markdown_artifact", lambda *a: None)
        monkeypatch.setattr(nightly_module, "table_artifact", lambda *a: None)

    @staticmethod
    def model_report(elbo: float):
        from vae_core.training.evaluation import EvalResult
        from vae_core.training.model_report import ModelReport

        return ModelReport(test=EvalResult(elbo, -elbo - 5.0, 5.0, 10))

    def publish(self, version: str, elbo: float) -> None:
        from vae_core.operations.registry import publish_version

        publish_version(self.root, "m", version, self.checkpoint, self.model_report(elbo))

    def run(self):
        from datetime import date

        from flows.nightly import nightly_flow

        return nightly_flow.fn(self.config, PipelineConfig(root=self.root), date(2026, 1, 3))


def test_the_nightly_serves_the_promoted_candidate_to_both_jobs(tmp_path, monkeypatch):
    from vae_core.operations.registry import champion_record, promote, read_version

    night = _FakeNight(tmp_path, elbo=-119.0)
    night.patch(monkeypatch)
    night.publish("v1", -120.0)
    promote(night.root, "m", "v1", "first", expected_seq=None)
    state = night.run()
    result = state.result()
    assert state.is_completed() and result.promoted and state.message == f"promoted {result.candidate}"
    assert night.champion_reads == 1
    assert night.served == [("embed", result.candidate), ("generate", result.candidate)]
    record = champion_record(night.root, "m")
    assert (record.version, record.seq, record.previous, record.night) == (
        result.candidate,
        1,
        "v1",
        "2026-01-03",
    )
    # The registered report: the evaluation's numbers plus the nightly's training summary.
    registered = read_version(night.root, "m", result.candidate).report
    assert registered.heldout_elbo == result.elbo == -119.0
    assert registered.to_dict()["training"] == {
        "epochs": 1, "val_elbo": -130.0, "val_elbo_best": -130.0, "val_elbo_untrained": -550.0,
    }  # fmt: skip


def _night_while_another_run_promotes(tmp_path, monkeypatch, elbo: float) -> _FakeNight:
    """Champion v1 at the start; another run promotes v2 while this night trains."""
    from vae_core.operations.registry import promote

    night = _FakeNight(tmp_path, elbo=elbo)
    night.publish("v1", -120.0)
    night.publish("v2", -118.0)
    promote(night.root, "m", "v1", "first", expected_seq=None)
    night.during_training = lambda: promote(night.root, "m", "v2", "other run", expected_seq=0)
    night.patch(monkeypatch)
    return night


def test_a_rejected_candidate_leaves_both_jobs_on_the_champion_read_at_the_start(tmp_path, monkeypatch):
    # Tonight still serves the champion it read at its start, not the one promoted meanwhile.
    night = _night_while_another_run_promotes(tmp_path, monkeypatch, elbo=-550.0)
    state = night.run()
    assert state.is_completed() and not state.result().promoted
    assert "champion stays v1" in state.message
    assert night.served == [("embed", "v1"), ("generate", "v1")]


def test_a_nightly_that_loses_the_promotion_race_fails_and_serves_nothing(tmp_path, monkeypatch):
    from vae_core.operations.registry import champion_record

    night = _night_while_another_run_promotes(tmp_path, monkeypatch, elbo=-100.0)
    state = night.run()
    result = state.result(raise_on_failure=False)
    assert state.is_failed() and not result.promoted and result.champion == "v2"
    assert f"candidate {result.candidate} passed the gate against champion v1" in state.message
    assert "v2 was promoted meanwhile by another run" in state.message
    assert "nothing was embedded or generated" in state.message
    assert night.served == []
    assert champion_record(night.root, "m").version == "v2"  # moved once, by the other run


def test_a_second_run_of_a_night_that_already_promoted_serves_that_champion(tmp_path, monkeypatch):
    from vae_core.operations.registry import champion_record, promote

    night = _FakeNight(tmp_path, elbo=-100.0)  # better than the champion: it would pass the gate
    night.publish("v1", -120.0)
    # The first run of the night (another flow run) promoted v1 for 2026-01-03.
    promote(night.root, "m", "v1", "first", expected_seq=None, night="2026-01-03", flow_run_id="run-1")
    night.patch(monkeypatch)
    state = night.run()
    result = state.result()
    assert state.is_completed() and not result.promoted
    assert "already promoted v1" in state.message and "at most once a night" in state.message
    assert night.served == [("embed", "v1"), ("generate", "v1")]
    assert champion_record(night.root, "m").seq == 0  # the champion did not move again


def test_an_object_store_root_stays_a_uri_and_a_local_root_becomes_absolute(tmp_path, monkeypatch):
    """`vaeflow run --root s3://bucket/prefix` puts everything under the bucket (it once became a local
    folder named 's3:'); a relative local root is resolved, for Ray Train's storage path."""
    config, pipeline = local_defaults("s3://bucket/nightly")
    assert pipeline.root == "s3://bucket/nightly"
    assert config.train.runs_uri == "s3://bucket/nightly/runs"
    assert config.data.uri == "s3://bucket/nightly/datasets/mnist"
    monkeypatch.chdir(tmp_path)
    config, pipeline = local_defaults("data")
    assert pipeline.root == str(tmp_path / "data")
    assert config.train.runs_uri == str(tmp_path / "data" / "runs")
