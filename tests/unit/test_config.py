"""Configuration: JSON round trip, overrides, validation errors, secrets in storage options."""

import json

import pyarrow.fs as pafs
import pytest
from pydantic import ValidationError

from vae_core.config import GenerateConfig, VaeflowConfig
from vae_core.data.storage import arrow_filesystem, delta_storage_options, filesystem
from vae_core.errors import ConfigError
from vae_core.redaction import REDACTED, holds_redacted, redact


def test_json_round_trip_is_lossless(tmp_path):
    cfg = VaeflowConfig.model_validate(
        {
            "name": "mnist-vae",
            "data": {
                "uri": "s3://bucket/mnist",
                "vector_column": "image",
                "image_shape": [1, 28, 28],
                "scale": 255,
            },
            "model": {"family": "dae", "corruption": "mask", "backbone": "conv", "hidden": [256]},
            "train": {"epochs": 3, "beta": 4.0, "warmup_steps": 100, "grad_clip": 5.0},
            "compute": {"num_workers": 2, "cpus_per_worker": 0.5},
            "embed": {"with_logvar": True, "passthrough": ["label"], "chunk_rows": 512},
            "generate": {"rows": 50, "seed": 3, "sample_likelihood": False, "rows_per_file": 25},
        }
    )
    path = tmp_path / "c.json"
    path.write_text(cfg.to_json())
    assert VaeflowConfig.from_file(path) == cfg
    assert VaeflowConfig.from_json(cfg.to_json()).data.image_shape == (1, 28, 28)


def test_overrides_are_typed_and_checked():
    cfg = VaeflowConfig().with_overrides(["train.epochs=3", "model.hidden=[64,32]", "data.uri=s3://b/x"])
    assert cfg.train.epochs == 3 and cfg.model.hidden == [64, 32] and cfg.data.uri == "s3://b/x"
    with pytest.raises(ConfigError, match="unknown key 'epoch'"):
        VaeflowConfig().with_overrides(["train.epoch=3"])
    with pytest.raises(ConfigError, match="greater than or equal to 1"):
        VaeflowConfig().with_overrides(["train.epochs=0"])


def test_unknown_keys_and_conflicts_are_errors(tmp_path):
    with pytest.raises(ValueError, match="extra"):
        VaeflowConfig.model_validate({"train": {"epohcs": 3}})
    with pytest.raises(ValueError, match="extra"):  # the job sections are as strict as the others
        VaeflowConfig.model_validate({"embed": {"batch_size": 3}})
    with pytest.raises(ConfigError, match="greater than or equal to 1"):
        VaeflowConfig().with_overrides(["generate.rows_per_file=0"])
    with pytest.raises(ValueError, match="not both"):
        VaeflowConfig.model_validate({"train": {"warmup_epochs": 1, "warmup_steps": 1}})
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": {"latent_dim": 0}}')
    with pytest.raises(ConfigError, match=r"bad.json: invalid configuration"):
        VaeflowConfig.from_file(bad)
    with pytest.raises(ConfigError, match=r"missing.json: cannot read the config file"):
        VaeflowConfig.from_file(tmp_path / "missing.json")


SECRETS = ("AKIA-SECRET-KEY-ID", "s3cr3t-value", "session-token-value", "nested-secret", "hunter2")


def _config_with_secrets() -> VaeflowConfig:
    return VaeflowConfig.model_validate(
        {
            "data": {
                "uri": "s3://bucket/data",
                "storage_options": {
                    "key": SECRETS[0],
                    "secret": SECRETS[1],
                    "token": SECRETS[2],
                    "client_kwargs": {
                        "endpoint_url": "http://127.0.0.1:9000",
                        "region_name": "eu-west-1",
                        "aws_secret_access_key": SECRETS[3],
                    },
                    "config_kwargs": {"signature_version": "s3v4"},
                    "proxies": [{"url": "http://proxy:3128", "password": SECRETS[4]}],
                },
            }
        }
    )


def test_secrets_are_redacted_recursively_wherever_a_config_is_written_or_shown():
    cfg = _config_with_secrets()
    shown = [
        cfg.to_json(),
        cfg.model_dump_json(),
        json.dumps(cfg.model_dump(mode="json")),
        repr(cfg),
        str(cfg),
    ]
    for text in shown:
        assert not [s for s in SECRETS if s in text], text
        assert "http://127.0.0.1:9000" in text and "eu-west-1" in text and "s3v4" in text
    options = json.loads(cfg.to_json())["data"]["storage_options"]
    assert options["key"] == options["secret"] == options["token"] == REDACTED
    assert options["client_kwargs"] == {
        "endpoint_url": "http://127.0.0.1:9000",
        "region_name": "eu-west-1",
        "aws_secret_access_key": REDACTED,
    }
    assert options["proxies"] == [{"url": "http://proxy:3128", "password": REDACTED}]
    assert holds_redacted(options) and not holds_redacted(cfg.data.storage_options)
    assert redact({"AWS_SECRET_ACCESS_KEY": "x", "AWS_REGION": "r", "empty_key": ""}) == {
        "AWS_SECRET_ACCESS_KEY": REDACTED,
        "AWS_REGION": "r",
        "empty_key": "",
    }


