"""The vaeflow command line: config printing, clear errors, the main job end to end, layering."""

import json
import subprocess
import sys

import pytest

from vae_core.checkpoint import load_checkpoint
from vae_core.cli import main


def test_config_prints_validated_json_with_overrides(capsys):
    assert main(["config", "train.epochs=3", "model.latent_dim=2"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["train"]["epochs"] == 3 and cfg["model"]["latent_dim"] == 2


def test_bad_override_exits_non_zero_and_names_the_key(capsys):
    assert main(["config", "train.epochz=3"]) == 2
    assert "unknown key 'epochz'" in capsys.readouterr().err


@pytest.mark.slow
def test_run_trains_evaluates_and_writes_a_loadable_checkpoint(tmp_path, capsys):
    assert main(["run", "--epochs", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "epoch 1/1" in out and "model checkpoint:" in out
    ck = load_checkpoint(str(tmp_path / "mnist-vae" / "checkpoint"))
    assert ck.meta["epoch"] == 1 and ck.meta["test"]["elbo"] < 0 and ck.meta["active_units"] > 0


def test_core_imports_neither_ray_nor_prefect():
    code = (
        "import sys, vae_core.cli, vae_core.checkpoint, vae_core.evaluate, vae_core.inference;"
        "import vae_core.train;"
        "bad = [m for m in ('ray', 'prefect') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
