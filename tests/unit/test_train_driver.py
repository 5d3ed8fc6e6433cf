"""vaeflow train's driver before the trainer starts: the codec fits in a background thread while the
local cluster starts in the calling thread (trainer.prepare_data's `meanwhile`, trainer._alongside)."""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vae_core.errors import ConfigError, DataError

TABLE = {"id": list(range(40)), "age": [20.0 + i for i in range(40)], "city": ["a", "b"] * 20}


def _dataset(root, train: dict, test: dict) -> dict:
    for split, columns in (("train", train), ("test", test)):
        (root / split).mkdir(parents=True)
        pq.write_table(pa.table(columns), root / split / "part-0.parquet")
    return {"uri": str(root), "vector_column": None}


def test_the_codec_fits_in_another_thread_while_the_cluster_starts_in_the_callers(tmp_path):
    """prepare_data's `meanwhile` (the cluster's start) runs once, in the calling thread, after the
    splits are checked; the codec it returns is the one fitted without it."""
    import threading

    from vae_core.config import VaeflowConfig
    from vae_core.data.codecs import codec_to_json
    from vae_core.distributed.trainer import prepare_data

    cfg = VaeflowConfig.model_validate({"data": _dataset(tmp_path, TABLE, TABLE)})
    calls: list[threading.Thread] = []
    *_, codec = prepare_data(cfg, lambda m: None, meanwhile=lambda: calls.append(threading.current_thread()))
    assert calls == [threading.current_thread()]
    *_, alone = prepare_data(cfg, lambda m: None)
    assert codec_to_json(codec) == codec_to_json(alone)

    # A validation split whose schema differs: refused before the cluster would start.
    other = VaeflowConfig.model_validate({"data": _dataset(tmp_path / "b", TABLE, {"id": [1], "age": [1.0]})})
    with pytest.raises(DataError, match="schema differs"):
        prepare_data(other, lambda m: None, meanwhile=lambda: calls.append(threading.current_thread()))
    assert len(calls) == 1


def test_alongside_runs_both_at_once_and_raises_either_ones_error():
    import contextvars
    import threading
    import time

    from vae_core.distributed.trainer import _alongside

    # Each waits for the other: run one after the other, both would time out.
    fitting, started = threading.Event(), threading.Event()
    who = contextvars.ContextVar("who", default="nobody")
    who.set("caller")

    def work() -> str:
        fitting.set()
        assert started.wait(10)
        return who.get()  # the caller's context went along

    def meanwhile() -> None:
        started.set()
        assert fitting.wait(10)

    assert _alongside(work, meanwhile) == "caller"

    def bad_work() -> str:
        raise ValueError("bad row in train/part-0.parquet")

    with pytest.raises(ValueError, match="bad row"):
        _alongside(bad_work, lambda: None)

    def failing_start() -> None:
        raise RuntimeError("cluster too small")

    never = threading.Event()
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="too small"):
        _alongside(lambda: never.wait(30), failing_start)  # raised at once, not after the fit
    assert time.perf_counter() - t0 < 5
    never.set()


def test_then_starts_in_the_callers_thread_while_the_fit_runs_and_not_after_it_failed(tmp_path):
    """`then` (the trainer's start, _Launch.start) runs after `meanwhile` in the calling thread while
    the codec still fits: it gets the checked splits and no codec. A fit that has already failed
    when the cluster is up starts no trainer."""
    import threading

    from vae_core.config import VaeflowConfig
    from vae_core.distributed.trainer import _alongside, prepare_data

    cfg = VaeflowConfig.model_validate({"data": _dataset(tmp_path, TABLE, TABLE)})
    order, seen = [], []

    def then(spec, schema, shards, codec) -> None:
        order.append("then")
        seen.append((threading.current_thread(), spec.feature_columns, schema.names, sorted(shards), codec))

    *_, codec = prepare_data(cfg, lambda m: None, meanwhile=lambda: order.append("meanwhile"), then=then)
    assert order == ["meanwhile", "then"]
    thread, columns, names, splits, given = seen[0]
    assert thread is threading.current_thread() and given is None and splits == ["train", "val"]
    assert [n for n in names if n in columns] == codec.columns  # what the datasets read: the codec's

    # The fit failed while the cluster started: no trainer starts, the fit's error is raised.
    failed = threading.Event()

    def bad_work() -> None:
        failed.set()
        raise ValueError("bad row in train/part-0.parquet")

    with pytest.raises(ValueError, match="bad row"):
        _alongside(bad_work, lambda: failed.wait(10), lambda: order.append("started anyway"))
    assert order == ["meanwhile", "then"]

    # A likelihood that does not fit the data is found with the fit: no trainer starts for it either.
    bernoulli = cfg.model_copy(update={"model": cfg.model.model_copy(update={"likelihood": "bernoulli"})})
    with pytest.raises(ConfigError, match=r"model\.likelihood 'bernoulli' does not fit"):
        prepare_data(bernoulli, lambda m: None, meanwhile=lambda: time.sleep(2), then=then)
    assert len(seen) == 1


def test_a_setting_that_a_stored_run_predates_counts_as_its_default_when_resuming():
    import json

    from vae_core.config import VaeflowConfig
    from vae_core.distributed.runs import config_differences

    cfg = VaeflowConfig.model_validate({"name": "t", "data": {"uri": "/d"}, "train": {"lr": 0.01}})
    stored = json.loads(cfg.to_json())
    del stored["train"]["lr_schedule"]  # a run recorded before train.lr_schedule existed
    assert config_differences(stored, json.loads(cfg.to_json())) == {}
    cosine = json.loads(cfg.with_overrides(["train.lr_schedule=cosine"]).to_json())
    assert config_differences(stored, cosine) == {"train.lr_schedule": ("constant", "cosine")}
    other_lr = json.loads(cfg.with_overrides(["train.lr=0.02"]).to_json())
    assert config_differences(stored, other_lr) == {"train.lr": (0.01, 0.02)}
