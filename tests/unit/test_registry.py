"""Model registry: versions as loadable checkpoints, idempotent publishing, the gate, promotion by
compare-and-swap on the champion series."""

import json
import math
import threading
import uuid
from datetime import date

import pytest
import torch

from vae_core.config import ModelConfig, VaeflowConfig
from vae_core.data.codecs.vector import VectorCodec
from vae_core.data.storage import create_only_write, filesystem, join
from vae_core.errors import ChampionConflict, RegistryError
from vae_core.models.families import DataShape, build_model
from vae_core.operations.registry import (
    champion,
    champion_record,
    gate,
    gate_against,
    list_versions,
    new_version,
    promote,
    publish_version,
    read_version,
    resolve,
)
from vae_core.training.checkpoints import CheckpointMeta, load_checkpoint, save_checkpoint
from vae_core.training.evaluation import EvalResult
from vae_core.training.model_report import IwaeBound, ModelReport


def _root(tmp_path, kind: str) -> str:
    return str(tmp_path / "store") if kind == "path" else f"memory://reg-{uuid.uuid4().hex[:8]}"


def _checkpoint(root: str, run: str, seed: int = 0) -> str:
    torch.manual_seed(seed)
    cfg = VaeflowConfig(name="m", model=ModelConfig(family="vae", hidden=[8], latent_dim=2))
    shape = DataShape(6)
    model = build_model(cfg.model, shape)
    opt = torch.optim.Adam(model.parameters())
    uri = join(root, "runs", run, "epoch_0001")
    save_checkpoint(
        uri, model, cfg, VectorCodec("x", 6, "float32"), optimizer=opt, meta=CheckpointMeta(epoch=1)
    )
    return uri


def _report(root: str, run: str) -> str:
    uri = join(root, "runs", run, "report")
    fs, path = filesystem(uri)
    fs.makedirs(path, exist_ok=True)
    fs.pipe_file(f"{path}/report.html", b"<html>report</html>")
    fs.pipe_file(f"{path}/metrics.json", b"{}")
    return uri


def metrics(elbo: float, kl: float = 5.0) -> ModelReport:
    return ModelReport(
        test=EvalResult(elbo, -elbo - kl, kl, 100), iwae=IwaeBound(log_likelihood=elbo + 1.0, k=10, n=100)
    )


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
    assert again.report == v.report and again.report.heldout_elbo == -120.0
    assert again.record["source_checkpoint"] == ckpt
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
        promote(root, "m", "v1", "test", expected_seq=None)
    assert champion_record(root, "m") is None


def _two_versions(root: str) -> None:
    publish_version(root, "m", "v1", _checkpoint(root, "r1"), metrics(-120.0))
    publish_version(root, "m", "v2", _checkpoint(root, "r2", seed=1), metrics(-118.0))


@pytest.mark.parametrize("kind", ["path", "memory"])
def test_promote_appends_to_the_champion_series_and_resolve_follows_it(tmp_path, kind):
    root = _root(tmp_path, kind)
    assert champion(root, "m") is None and champion_record(root, "m") is None
    with pytest.raises(RegistryError, match="no champion"):
        resolve(root, "m")
    _two_versions(root)
    first = promote(root, "m", "v1", "first", expected_seq=None, night="2026-01-01", flow_run_id="run-1")
    assert (first.seq, first.previous, first.night, first.flow_run_id) == (0, None, "2026-01-01", "run-1")
    record = promote(root, "m", "v2", "better", expected_seq=first.seq)
    assert (record.seq, record.version, record.previous) == (1, "v2", "v1")
    assert record.uri == join(root, "models", "m", "v2")
    assert champion_record(root, "m") == record and champion_record(root, "m").reason == "better"
    assert champion(root, "m").version == "v2" and resolve(root, "m").version == "v2"
    assert resolve(root, "m", "v1").version == "v1"
    assert list_versions(root, "m") == ["v1", "v2"]  # the champion folder is not a version
    if kind == "path":  # create-only records, no temporary files left beside them
        folder = tmp_path / "store" / "models" / "m" / "champion"
        assert sorted(p.name for p in folder.iterdir()) == ["0000000000.json", "0000000001.json"]
        assert json.loads((folder / "0000000001.json").read_text())["version"] == "v2"


