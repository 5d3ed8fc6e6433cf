"""Embed jobs into Delta tables on S3 under faults (scenarios 5, 6, 7, 9, 10).

Each job is a driver subprocess on the module's Ray cluster (a kill or a hang hits it, not pytest),
talking to S3 through the proxy. The proxy can hold every data-file PUT after the first N, which
parks a job at a known share of its work (8 of 16 files: ~50%) before it is hurt. Outputs are read
back directly from moto with plain `deltalake` (and polars once), never with vaeflow's reader.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from tests.faults._helpers import (
    Lines,
    descendants,
    finish,
    python,
    tail,
    train_config,
    vector_rows,
    wait_for,
    write_dataset,
)
from tests.faults.conftest import S3, Outcome, RayCluster
from vae_core.data.codecs.vector import VectorCodec
from vae_core.models.families import DataShape, build_model
from vae_core.training.checkpoints import CheckpointMeta, save_checkpoint
from vae_core.training.loop import KLSchedule, fit

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(600, method="signal")]

ROWS, SHARDS, ROWS_PER_FILE = 2000, 8, 125  # 16 data files per job
FILES = ROWS // ROWS_PER_FILE
JOB = {
    "job": {"rows_per_file": ROWS_PER_FILE, "chunk_rows": ROWS_PER_FILE},
    "compute": {"num_workers": 1, "cpus_per_worker": 0.5},
}

EMBED_DRIVER = """
import json, sys
from vae_core.config import ComputeConfig, EmbedConfig
from vae_core.distributed.embed import embed_corpus
args = json.loads(sys.argv[1])
c = embed_corpus(args.pop("model"), args.pop("input"), args.pop("output"),
                 EmbedConfig(**args.pop("job")), ComputeConfig(**args.pop("compute")),
                 progress=lambda m: print(m, flush=True), **args)
result = {"table_uri": c.table_uri, "version": c.version, "rows": c.rows, "skipped": c.skipped,
          "run_key": c.record.run_key, "rows_embedded": c.record.stats.get("rows_embedded"),
          "rows_resumed": c.record.stats.get("rows_resumed")}