def test_secrets_stay_in_memory_through_overrides_and_the_unredacted_form():
    cfg = _config_with_secrets()
    again = cfg.with_overrides(["train.epochs=3", "model.latent_dim=2"])
    assert again.data.storage_options == cfg.data.storage_options
    assert again.train.epochs == 3
    assert VaeflowConfig.from_json(cfg.to_json(redact=False)) == cfg
    given = cfg.with_overrides(['data.storage_options={"key": "k2", "secret": "s2"}'])
    assert given.data.storage_options == {"key": "k2", "secret": "s2"}
    # A written (redacted) config read back holds "***"; opening storage with it is refused, not tried.
    written = VaeflowConfig.from_json(cfg.to_json())
    with pytest.raises(ConfigError, match=r"redacted values .* pass the real storage options"):
        filesystem(written.data.uri, written.data.storage_options)


def test_storage_options_translate_for_pyarrow_and_delta_rs(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    options = {
        "key": "AK",
        "secret": "SK",
        "token": "ST",
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000", "region_name": "eu-west-1"},
    }
    assert delta_storage_options("s3://b/t", options) == {
        "AWS_ACCESS_KEY_ID": "AK",
        "AWS_SECRET_ACCESS_KEY": "SK",
        "AWS_SESSION_TOKEN": "ST",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_ALLOW_HTTP": "true",
        "AWS_REGION": "eu-west-1",
    }
    flat = {"endpoint_url": "https://s3.example", "config_kwargs": {"region_name": "r1"}}
    assert delta_storage_options("s3://b/t", flat) == {
        "AWS_ENDPOINT_URL": "https://s3.example",
        "AWS_REGION": "r1",
    }
    assert delta_storage_options("s3://b/t") == {}
    assert delta_storage_options("/local/table", options) == {}
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5555")
    assert delta_storage_options("s3://b/t") == {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:5555",
        "AWS_ALLOW_HTTP": "true",
    }
    with pytest.raises(ConfigError, match="profile have no delta-rs equivalent"):
        delta_storage_options("s3://b/t", {"profile": "dev"})

    fs, path = arrow_filesystem("s3://b/t/x.parquet", options)
    assert isinstance(fs, pafs.S3FileSystem) and path == "b/t/x.parquet"
    assert fs.region == "eu-west-1"
    fs, _ = arrow_filesystem("s3://b/t/x.parquet", {**options, "profile": "dev"})  # s3fs only: wrapped
    assert isinstance(fs, pafs.PyFileSystem)


def test_workers_run_torch_on_the_cpus_they_reserve_unless_torch_threads_says_otherwise():
    from vae_core.config import ComputeConfig

    assert ComputeConfig(cpus_per_worker=2).threads_per_worker == 2
    assert ComputeConfig(cpus_per_worker=0.5).threads_per_worker == 1
    assert ComputeConfig(cpus_per_worker=2, torch_threads=3).threads_per_worker == 3
    # Once a worker's splits are cached it also takes its share of the data CPUs.
    assert ComputeConfig(cpus_per_worker=1, data_cpus=1).threads_when_cached == 2
    assert ComputeConfig(num_workers=2, cpus_per_worker=1, data_cpus=1).threads_when_cached == 1
    assert ComputeConfig(num_workers=2, cpus_per_worker=1, data_cpus=2).threads_when_cached == 2
    assert ComputeConfig(cpus_per_worker=1, data_cpus=1, torch_threads=1).threads_when_cached == 1


def test_generate_where_reads_col_value_pairs_and_refuses_malformed_ones():
    assert GenerateConfig(where=["income=>50K", "sex=Female"]).where == {"income": ">50K", "sex": "Female"}
    assert GenerateConfig(where={"a": "b=c"}).where == {"a": "b=c"}
    assert GenerateConfig(where=["note=a=b"]).where == {"note": "a=b"}  # the first '=' splits
    assert GenerateConfig().where == {}
    for bad, message in [
        (["income"], "expected COL=VALUE"),
        (["=x"], "expected COL=VALUE"),
        (["a=1", "a=2"], "'a' is given twice"),
    ]:
        with pytest.raises(ValidationError, match=message):
            GenerateConfig(where=bad)
