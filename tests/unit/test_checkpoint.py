"""Checkpoints: bit-identical round trip, optimizer state, the codec and typed meta carried along, old
checkpoints (tabular.json, no codec file) still load, refusal of pickle and incomplete checkpoints, no
secret in config.json."""

import json
import pickle

import numpy as np
import pyarrow as pa
import pytest
import torch

from tests.conftest import binary_data
from vae_core.config import DataConfig, ModelConfig, VaeflowConfig
from vae_core.data.codecs.table import TabularCodec
from vae_core.data.codecs.vector import VectorCodec
from vae_core.data.dataset import encode_schema
from vae_core.data.tabular import TabularTransformer
from vae_core.errors import CheckpointError
from vae_core.models.families import DataShape, build_model
from vae_core.redaction import holds_redacted
from vae_core.training.checkpoints import CheckpointMeta, load_checkpoint, save_checkpoint
from vae_core.training.evaluation import EvalResult
from vae_core.training.loop import EpochStats, fit
from vae_core.training.records import EpochRecord


def _codec(dim: int = 16) -> VectorCodec:
    return VectorCodec("x", dim, "float32", unit_interval=False)


def _table(n: int = 64) -> pa.Table:
    rng = np.random.default_rng(0)
    return pa.table(
        {
            "age": pa.array(rng.integers(18, 90, n), pa.int64()),
            "job": pa.array(rng.choice(["a", "b", "c"], n)),
        }
    )


@pytest.mark.parametrize("uri_kind", ["path", "file", "memory"])
def test_round_trip_gives_bit_identical_outputs(tmp_path, uri_kind):
    cfg = VaeflowConfig(model=ModelConfig(family="vae", hidden=[32], latent_dim=4, likelihood="gaussian"))
    codec = _codec()
    model = build_model(cfg.model, DataShape.of(codec))
    opt = torch.optim.Adam(model.parameters())
    fit(model, [binary_data(32)], epochs=3, optimizer=opt)
    uri = {"path": str(tmp_path / "ck"), "file": f"file://{tmp_path}/ck", "memory": "memory://ck/1"}[uri_kind]
    save_checkpoint(uri, model, cfg, codec, optimizer=opt, meta=CheckpointMeta(epoch=3))
    ck = load_checkpoint(uri, with_optimizer=True)
    assert ck.config == cfg and ck.meta.epoch == 3
    assert ck.codec.to_dict() == codec.to_dict() and ck.meta.data_shape == DataShape(16)
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


def test_the_codec_travels_in_codec_json_and_sets_the_model_shape(tmp_path):
    table = _table()
    transformer = TabularTransformer.fit([table], ["age"], ["job"], table.schema, max_modes=2)
    codec = TabularCodec(transformer)
    cfg = VaeflowConfig(model=ModelConfig(likelihood="tabular", hidden=[8], latent_dim=2))
    save_checkpoint(str(tmp_path), build_model(cfg.model, DataShape.of(codec)), cfg, codec)
    assert not (tmp_path / "tabular.json").exists()
    assert json.loads((tmp_path / "codec.json").read_text())["kind"] == "tabular"
    ck = load_checkpoint(str(tmp_path))
    assert isinstance(ck.codec, TabularCodec) and ck.model.likelihood.layout == codec.layout
    np.testing.assert_array_equal(ck.codec.encode(table, "t"), codec.encode(table, "t"))
    assert ck.codec.decode(codec.encode(table, "t")).equals(codec.decode(codec.encode(table, "t")))


def test_meta_round_trip_keeps_every_field_and_unknown_keys(tmp_path):
    meta = CheckpointMeta(
        epoch=4,
        step=120,
        history=[
            EpochRecord.of(
                EpochStats(1, 3.5, 3.4, 0.1, -3.5, 1.0, 64, 0.5, 2),
                epochs=3,
                val=EvalResult(-3.6, 3.5, 0.1, 8),
            )
        ],
        val_elbo=-2.5,
        val_elbo_init=-9.0,
        data_schema=encode_schema(_table().schema),
        world_size=2,
        worker_nodes=["n1", "n2"],
        restarts=[{"from_epoch": 2, "at": 1.5}],
        data_shape=DataShape(3, (1, 1, 3)),
        extra={"recon_weight": 0.0},
    )
    again = CheckpointMeta.from_dict(json.loads(meta.to_json()))
    assert again == meta and again.schema() == _table().schema
    # Old meta.json keys stay readable by readers that index the JSON; unknown keys are no error.
    written = json.loads(meta.to_json())
    assert written["epoch"] == 4 and written["data_shape"]["image_shape"] == [1, 1, 3]
    assert CheckpointMeta.from_dict({"epoch": 2, "someday": [1]}).extra == {"someday": [1]}
    assert CheckpointMeta.from_dict({}) == CheckpointMeta()


