"""The vaeflow command line: config printing, clear errors, the main job end to end, layering."""

import json
import subprocess
import sys

import pytest

from vae_core.cli import main


def test_config_prints_validated_json_with_overrides(capsys):
    assert main(["config", "train.epochs=3", "model.latent_dim=2"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["train"]["epochs"] == 3 and cfg["model"]["latent_dim"] == 2


def test_bad_override_exits_non_zero_and_names_the_key(capsys):
    assert main(["config", "train.epochz=3"]) == 2
    assert "unknown key 'epochz'" in capsys.readouterr().err


def test_run_and_serve_are_documented_in_help(capsys):
    # `run` itself is the nightly flow end to end: tests/integration/test_flows.py runs it.
    for command in ("run", "serve"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert "vae-nightly" in out and "--root" in out


def test_core_imports_neither_ray_nor_prefect():
    code = (
        "import sys, vae_core.cli, vae_core.checkpoint, vae_core.evaluate, vae_core.inference;"
        "import vae_core.train;"
        "bad = [m for m in ('ray', 'prefect') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
