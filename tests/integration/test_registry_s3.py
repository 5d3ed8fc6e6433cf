"""The champion compare-and-swap on S3 (moto server): conditional PUTs let exactly one of several
concurrent promotions land."""

from __future__ import annotations

import threading

import pytest
import torch

from vae_core.config import ModelConfig, VaeflowConfig
from vae_core.data.codecs.vector import VectorCodec
from vae_core.data.storage import create_only_write, filesystem, join
from vae_core.errors import ChampionConflict
from vae_core.models.families import DataShape, build_model
from vae_core.operations.registry import ChampionRecord, champion_record, promote, publish_version
from vae_core.training.checkpoints import CheckpointMeta, save_checkpoint
from vae_core.training.evaluation import EvalResult
from vae_core.training.model_report import ModelReport

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

RACERS = 8


def _checkpoint(root: str) -> str:
    torch.manual_seed(0)
    cfg = VaeflowConfig(name="m", model=ModelConfig(family="vae", hidden=[8], latent_dim=2))
    shape = DataShape(6)
    uri = join(root, "runs", "r1", "epoch_0001")
    save_checkpoint(
        uri, build_model(cfg.model, shape), cfg, VectorCodec("x", 6, "float32"), meta=CheckpointMeta(epoch=1)
    )
    return uri


def _objects(uri: str) -> list[str]:
    fs, path = filesystem(uri)
    fs.invalidate_cache(path)
    return sorted(p.rsplit("/", 1)[-1] for p in fs.find(path))


def test_create_only_write_on_s3_refuses_an_existing_key(bucket):
    uri = f"{bucket}/cow/x.json"
    assert create_only_write(uri, b"first") is True
    assert create_only_write(uri, b"second") is False
    fs, path = filesystem(uri)
    assert fs.cat_file(path) == b"first"


def test_concurrent_promotions_on_s3_exactly_one_record_is_written(bucket):
    root = f"{bucket}/vaeflow"
    ckpt = _checkpoint(root)
    versions = [f"v{i}" for i in range(RACERS + 1)]
    for v in versions:
        publish_version(root, "m", v, ckpt, ModelReport(test=EvalResult(-120.0, 115.0, 5.0, 100)))
    first = promote(root, "m", "v0", "first", expected_seq=None)

    start = threading.Barrier(RACERS)
    outcomes: dict[str, ChampionRecord | ChampionConflict] = {}

    def attempt(version: str) -> None:
        start.wait()
        try:
            outcomes[version] = promote(root, "m", version, "race", expected_seq=first.seq)
        except ChampionConflict as e:
            outcomes[version] = e

    threads = [threading.Thread(target=attempt, args=(v,)) for v in versions[1:]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(outcomes) == RACERS
    [winner] = [o for o in outcomes.values() if isinstance(o, ChampionRecord)]
    losers = [o for o in outcomes.values() if isinstance(o, ChampionConflict)]
    assert len(losers) == RACERS - 1
    assert all(e.current == winner and e.expected == first for e in losers)
    assert all(f"{winner.version} was promoted over it" in str(e) for e in losers)
    assert (winner.seq, winner.previous) == (1, "v0")
    # The champion moved once: the racers wrote exactly one record between them.
    assert _objects(join(root, "models", "m", "champion")) == ["0000000000.json", "0000000001.json"]
    assert champion_record(root, "m") == winner
    # The winner's task, retried, changes nothing.
    assert promote(root, "m", winner.version, "retried", expected_seq=first.seq) == winner
