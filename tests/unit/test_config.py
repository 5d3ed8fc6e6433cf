"""Configuration: JSON round trip, overrides, validation errors."""

import pytest

from vae_core.config import VaeflowConfig


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
        }
    )
    path = tmp_path / "c.json"
    path.write_text(cfg.to_json())
    assert VaeflowConfig.from_file(path) == cfg
    assert VaeflowConfig.from_json(cfg.to_json()).data.image_shape == (1, 28, 28)


def test_overrides_are_typed_and_checked():
    cfg = VaeflowConfig().with_overrides(["train.epochs=3", "model.hidden=[64,32]", "data.uri=s3://b/x"])
    assert cfg.train.epochs == 3 and cfg.model.hidden == [64, 32] and cfg.data.uri == "s3://b/x"
    with pytest.raises(ValueError, match="unknown key 'epoch'"):
        VaeflowConfig().with_overrides(["train.epoch=3"])
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        VaeflowConfig().with_overrides(["train.epochs=0"])


def test_unknown_keys_and_conflicts_are_errors(tmp_path):
    with pytest.raises(ValueError, match="extra"):
        VaeflowConfig.model_validate({"train": {"epohcs": 3}})
    with pytest.raises(ValueError, match="not both"):
        VaeflowConfig.model_validate({"train": {"warmup_epochs": 1, "warmup_steps": 1}})
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": {"latent_dim": 0}}')
    with pytest.raises(ValueError, match=r"bad.json: invalid configuration"):
        VaeflowConfig.from_file(bad)