@pytest.mark.parametrize("kind", ["path", "memory"])
def test_a_retried_promotion_is_a_no_op(tmp_path, kind):
    root = _root(tmp_path, kind)
    _two_versions(root)
    first = promote(root, "m", "v1", "first", expected_seq=None)
    record = promote(root, "m", "v2", "better", expected_seq=0)
    # The task retried after its write landed: same version, same expected record.
    assert promote(root, "m", "v2", "retried", expected_seq=0) == record
    # Promoting the version the expected record already names writes nothing either.
    assert promote(root, "m", "v2", "again", expected_seq=1) == record
    assert promote(root, "m", "v1", "retried", expected_seq=None) == first
    assert champion_record(root, "m") == record


def test_the_champion_is_found_from_the_head_and_a_lagging_or_lost_head_costs_no_truth(tmp_path):
    """The head names the latest record, so a read needs no listing of the series; a head behind the
    series (a crash between record and head, a slower concurrent promotion) is probed forward, and a
    lost or broken one falls back to listing."""
    root = _root(tmp_path, "path")
    _two_versions(root)
    head = tmp_path / "store" / "models" / "m" / "champion-head.json"
    promote(root, "m", "v1", "first", expected_seq=None)
    assert json.loads(head.read_text()) == {"seq": 0, "version": "v1"}
    promote(root, "m", "v2", "second", expected_seq=0)
    last = promote(root, "m", "v1", "third", expected_seq=1)
    assert json.loads(head.read_text()) == {"seq": 2, "version": "v1"}
    assert champion_record(root, "m") == last
    head.write_text(json.dumps({"seq": 0, "version": "v1"}))  # left behind
    assert champion_record(root, "m") == last
    for broken in ('{"seq": 9}', "not json", '{"seq": "2"}', "[]"):  # no record 9; not a head
        head.write_text(broken)
        assert champion_record(root, "m") == last, broken
    head.unlink()  # a registry from before the head
    assert champion_record(root, "m") == last
    assert promote(root, "m", "v2", "fourth", expected_seq=2).seq == 3
    assert json.loads(head.read_text())["seq"] == 3


def test_two_promotions_from_one_champion_record_one_wins_on_local_disk(tmp_path):
    root = _root(tmp_path, "path")
    _two_versions(root)
    publish_version(root, "m", "v3", _checkpoint(root, "r3", seed=2), metrics(-117.0))
    promote(root, "m", "v1", "first", expected_seq=None)
    won = promote(root, "m", "v2", "night A", expected_seq=0)
    with pytest.raises(ChampionConflict) as lost:
        promote(root, "m", "v3", "night B", expected_seq=0)  # decided against v1, as night A was
    message = str(lost.value)
    assert "v3 was not promoted" in message and "v2 was promoted over it" in message and "v1" in message
    assert lost.value.current == won and lost.value.expected.version == "v1"
    assert champion_record(root, "m") == won  # moved once
    assert sorted(p.name for p in (tmp_path / "store/models/m/champion").iterdir()) == [
        "0000000000.json", "0000000001.json",
    ]  # fmt: skip


