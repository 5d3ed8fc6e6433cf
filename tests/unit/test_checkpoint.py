"""Checkpoints: bit-identical round trip, optimizer state, refusal of pickle and incomplete checkpoints,
no secret in config.json."""

import pickle

import pytest
import torch

from tests.conftest import binary_data
from vae_core.config import ModelConfig, VaeflowConfig, holds_redacted
from vae_core.data.layout import layout_from_widths
from vae_core.models.families import DataShape, build_model
from vae_core.training.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from vae_core.training.loop import fit


@pytest.mark.parametrize("uri_kind", ["path", "file", "memory"])
def test_round_trip_gives_bit_identical_outputs(tmp_path, uri_kind):
    cfg = VaeflowConfig(model=ModelConfig(family="vae", hidden=[32], latent_dim=4, likelihood="gaussian"))
    shape = DataShape(16)
    model = build_model(cfg.model, shape)
    opt = torch.optim.Adam(model.parameters())
    fit(model, [binary_data(32)], epochs=3, optimizer=opt)
    uri = {"path": str(tmp_path / "ck"), "file": f"file://{tmp_path}/ck", "memory": "memory://ck/1"}[uri_kind]
    save_checkpoint(uri, model, cfg, shape, optimizer=opt, meta={"epoch": 3})
    ck = load_checkpoint(uri, with_optimizer=True)
    assert ck.config == cfg and ck.meta["epoch"] == 3
    x = binary_data(8, seed=5)
    model.eval()
    ck.model.eval()
    assert torch.equal(model.encode(x).mean, ck.model.encode(x).mean)
    assert torch.equal(model.decode(model.encode(x).mean), ck.model.decode(ck.model.encode(x).mean))
    opt2 = torch.optim.Adam(ck.model.parameters())
    opt2.load_state_dict(ck.optimizer_state)
    before, after = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert before.keys() == after.keys()
    for idx, entry in before.items():
        assert all(torch.equal(value, after[idx][name]) for name, value in entry.items())


def test_tabular_layout_survives_the_round_trip(tmp_path):
    cfg = VaeflowConfig(model=ModelConfig(likelihood="tabular", hidden=[8], latent_dim=2))
    shape = DataShape(5, None, layout_from_widths([("continuous", 1), ("categorical", 4)]))
    save_checkpoint(str(tmp_path), build_model(cfg.model, shape), cfg, shape)
    assert load_checkpoint(str(tmp_path)).model.likelihood.layout == shape.layout


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling would create the marker file


def test_a_pickle_checkpoint_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    blob = pickle.dumps(_Payload(str(marker)))
    (tmp_path / "model.pt").write_bytes(blob)
    with pytest.raises(CheckpointError, match="single file"):
        load_checkpoint(str(tmp_path / "model.pt"))
    # The same payload dressed up as a checkpoint directory is refused by its bytes.
    cfg, shape = VaeflowConfig(), DataShape(784)
    save_checkpoint(str(tmp_path / "ck"), build_model(cfg.model, shape), cfg, shape)
    (tmp_path / "ck" / "model.safetensors").write_bytes(blob)
    with pytest.raises(CheckpointError, match=r"model.safetensors: not a safetensors file \(a pickle"):
        load_checkpoint(str(tmp_path / "ck"))
    torch.save({"w": torch.zeros(1)}, tmp_path / "ck" / "model.safetensors")
    with pytest.raises(CheckpointError, match="zip"):
        load_checkpoint(str(tmp_path / "ck"))
    assert not marker.exists()


def test_incomplete_checkpoint_names_the_missing_file(tmp_path):
    cfg, shape = VaeflowConfig(), DataShape(784)
    save_checkpoint(str(tmp_path), build_model(cfg.model, shape), cfg, shape)
    (tmp_path / "meta.json").unlink()
    with pytest.raises(CheckpointError, match=r"meta\.json is missing"):
        load_checkpoint(str(tmp_path))


@pytest.mark.parametrize(
    "options",
    [
        {"key": "AKIA-FLAT-ID", "secret": "flat-secret-value"},
        {
            "client_kwargs": {
                "endpoint_url": "http://127.0.0.1:9000",
                "aws_access_key_id": "AKIA-NESTED-ID",
                "aws_secret_access_key": "nested-secret-value",
            },
            "config_kwargs": {"region_name": "eu-west-1"},
        },
    ],
    ids=["flat", "nested"],
)
def test_config_json_never_holds_a_secret(tmp_path, options):
    cfg = VaeflowConfig.model_validate({"data": {"uri": "s3://bucket/data", "storage_options": options}})
    cfg = cfg.with_overrides(["train.epochs=2"])  # overrides keep the secrets in memory
    shape = DataShape(16)
    model = build_model(cfg.model, shape)
    save_checkpoint(str(tmp_path), model, cfg, shape, optimizer=torch.optim.Adam(model.parameters()))
    written = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    secrets = ["AKIA-FLAT-ID", "flat-secret-value", "AKIA-NESTED-ID", "nested-secret-value"]
    assert not [s for s in secrets if s.encode() in written]
    if "client_kwargs" in options:
        assert b"127.0.0.1:9000" in written  # the endpoint is no secret: it stays readable
    # Loaded alone, the config holds "***" (and refuses to open storage with it); with the real options
    # given, they are the loaded config's.
    alone = load_checkpoint(str(tmp_path))
    assert holds_redacted(alone.config.data.storage_options)
    given = load_checkpoint(str(tmp_path), storage_options=options)
    assert given.config.data.storage_options == options and given.config.train.epochs == 2