def test_save_records_the_codec_shape_in_meta(tmp_path):
    cfg = VaeflowConfig(model=ModelConfig(hidden=[8], latent_dim=2))
    codec = VectorCodec("image", 12, "uint8", 255.0, (3, 2, 2))
    save_checkpoint(
        str(tmp_path), build_model(cfg.model, DataShape.of(codec)), cfg, codec, meta=CheckpointMeta()
    )
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["data_shape"] == {"dim": 12, "image_shape": [3, 2, 2], "layout": None}


def _write_old_format(path, codec, cfg: VaeflowConfig, meta: dict) -> None:
    """A checkpoint as written before codec.json: the tabular transformer in tabular.json (tabular data
    only), a meta.json with data_shape and no codec."""
    save_checkpoint(str(path), build_model(cfg.model, DataShape.of(codec)), cfg, codec)
    (path / "codec.json").unlink()
    if isinstance(codec, TabularCodec):
        (path / "tabular.json").write_text(codec.transformer.to_json())
    shape = json.loads((path / "meta.json").read_text())["data_shape"]
    (path / "meta.json").write_text(json.dumps({**meta, "data_shape": shape, "format": "vaeflow/1"}))


def test_an_old_tabular_checkpoint_loads_its_codec_from_tabular_json(tmp_path):
    table = _table()
    codec = TabularCodec(TabularTransformer.fit([table], ["age"], ["job"], table.schema, max_modes=2))
    cfg = VaeflowConfig(model=ModelConfig(likelihood="tabular", hidden=[8], latent_dim=2))
    _write_old_format(tmp_path, codec, cfg, {"epoch": 5, "history": [{"epoch": 5}], "val_elbo_init": -7.0})
    ck = load_checkpoint(str(tmp_path))
    assert isinstance(ck.codec, TabularCodec) and ck.codec.to_dict() == codec.to_dict()
    assert ck.meta.epoch == 5 and ck.meta.val_elbo_init == -7.0 and [h.epoch for h in ck.meta.history] == [5]
    assert ck.model.likelihood.layout == codec.layout


def test_an_old_vector_checkpoint_rebuilds_its_codec_from_config_and_meta(tmp_path):
    pixels = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(24, dtype=np.uint8)), 12)
    table = pa.table({"id": pa.array([0, 1], pa.int64()), "image": pixels})
    data = DataConfig(uri="mem", vector_column="image", scale=255, image_shape=(3, 2, 2))
    cfg = VaeflowConfig(data=data, model=ModelConfig(hidden=[8], latent_dim=2))
    codec = VectorCodec("image", 12, "uint8", 255.0, (3, 2, 2))
    _write_old_format(tmp_path, codec, cfg, {"epoch": 1, "data_schema": encode_schema(table.schema)})
    ck = load_checkpoint(str(tmp_path))
    assert ck.codec.to_dict() == codec.to_dict()  # uint8 from the data schema, Bernoulli -> [0, 1]
    np.testing.assert_array_equal(
        ck.codec.encode(table, "t"), np.arange(24, dtype=np.float32).reshape(2, 12) / 255
    )
    # Without a recorded schema the vector's values are read back as float32.
    _write_old_format(tmp_path, codec, cfg, {"epoch": 1})
    assert load_checkpoint(str(tmp_path)).codec.to_dict() == {**codec.to_dict(), "value_type": "float32"}


def test_an_old_checkpoint_without_a_vector_column_or_tabular_json_is_a_clear_error(tmp_path):
    cfg = VaeflowConfig(model=ModelConfig(hidden=[8], latent_dim=2))
    _write_old_format(tmp_path, _codec(), cfg, {"epoch": 1})
    with pytest.raises(CheckpointError, match=r"codec cannot be rebuilt.*data\.vector_column"):
        load_checkpoint(str(tmp_path))


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
    cfg, codec = VaeflowConfig(), _codec(784)
    save_checkpoint(str(tmp_path / "ck"), build_model(cfg.model, DataShape.of(codec)), cfg, codec)
    (tmp_path / "ck" / "model.safetensors").write_bytes(blob)
    with pytest.raises(CheckpointError, match=r"model.safetensors: not a safetensors file \(a pickle"):
        load_checkpoint(str(tmp_path / "ck"))
    torch.save({"w": torch.zeros(1)}, tmp_path / "ck" / "model.safetensors")
    with pytest.raises(CheckpointError, match="zip"):
        load_checkpoint(str(tmp_path / "ck"))
    assert not marker.exists()


def test_incomplete_checkpoint_names_the_missing_file(tmp_path):
    cfg, codec = VaeflowConfig(), _codec(784)
    save_checkpoint(str(tmp_path), build_model(cfg.model, DataShape.of(codec)), cfg, codec)
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
    model = build_model(cfg.model, DataShape.of(_codec()))
    save_checkpoint(str(tmp_path), model, cfg, _codec(), optimizer=torch.optim.Adam(model.parameters()))
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
