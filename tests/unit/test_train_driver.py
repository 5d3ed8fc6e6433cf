"""vaeflow train's driver before the trainer starts: the codec fits in a background thread while the
local cluster starts in the calling thread (trainer.prepare_data's `meanwhile`, trainer._alongside)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

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
    with pytest.raises(ValueError, match="schema differs"):
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
