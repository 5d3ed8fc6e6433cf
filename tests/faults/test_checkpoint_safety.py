"""A pickle posing as a checkpoint (scenario 11): refused by load_checkpoint and the CLI, never run.

The payload is real: unpickling it creates a marker file (checked first in a throw-away process), so
"refused" means the bytes were never handed to an unpickler, not that unpickling happened to fail.
"""

from __future__ import annotations

import builtins
import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest
import torch

from tests.faults._helpers import ROOT, train_config, write_dataset
from tests.faults.conftest import S3, Outcome
from vae_core.data.codecs.vector import VectorCodec
from vae_core.errors import CheckpointError
from vae_core.models.families import DataShape, build_model
from vae_core.training.checkpoints import CheckpointMeta, load_checkpoint, save_checkpoint

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300, method="signal")]


class _Payload:
    """Unpickling this opens (creates) the marker file: code execution by pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def _variants(marker: Path) -> dict[str, bytes]:
    buf = io.BytesIO()
    torch.save({"weights": _Payload(marker)}, buf)  # what a careless torch.load(weights_only=False) runs
    return {
        "pickle": pickle.dumps(_Payload(marker), protocol=pickle.HIGHEST_PROTOCOL),
        "pickle-protocol-0": pickle.dumps(_Payload(marker), protocol=0),  # text pickle, no \x80 magic
        "torch-save-zip": buf.getvalue(),
    }


def _checkpoint(uri: str, data_uri: str, optimizer: bool = False) -> None:
    """A genuine checkpoint of an untrained model (the files the payload then replaces)."""
    cfg = train_config(data_uri, "unused")
    shape = DataShape(32, None)
    model = build_model(cfg.model, shape)
    opt = torch.optim.Adam(model.parameters()) if optimizer else None
    save_checkpoint(
        uri, model, cfg, VectorCodec("x", 32, "float32"), optimizer=opt, meta=CheckpointMeta(epoch=1)
    )


@pytest.mark.scenario(11, "a pickle payload given as a checkpoint -> refused, the payload never runs")
def test_a_pickle_payload_posing_as_a_checkpoint_is_refused_and_never_runs(
    s3: S3, tmp_path: Path, scenario: Outcome
) -> None:
    marker = tmp_path / "PAYLOAD-RAN"
    payloads = _variants(marker)

    # The payload is live: plain pickle.loads / torch.load(weights_only=False) in another process runs it.
    control = tmp_path / "control"
    for name, data in _variants(control).items():
        code = (
            "import io, pickle, sys, torch; d = sys.stdin.buffer.read(); "
            "torch.load(io.BytesIO(d), weights_only=False) if d[:2] == b'PK' else pickle.loads(d)"
        )
        subprocess.run(
            [sys.executable, "-c", code],
            input=data,
            check=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert control.exists(), f"the {name} payload is not live"
        control.unlink()

    bucket = s3.bucket()
    data_uri = f"{bucket}/vectors"
    write_dataset(s3.fs(), data_uri.removeprefix("s3://"), train_rows=64, test_rows=64, shards=1)
    cases: list[tuple[str, str]] = []  # (what, model URI)
    cli_cases: list[tuple[str, str]] = []  # one per kind of file and place; each CLI run costs imports
    for name, data in payloads.items():
        for where, root in (("local", str(tmp_path / "ckpt")), ("s3", f"{bucket}/ckpt")):
            uri = f"{root}/{name}"
            _checkpoint(uri, data_uri)
            fs, path = fsspec.core.url_to_fs(uri)
            fs.pipe_file(f"{path}/model.safetensors", data)  # the weights file replaced by the payload
            cases.append((f"{where} checkpoint, model.safetensors = {name}", uri))
        # The optimizer file is read on resume (with_optimizer=True): the same refusal must hold there.
        uri = str(tmp_path / "ckpt-opt" / name)
        _checkpoint(uri, data_uri, optimizer=True)
        Path(uri, "optimizer.safetensors").write_bytes(data)
        cases.append((f"local checkpoint, optimizer.safetensors = {name} (resume)", uri))
        single = tmp_path / f"model-{name}.pt"  # a bare pickle file given where a checkpoint goes
        single.write_bytes(data)
        cases.append((f"a single {name} file", str(single)))
    cli_cases = [cases[1], cases[4 + 3], cases[8]]  # pickle in S3, a text pickle file, a torch zip locally

    for what, uri in cases:
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(uri, with_optimizer="optimizer" in what)
        assert uri.rstrip("/").rsplit("/", 1)[-1] in str(err.value) or uri in str(err.value), (
            what,
            err.value,
        )
        assert not marker.exists(), f"the payload ran: {what}"

    # The CLI: exit 2 with the reason, payload not run (one run per kind of file; each costs an import).
    out = f"{bucket}/embeddings"
    for what, uri in cli_cases:
        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "flows.cli",
                "embed",
                "--model",
                uri,
                "--input",
                f"{data_uri}/test",
                "--output",
                out,
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": ""},
            timeout=60,
        )
        assert cli.returncode == 2, (what, cli.returncode, cli.stderr[-2000:])
        assert "safetensors" in cli.stderr or "pickle" in cli.stderr, (what, cli.stderr[-2000:])
        assert not marker.exists(), f"the payload ran in the CLI: {what}"
    assert not s3.fs().exists(out), "the CLI wrote output for a refused model"
    scenario.detail = (
        f"{len(cases)} payload checkpoints refused by load_checkpoint, CLI exit 2; marker absent"
    )
