"""Helpers for the fault tier: tiny datasets, drivers in subprocesses, waiting, process lookup."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from vae_core.config import VaeflowConfig

DIM = 32  # features per row: small, so an epoch is a second or two on 2 cores
ROOT = Path(__file__).resolve().parents[2]


def vector_rows(n: int, start_id: int = 0, seed: int = 0) -> pa.Table:
    """Binary vectors from a 2-D latent through one fixed map (structured data a VAE can fit)."""
    w = np.random.default_rng(1234).normal(size=(2, DIM)) * 6.0
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    x = (rng.random((n, DIM)) < 1 / (1 + np.exp(-z @ w))).astype(np.float32)
    flat = pa.array(x.reshape(-1), type=pa.float32())
    return pa.table(
        {
            "id": pa.array(np.arange(start_id, start_id + n), type=pa.int64()),
            "x": pa.FixedSizeListArray.from_arrays(flat, DIM),
        }
    )


def write_dataset(
    fs: Any, root: str, train_rows: int, test_rows: int, shards: int = 4, first_id: int = 0
) -> None:
    """Parquet shards under root/train and root/test (root: a path inside `fs`); train ids count
    from `first_id`."""
    per = train_rows // shards
    for i in range(shards):
        _write(
            fs, f"{root}/train/part-{i:03d}.parquet", vector_rows(per, first_id + i * per, seed=first_id + i)
        )
    _write(fs, f"{root}/test/part-000.parquet", vector_rows(test_rows, 10**6, seed=99))


def _write(fs: Any, path: str, table: pa.Table) -> None:
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as f:
        pq.write_table(table, f)


def train_config(data_uri: str, runs_uri: str, **train: Any) -> VaeflowConfig:
    return VaeflowConfig.model_validate(
        {
            "name": "faults",
            "data": {"uri": data_uri, "vector_column": "x"},
            "model": {"family": "vae", "hidden": [64], "latent_dim": 4},
            # cache_mb 0: every epoch streams from S3 and takes about as long as the first, so a kill
            # timed after checkpoint N lands inside epoch N + 1 (a cached epoch can finish first). The
            # cached path's restart is tested in tests/integration/test_train_ray.py.
            "train": {"epochs": 3, "batch_size": 16, "runs_uri": runs_uri, "cache_mb": 0, **train},
            "compute": {"num_workers": 2, "cpus_per_worker": 1, "data_cpus": 1, "torch_threads": 1},
        }
    )


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def python(code: str, *args: str, env: dict[str, str]) -> subprocess.Popen:
    """`python -c code args` with the repository on the path; output (both streams) to a pipe."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
    )


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int | None, str]:
    """Wait for a subprocess; a hang is killed and reported as returncode None (never a pytest hang)."""
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        out, _ = proc.communicate(timeout=30)
        return None, out


class Lines:
    """Collects a subprocess's output in a thread, so a test can wait on what it has printed."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.lines = proc, []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)

    def finish(self, timeout: float) -> tuple[int | None, str]:
        """Like finish(): a hang is killed and reported as returncode None."""
        try:
            self.proc.wait(timeout=timeout)
            hung = False
        except subprocess.TimeoutExpired:
            kill_tree(self.proc.pid)
            self.proc.wait(timeout=30)
            hung = True
        self.thread.join(timeout=10)
        return (None if hung else self.proc.returncode), self.text()


def kill_tree(pid: int) -> None:
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    for p in [*parent.children(recursive=True), parent]:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def descendants(*names: str) -> list[psutil.Process]:
    """This test process's descendants whose command line starts with one of `names` (Ray workers of
    the module's own cluster: other sessions' clusters on the machine are not ours to touch)."""
    found = []
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            cmd = p.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if cmd and any(cmd[0].startswith(n) for n in names):
            found.append(p)
    return found


TRAIN_DRIVER = """
import json, sys
from vae_core.config import VaeflowConfig
from vae_core.distributed.trainer import train_on_ray
cfg = VaeflowConfig.from_file(sys.argv[1])
result = train_on_ray(cfg, run_name=sys.argv[2], resume=sys.argv[3] == "resume")
print("RESULT_META", result.checkpoint.meta.to_json(), flush=True)
print("RESULT_URI", result.checkpoint_uri, flush=True)
"""


def tail(returncode: int | None, output: str) -> str:
    """For assertion messages: the return code and the last exception line, then the output's end."""
    errors = [ln.strip() for ln in output.splitlines() if re.match(r"^\s*[\w.]+(Error|Exception): ", ln)]
    return f"rc {returncode}: {errors[-1] if errors else 'no exception'}\n{output[-4000:]}"


@dataclass
class DriverRun:
    returncode: int | None  # None: it hung and was killed
    output: str

    @property
    def meta(self) -> dict[str, Any]:
        assert "RESULT_META" in self.output, f"driver gave no result (rc {self.returncode}):\n{self.tail}"
        return json.loads(self.output.split("RESULT_META", 1)[1].strip().splitlines()[0])

    @property
    def epochs(self) -> list[int]:
        return [h["epoch"] for h in self.meta["history"]]

    @property
    def tail(self) -> str:
        return tail(self.returncode, self.output)


def launch_training(cfg: VaeflowConfig, run_name: str, env: dict[str, str], tmp: Path, resume: bool = False):
    config_file = tmp / f"{run_name}-{time.monotonic_ns()}.json"
    config_file.write_text(cfg.to_json())
    return python(TRAIN_DRIVER, str(config_file), run_name, "resume" if resume else "new", env=env)


def run_training(
    cfg: VaeflowConfig, run_name: str, env: dict[str, str], tmp: Path, resume: bool = False, timeout=240
) -> DriverRun:
    return DriverRun(*finish(launch_training(cfg, run_name, env, tmp, resume), timeout))
