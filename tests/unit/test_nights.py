"""What incremental embeds and tracked runs rest on, without Ray or servers: content
fingerprints, MLflow parameters with secrets redacted, and the
console filter of `vaeflow run`."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from flows.local import QuietConsole
from vae_core.config import VaeflowConfig
from vae_core.data.objects import content_fingerprint
from vae_core.operations.tracking import config_params


def test_a_content_fingerprint_follows_the_bytes_not_the_name(tmp_path: Path) -> None:
    a = tmp_path / "a.parquet"
    a.write_bytes(b"PAR1" + bytes(range(256)) * 100)
    b = tmp_path / "elsewhere" / "b.parquet"
    b.parent.mkdir()
    shutil.copy(a, b)
    assert content_fingerprint(str(a)) == content_fingerprint(str(b))
    b.write_bytes(b"PAR1" + bytes(range(255, -1, -1)) * 100)  # same size, other bytes
    assert content_fingerprint(str(a)) != content_fingerprint(str(b))


def test_mlflow_parameters_are_dotted_settings_with_secrets_redacted() -> None:
    cfg = VaeflowConfig.model_validate(
        {
            "name": "p",
            "data": {"uri": "s3://b/d", "storage_options": {"key": "AKIA", "secret": "s3cr3t"}},
            "model": {"hidden": [400, 200], "latent_dim": 16},
        }
    )
    params = config_params(cfg)
    assert params["model.latent_dim"] == "16" and params["model.hidden"] == "[400, 200]"
    assert params["data.uri"] == "s3://b/d" and params["train.init_from"] == "null"
    assert "s3cr3t" not in str(params) and "AKIA" not in str(params)


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        ("Finished in state Completed()", False),
        ("Finished in state Completed('promoted 20260101-abc')", False),
        ("Beginning subflow run 'x' for flow 'vae-train'", False),
        ("Starting temporary server on http://127.0.0.1:8098", False),
        ("Finished in state Failed('Task run encountered an exception')", True),
        ("epoch 1/3  loss 164.22", True),
    ],
)
def test_the_run_console_drops_prefects_routine_lines_only(message: str, shown: bool) -> None:
    record = logging.LogRecord("prefect.task_runs", logging.INFO, __file__, 1, message, None, None)
    assert QuietConsole().filter(record) is shown