print("RESULT", json.dumps(result), flush=True)
"""


@dataclass
class Job:
    returncode: int | None
    output: str

    @property
    def tail(self) -> str:
        return tail(self.returncode, self.output)

    @property
    def result(self) -> dict[str, Any]:
        assert "RESULT" in self.output, f"the job gave no result (rc {self.returncode}):\n{self.tail}"
        return json.loads(self.output.rsplit("RESULT", 1)[1].strip().splitlines()[0])


class Batch:
    """What the scenarios share: the module's bucket, corpus, model and cluster."""

    def __init__(self, s3: S3, cluster: RayCluster) -> None:
        self.s3, self.cluster = s3, cluster
        self.bucket = s3.bucket()
        self.name = self.bucket.removeprefix("s3://")
        self.corpus = f"{self.bucket}/corpus"
        write_dataset(s3.fs(), f"{self.name}/corpus", train_rows=ROWS, test_rows=64, shards=SHARDS)
        self.corpus += "/train"
        self.ids = set(range(ROWS))
        self.model = f"{self.bucket}/model"
        self._save_model()

    def _save_model(self) -> None:
        cfg = train_config(self.corpus, "unused")
        shape = DataShape(32, None)
        torch.manual_seed(0)
        model = build_model(cfg.model, shape)
        x = torch.from_numpy(np.stack(vector_rows(512).column("x").to_numpy(zero_copy_only=False)))
        fit(model, [x[i : i + 64] for i in range(0, 512, 64)], epochs=2, schedule=KLSchedule(1.0))
        codec = VectorCodec("x", 32, "float32")
        save_checkpoint(self.model, model, cfg, codec, meta=CheckpointMeta(epoch=2))

    def launch(self, output: str, **kw: Any):
        args = {"model": self.model, "input": self.corpus, "output": output, **JOB, **kw}
        return python(EMBED_DRIVER, json.dumps(args), env=self.cluster.env)

    def run(self, output: str, timeout: float = 180, **kw: Any) -> Job:
        return Job(*finish(self.launch(output, **kw), timeout))

    def delta_options(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.s3.direct,
            "AWS_ALLOW_HTTP": "true",
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"],
        }

    def table(self, uri: str, version: int | None = None) -> Any:
        from deltalake import DeltaTable

        return DeltaTable(uri, version=version, storage_options=self.delta_options())

    def committed(self, uri: str) -> bool:
        fs = self.s3.fs()
        log = f"{uri.removeprefix('s3://')}/_delta_log"
        return fs.exists(log) and any(p.endswith(".json") for p in fs.ls(log))

    def check(self, uri: str, expected: set[int], scenario: Outcome) -> list[int]:
        """Read the table with plain deltalake; every committed file exists; count lost and duplicated."""
        table = self.table(uri)
        fs = self.s3.fs()
        missing = [f for f in table.file_uris() if not fs.exists(f)]
        assert not missing, f"the commit references missing files: {missing}"
        ids = table.to_pyarrow_table(columns=["id"]).column("id").to_pylist()
        scenario.rows_lost += len(expected - set(ids))
        scenario.rows_duplicated += len(ids) - len(set(ids))
        return ids

    def commit_log(self, uri: str) -> dict[int, list[str]]:
        """{table version: run keys of the vaeflow txn actions in that commit}, read from _delta_log."""
        fs, log = self.s3.fs(), f"{uri.removeprefix('s3://')}/_delta_log"
        out: dict[int, list[str]] = {}
        for path in sorted(p for p in fs.ls(log) if p.endswith(".json")):
            version = int(path.rsplit("/", 1)[1].split(".")[0])
            actions = [json.loads(line) for line in fs.cat(path).decode().splitlines() if line.strip()]
            out[version] = [a["txn"]["appId"].removeprefix("vaeflow-") for a in actions if "txn" in a]
        return out

    def data_files(self, uri: str) -> list[str]:
        return [p for p in self.s3.fs().ls(uri.removeprefix("s3://")) if p.endswith(".parquet")]

    def checksums(self, uri: str) -> tuple[str, dict[str, str]]:
        """sha256 of the rows sorted by id, and of each committed data file (by name)."""
        table = self.table(uri)
        rows = table.to_pyarrow_table().sort_by("id")
        digest = hashlib.sha256()
        digest.update(rows.column("id").to_numpy().tobytes())
        digest.update(
            np.stack(rows.column("z_mean").to_numpy(zero_copy_only=False)).astype(np.float32).tobytes()
        )
        fs = self.s3.fs()
        files = {f.rsplit("/", 1)[1]: hashlib.sha256(fs.cat(f)).hexdigest() for f in table.file_uris()}
        return digest.hexdigest(), files

    def listing(self, prefix: str) -> dict[str, tuple[int, str]]:
        """Every object under prefix with its size and ETag (direct, no cache)."""
        client, out = self.s3.client(), {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = (obj["Size"], obj["ETag"])
        return out


@pytest.fixture(scope="module")
def batch(s3: S3, ray_cluster: RayCluster) -> Batch:
    return Batch(s3, ray_cluster)


@pytest.fixture(scope="module")
def baseline(batch: Batch) -> str:
    """A fault-free job: the reference output of scenarios 7 and 9."""
    out = f"{batch.bucket}/baseline"
    job = batch.run(out)
    assert job.returncode == 0 and job.result["rows"] == ROWS, job.tail
    return out


def _park_after_half(batch: Batch, out: str) -> None:
    """Hold every data-file PUT of `out` after the first half of them."""
    batch.s3.proxy.hold_matching(f"PUT /{batch.name}/{out.split('/', 3)[3]}/part-", after=FILES // 2)


def _parked(batch: Batch, proc, what: str) -> None:
    wait_for(
        lambda: batch.s3.proxy.stats()["blackholed"] > 0 or proc.poll() is not None, 150, f"{what} to park"
    )
    assert proc.poll() is None, f"the job ended before it was parked:\n{proc.communicate()[0][-3000:]}"


@pytest.mark.scenario(
    5, "embed driver SIGKILL at ~50%, rerun -> resumes the finished shards, every input id exactly once"
)
def test_an_embed_driver_killed_halfway_then_rerun_gives_every_id_once(
    batch: Batch, scenario: Outcome
) -> None:
    out = f"{batch.bucket}/killed-driver"
    _park_after_half(batch, out)
    driver = batch.launch(out)
    try:
        _parked(batch, driver, "the job")
    finally:
        driver.send_signal(signal.SIGKILL)
        finish(driver, 30)
        written = len(batch.data_files(out))  # before the held PUT is let go (a dying actor may retry it)
        batch.s3.proxy.clear()
    assert not batch.committed(out), "the killed job committed"
    rerun = batch.run(out)
    scenario.detail = f"killed with {written}/{FILES} data files written; rerun rc={rerun.returncode}"
    assert rerun.returncode == 0 and not rerun.result["skipped"], rerun.tail
    # One actor, shards in order, each marked done after its files: the files written before the
    # kill are those of finished shards, and the rerun takes them over instead of embedding them again.
    resumed, embedded = rerun.result["rows_resumed"], rerun.result["rows_embedded"]
    assert resumed == written * ROWS_PER_FILE > 0 and resumed + embedded == ROWS, rerun.tail
    assert "resuming run" in rerun.output
    ids = batch.check(out, batch.ids, scenario)
    assert sorted(ids) == sorted(batch.ids)
    import polars as pl  # a second, independent Delta reader

    frame = pl.read_delta(out, storage_options=batch.delta_options())
    assert frame.height == ROWS and frame["id"].n_unique() == ROWS


@pytest.mark.scenario(6, "a map actor SIGKILLed mid-job -> every input id exactly once")
def test_a_map_actor_killed_mid_job_still_gives_every_id_once(batch: Batch, scenario: Outcome) -> None:
    out = f"{batch.bucket}/killed-actor"
    _park_after_half(batch, out)
    driver = batch.launch(out)
    try:
        _parked(batch, driver, "the job")
        actors = descendants("ray::MapWorker")
        assert actors, "no map actor process found"
        actors[0].send_signal(signal.SIGKILL)
        time.sleep(1)
        batch.s3.proxy.clear()
    finally:
        job = Job(*finish(driver, 180))
        batch.s3.proxy.clear()
    scenario.detail = f"killed actor pid {actors[0].pid} halfway; job rc={job.returncode}"
    assert job.returncode == 0, job.tail
    assert job.result["rows"] == ROWS
    ids = batch.check(out, batch.ids, scenario)
    assert sorted(ids) == sorted(batch.ids)


@pytest.mark.scenario(7, "rerun of a committed job -> no new commit, object listing unchanged")
def test_rerunning_a_committed_job_commits_nothing_and_writes_nothing(
    batch: Batch, baseline: str, scenario: Outcome
) -> None:
    prefix = baseline.split("/", 3)[3] + "/"
    before = batch.listing(prefix)
    version = batch.table(baseline).version()
    again = batch.run(baseline)
    assert again.returncode == 0, again.tail
    assert again.result["skipped"] and again.result["version"] == version, again.result
    assert batch.table(baseline).version() == version
    after = batch.listing(prefix)
    assert after == before, {
        "added": sorted(set(after) - set(before)),
        "removed": sorted(set(before) - set(after)),
        "changed": sorted(k for k in set(after) & set(before) if after[k] != before[k]),
    }
    batch.check(baseline, batch.ids, scenario)
    scenario.detail = (
        f"rerun skipped at version {version}; {len(after)} objects unchanged (keys, sizes, ETags)"
    )


@pytest.mark.scenario(
    9, "first S3 connections reset or delayed -> job succeeds, output identical by checksum"
)
def test_reset_and_delayed_s3_connections_leave_the_output_identical(
    batch: Batch, baseline: str, scenario: Outcome
) -> None:
    reference = batch.checksums(baseline)
    details = []
    for label, faults in (
        ("first 3 connections reset at accept, next 3 delayed 2 s", [("reset", 3, 0), ("delay", 3, 2.0)]),
        ("first 4 connections reset after 600 request bytes", [("reset", 4, 600)]),
    ):
        out = f"{batch.bucket}/faulted-{len(details)}"
        batch.s3.proxy.clear()
        batch.s3.proxy.zero()
        for kind, n, arg in faults:
            batch.s3.proxy.reset(n, after_bytes=int(arg)) if kind == "reset" else batch.s3.proxy.delay(n, arg)
        job = batch.run(out)
        stats = batch.s3.proxy.clear()
        details.append(f"{label}: rc={job.returncode}, {stats['reset']} reset, {stats['delayed']} delayed")
        scenario.detail = "; ".join(details)
        assert job.returncode == 0, f"{label}:\n{job.tail}"
        assert stats["reset"] + stats["delayed"] == sum(n for _, n, _ in faults), stats
        batch.check(out, batch.ids, scenario)
        assert batch.checksums(out) == reference, f"{label}: the output differs from the fault-free run"


@pytest.mark.scenario(
    10, "two concurrent embed jobs into one table -> both row sets correct or one clean failure"
)
def test_two_concurrent_jobs_into_one_table_both_land_or_one_fails_cleanly(
    batch: Batch, scenario: Outcome
) -> None:
    second = f"{batch.bucket}/corpus-b/train"
    write_dataset(batch.s3.fs(), f"{batch.name}/corpus-b", 1000, test_rows=64, shards=4, first_id=100_000)
    ids_b = set(range(100_000, 101_000))
    out = f"{batch.bucket}/shared"
    # Both commits are held until both jobs have mapped all their rows, then sent on together: a real
    # race for version 0 (without the hold, one job usually commits seconds before the other starts).
    batch.s3.proxy.hold_matching(f"PUT /{batch.name}/shared/_delta_log/", forward=True)
    jobs = {"A": batch.launch(out, mode="append"), "B": batch.launch(out, mode="append", input=second)}
    lines = {k: Lines(p) for k, p in jobs.items()}
    try:
        wait_for(
            lambda: all("(100%)" in ln.text() or ln.proc.poll() is not None for ln in lines.values()),
            200,
            "both jobs to finish mapping",
        )
        time.sleep(2)  # into their commits (held)
    finally:
        held = batch.s3.proxy.clear()["blackholed"]
    results = {k: Job(*ln.finish(180)) for k, ln in lines.items()}
    codes = {k: j.returncode for k, j in results.items()}
    versions = {k: j.result["version"] for k, j in results.items() if j.returncode == 0}
    scenario.detail = (
        f"{held} commit requests held and released together; return codes {codes}, versions {versions}"
    )
    assert None not in codes.values(), f"a job hung: {codes}"
    expected = {"A": batch.ids, "B": ids_b}
    landed = {k for k, j in results.items() if j.returncode == 0}
    for k in set(results) - landed:
        out_k = results[k].output
        assert "another writer committed" in out_k or "TableConflict" in out_k, (
            f"job {k} failed unclearly:\n{out_k[-3000:]}"
        )
    assert landed, "neither job committed"
    # Each job's reported version is the commit that carries its run key (a night is read back by it).
    log = batch.commit_log(out)
    scenario.detail += f"; log: {{version: run keys}} = {log}"
    for k in landed:
        key = results[k].result["run_key"]
        assert key in log.get(versions[k], []), (
            f"job {k} reports version {versions[k]}, but its commit (run key {key[:12]}) is version "
            f"{[v for v, keys in log.items() if key in keys]}"
        )
    ids = batch.check(out, set().union(*(expected[k] for k in landed)), scenario)
    assert set(ids) == set().union(*(expected[k] for k in landed))
    if landed != set(results):
        # The loser's clean failure is recoverable: its rerun appends its rows.
        (loser,) = set(results) - landed
        kw = {"mode": "append", **({"input": second} if loser == "B" else {})}
        rerun = batch.run(out, **kw)
        assert rerun.returncode == 0, rerun.tail
        ids = batch.check(out, batch.ids | ids_b, scenario)
        assert sorted(ids) == sorted(batch.ids | ids_b)
        scenario.detail += f"; {loser} failed cleanly and its rerun appended its rows"


@pytest.mark.scenario(15, "the Delta commit request is reset -> the job retries it and commits exactly once")
def test_a_reset_commit_request_is_retried_and_commits_once(batch: Batch, scenario: Outcome) -> None:
    out = f"{batch.bucket}/reset-commit"
    # Hold the job's first commit request (the create-only PUT of _delta_log/...00.json), then reset
    # it: the object store never takes it, and the job must send it again rather than die.
    batch.s3.proxy.hold_matching(f"PUT /{batch.name}/reset-commit/_delta_log/", forward=False)
    lines = Lines(batch.launch(out))
    try:
        wait_for(
            lambda: batch.s3.proxy.stats()["blackholed"] >= 1 or lines.proc.poll() is not None,
            200,
            "the job's commit request",
        )
        time.sleep(1)
    finally:
        held = batch.s3.proxy.clear()["blackholed"]
    job = Job(*lines.finish(180))
    scenario.detail = f"{held} commit request(s) held and reset; rc={job.returncode}"
    assert job.returncode == 0, job.tail
    assert held >= 1, "the commit request was never held: the fault did not happen"
    log = batch.commit_log(out)
    assert sum(len(keys) for keys in log.values()) == 1, f"commits: {log}"
    batch.check(out, batch.ids, scenario)
