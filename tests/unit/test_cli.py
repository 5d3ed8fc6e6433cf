"""The vaeflow command line: config printing, clear errors, the main job end to end, layering."""

import json
import subprocess
import sys

import pytest

from flows.cli import main


def test_config_prints_validated_json_with_overrides(capsys):
    assert main(["config", "train.epochs=3", "model.latent_dim=2"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["train"]["epochs"] == 3 and cfg["model"]["latent_dim"] == 2


def test_bad_override_exits_non_zero_and_names_the_key(capsys):
    assert main(["config", "train.epochz=3"]) == 2
    assert "unknown key 'epochz'" in capsys.readouterr().err


def test_config_prints_secrets_redacted_at_any_depth(tmp_path, capsys):
    path = tmp_path / "c.json"
    options = {"secret": "top-secret", "client_kwargs": {"aws_secret_access_key": "deep-secret"}}
    path.write_text(json.dumps({"data": {"storage_options": options}}))
    assert main(["config", "--config", str(path), "train.epochs=3"]) == 0
    out = capsys.readouterr().out
    assert "top-secret" not in out and "deep-secret" not in out
    assert json.loads(out)["data"]["storage_options"] == {
        "secret": "***",
        "client_kwargs": {"aws_secret_access_key": "***"},
    }


def test_train_resumes_only_when_asked(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--resume" in out and "refused unless --resume" in " ".join(out.split())


def test_run_and_serve_are_documented_in_help(capsys):
    # `run` itself is the nightly flow end to end: tests/integration/test_flows.py runs it.
    for command in ("run", "serve"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert "vae-nightly" in out and "--root" in out


def test_core_imports_neither_ray_nor_prefect():
    code = (
        "import sys, flows.cli, vae_core.training.checkpoints, vae_core.training.evaluation;"
        "import vae_core.training.inference, vae_core.training.loop;"
        "bad = [m for m in ('ray', 'prefect') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
