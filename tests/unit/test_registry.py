"""Model registry: versions as loadable checkpoints, idempotent publishing, the gate, atomic promotion."""

import json
import uuid
from datetime import date

import pytest
import torch

from vae_core.checkpoint import load_checkpoint, save_checkpoint
from vae_core.config import ModelConfig, VaeflowConfig
from vae_core.families import DataShape, build_model
from vae_core.registry import (
    RegistryError,
    champion,
    champion_record,
    gate,
    list_versions,
    new_version,
    promote,
    publish_version,
    read_version,
    resolve,
)
from vae_core.storage import filesystem, join


def _root(tmp_path, kind: str) -> str:
    return str(tmp_path / "store") if kind == "path" else f"memory://reg-{uuid.uuid4().hex[:8]}"


def _checkpoint(root: str, run: str, seed: int = 0) -> str:
    torch.manual_seed(seed)
    cfg = VaeflowConfig(name="m", model=ModelConfig(family="vae", hidden=[8], latent_dim=2))
    shape = DataShape(6)
    model = build_model(cfg.model, shape)
    opt = torch.optim.Adam(model.parameters())
    uri = join(root, "runs", run, "epoch_0001")
    save_checkpoint(uri, model, cfg, shape, optimizer=opt, meta={"epoch": 1})
    return uri


def _report(root: str, run: str) -> str:
    uri = join(root, "runs", run, "report")
    fs, path = filesystem(uri)
    fs.makedirs(path, exist_ok=True)
    fs.pipe_file(f"{path}/report.html", b"<html>report</html>")
    fs.pipe_file(f"{path}/metrics.json", b"{}")
    return uri


def metrics(elbo: float) -> dict:
    return {"test": {"elbo": elbo, "recon": -elbo - 5.0, "kl": 5.0, "n": 100}, "iwae": elbo + 1.0}


@pytest.mark.parametrize("kind", ["path", "memory"])
def test_a_published_version_is_a_loadable_checkpoint_with_metrics_and_report(tmp_path, kind):
    root = _root(tmp_path, kind)
    ckpt = _checkpoint(root, "r1")
    v = publish_version(root, "m", "20260101-aaaa", ckpt, metrics(-120.0), report_uri=_report(root, "r1"))
    assert v.uri == join(root, "models", "m", "20260101-aaaa")
    names = set(v.record["files"])
    assert {"model.safetensors", "config.json", "meta.json", "metrics.json", "report/report.html"} <= names
    assert "optimizer.safetensors" not in names  # training state stays with the run
    assert v.report_uri == join(v.uri, "report", "report.html")
    loaded = load_checkpoint(v.uri)
    assert loaded.config.name == "m"
    again = read_version(root, "m", "20260101-aaaa")
    assert again.metrics["test"]["elbo"] == -120.0 and again.record["source_checkpoint"] == ckpt
    assert list_versions(root, "m") == ["20260101-aaaa"]


def test_publishing_is_idempotent_and_versions_are_immutable(tmp_path):
    root = _root(tmp_path, "path")
    ckpt, other = _checkpoint(root, "r1"), _checkpoint(root, "r2", seed=1)
    first = publish_version(root, "m", "v1", ckpt, metrics(-120.0))
    assert publish_version(root, "m", "v1", ckpt, metrics(-120.0)).record == first.record
    with pytest.raises(RegistryError, match="immutable"):
        publish_version(root, "m", "v1", other, metrics(-110.0))


def test_a_half_written_version_is_neither_listed_nor_promotable(tmp_path):
    root = _root(tmp_path, "path")
    ckpt = _checkpoint(root, "r1")
    publish_version(root, "m", "v1", ckpt, metrics(-120.0))
    (tmp_path / "store" / "models" / "m" / "v1" / "version.json").unlink()  # as if the writer died
    assert list_versions(root, "m") == []
    with pytest.raises(RegistryError, match="no such model version"):
        promote(root, "m", "v1", "test")


@pytest.mark.parametrize("kind", ["path", "memory"])
def test_promote_moves_the_champion_pointer_and_resolve_follows_it(tmp_path, kind):
    root = _root(tmp_path, kind)
    assert champion(root, "m") is None
    with pytest.raises(RegistryError, match="no champion"):
        resolve(root, "m")
    publish_version(root, "m", "v1", _checkpoint(root, "r1"), metrics(-120.0))
    publish_version(root, "m", "v2", _checkpoint(root, "r2", seed=1), metrics(-118.0))
    promote(root, "m", "v1", "first")
    pointer = promote(root, "m", "v2", "better")
    assert pointer["version"] == "v2" and pointer["previous"] == "v1"
    assert champion(root, "m").version == "v2" and resolve(root, "m").version == "v2"
    assert resolve(root, "m", "v1").version == "v1"
    assert promote(root, "m", "v2", "retried") == pointer  # a retry changes nothing
    if kind == "path":  # one atomic rename: no temporary files left next to the pointer
        assert sorted(p.name for p in (tmp_path / "store" / "models" / "m").iterdir()) == [
            "champion.json", "v1", "v2",
        ]  # fmt: skip
        assert json.loads((tmp_path / "store/models/m/champion.json").read_text())["version"] == "v2"
    assert champion_record(root, "m")["reason"] == "better"


def test_gate_passes_the_first_model_and_one_within_the_margin():
    first = gate(metrics(-130.0), None, margin=2.0)
    assert first.passed and "no champion" in first.reason
    assert gate(metrics(-131.5), metrics(-130.0), margin=2.0).passed
    assert gate(metrics(-100.0), metrics(-130.0), margin=0.0).passed


def test_gate_rejects_a_worse_model_and_says_by_how_much():
    result = gate(metrics(-550.0), metrics(-130.0), margin=2.0, champion_version="v1")
    assert not result.passed
    assert "420.00 nats worse than champion v1 (-130.00)" in result.reason and "margin is 2" in result.reason


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_gate_rejects_non_finite_metrics_even_without_a_champion(bad):
    m = metrics(-120.0)
    m["test"]["kl"] = bad
    result = gate(m, None, margin=2.0)
    assert not result.passed and f"test.kl={bad}" in result.reason
    assert not gate({"iwae": 1.0}, None, margin=2.0).passed  # no held-out ELBO at all


def test_version_ids_sort_by_date():
    a = new_version(date(2026, 1, 9), "3f2a9c1e-0000-0000")
    b = new_version(date(2026, 1, 10), "00000000-1111")
    assert a == "20260109-3f2a9c1e" and sorted([b, a]) == [a, b]