@pytest.mark.parametrize("kind", ["path", "memory"])
def test_concurrent_promotions_from_one_champion_record_exactly_one_lands(tmp_path, kind):
    root = _root(tmp_path, kind)
    versions = [f"v{i}" for i in range(6)]
    for i, v in enumerate(versions):
        publish_version(root, "m", v, _checkpoint(root, f"r{i}", seed=i), metrics(-120.0 + i))
    start = threading.Barrier(len(versions))
    outcomes: dict[str, object] = {}

    def attempt(version: str) -> None:
        start.wait()
        try:
            outcomes[version] = promote(root, "m", version, "race", expected_seq=None)
        except ChampionConflict as e:
            outcomes[version] = e

    threads = [threading.Thread(target=attempt, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [v for v, o in outcomes.items() if not isinstance(o, Exception)]
    assert len(winners) == 1 and len(outcomes) == len(versions)
    assert all(isinstance(o, ChampionConflict) for v, o in outcomes.items() if v not in winners)
    assert champion_record(root, "m").version == winners[0] and champion_record(root, "m").seq == 0


def test_create_only_write_refuses_an_existing_object(tmp_path):
    for uri in (str(tmp_path / "a" / "x.json"), f"memory://cow-{uuid.uuid4().hex[:8]}/x.json"):
        assert create_only_write(uri, b"first") is True
        assert create_only_write(uri, b"second") is False
        fs, path = filesystem(uri)
        assert fs.cat_file(path) == b"first"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x.json"]


def test_an_old_single_pointer_is_not_silently_forgotten(tmp_path):
    root = _root(tmp_path, "path")
    _two_versions(root)
    (tmp_path / "store/models/m/champion.json").write_text(json.dumps({"version": "v1"}))
    with pytest.raises(RegistryError, match=r"old layout.*'v1'"):
        champion_record(root, "m")
    promote(root, "m", "v1", "carried over", expected_seq=None)
    assert champion_record(root, "m").version == "v1"


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
    result = gate(metrics(-120.0, kl=bad), None, margin=2.0)
    assert not result.passed and f"test.kl={bad}" in result.reason
    no_elbo = gate(ModelReport(active_units=1), None, margin=2.0)  # no held-out ELBO at all
    assert not no_elbo.passed and "candidate has no held-out ELBO" in no_elbo.reason


@pytest.mark.parametrize(
    "champ",
    [
        {},
        {"test": {"elbo": float("nan"), "recon": 1.0, "kl": 1.0, "n": 10}},
        {"test": {"elbo": None, "recon": 1.0, "kl": 1.0, "n": 10}},  # how a NaN ELBO is written
    ],
)
def test_gate_fails_against_a_champion_without_a_finite_held_out_elbo(champ):
    result = gate(metrics(-120.0), ModelReport.from_dict(champ), margin=2.0, champion_version="v1")
    assert not result.passed and "champion v1 has no finite held-out ELBO" in result.reason


def test_gate_against_a_champion_reads_its_metrics_strictly(tmp_path):
    root = _root(tmp_path, "path")
    _two_versions(root)
    record = promote(root, "m", "v1", "first", expected_seq=None)
    ok = gate_against(metrics(-119.0), record, margin=2.0)
    assert ok.passed and ok.champion_version == "v1" and ok.champion_report.heldout_elbo == -120.0
    metrics_file = tmp_path / "store/models/m/v1/metrics.json"
    metrics_file.unlink()
    missing = gate_against(metrics(-119.0), record, margin=2.0)
    assert not missing.passed and missing.champion_version == "v1"
    assert "champion v1 has no readable metrics" in missing.reason
    assert f"{join(record.uri, 'metrics.json')}: missing" in missing.reason
    metrics_file.write_text("{not json")
    assert "not JSON" in gate_against(metrics(-119.0), record, margin=2.0).reason
    metrics_file.write_text("[]")
    assert "not a JSON object but list" in gate_against(metrics(-119.0), record, margin=2.0).reason
    for wrong in ({"test": "x"}, {"test": {}}):  # a test section that is not the ELBO terms
        metrics_file.write_text(json.dumps(wrong))
        result = gate_against(metrics(-119.0), record, margin=2.0)
        assert not result.passed and "champion v1 has no readable metrics" in result.reason
        assert "not a model report (test" in result.reason
    metrics_file.write_text("{}")  # present but empty: read, then no held-out ELBO to compare with
    empty = gate_against(metrics(-119.0), record, margin=2.0)
    assert not empty.passed and "no finite held-out ELBO" in empty.reason
    assert gate_against(metrics(-119.0), None, margin=2.0).passed  # no champion at all


def test_a_version_keeps_non_finite_metrics_as_null_and_the_gate_still_sees_them(tmp_path):
    root = _root(tmp_path, "path")
    publish_version(root, "m", "v1", _checkpoint(root, "r1"), metrics(-120.0, kl=float("inf")))
    metrics_file = tmp_path / "store/models/m/v1/metrics.json"
    assert json.loads(metrics_file.read_text())["test"]["kl"] is None  # strict JSON on disk
    stored = read_version(root, "m", "v1").report
    assert math.isnan(stored.test.kl) and stored.heldout_elbo == -120.0
    assert "test.kl=nan" in gate(stored, None, margin=2.0).reason
    metrics_file.write_text("{not json")
    with pytest.raises(RegistryError, match=r"metrics\.json: not JSON"):
        read_version(root, "m", "v1")


def test_version_ids_sort_by_date():
    a = new_version(date(2026, 1, 9), "3f2a9c1e-0000-0000")
    b = new_version(date(2026, 1, 10), "00000000-1111")
    assert a == "20260109-3f2a9c1e" and sorted([b, a]) == [a, b]
