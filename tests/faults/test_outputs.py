"""Where a job may write, what `vaeflow vacuum` may delete, and appends that must add each id once
(scenarios 16-22), and maintenance killed mid-compaction (24).

Each scenario is a mistake a user can type: an output pointed at a model's folder, at a folder of
other files or into the training data, a run name that climbs out of its folder, and a VACUUM of a
table folder that holds files the table never wrote. The commands run as a user runs them (`vaeflow`
in a subprocess, on the module's Ray cluster, S3 through the proxy); S3 is observed directly.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults._helpers import Lines, kill_tree, train_config, vector_rows, wait_for, write_dataset
from tests.faults.conftest import S3, Outcome, RayCluster
from tests.faults.test_batch import JOB, Batch, Job
from vae_core.data.codecs.vector import VectorCodec
from vae_core.models.families import DataShape, build_model
from vae_core.training.checkpoints import CheckpointMeta, save_checkpoint

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(600, method="signal")]

VAEFLOW = str(Path(sys.executable).with_name("vaeflow"))


@pytest.fixture(scope="module")
def batch(s3: S3, ray_cluster: RayCluster) -> Batch:
    return Batch(s3, ray_cluster)


def vaeflow(batch: Batch, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [VAEFLOW, *args], env=batch.cluster.env, capture_output=True, text=True, timeout=300, check=False
    )


def embed(batch: Batch, output: str, *more: str) -> subprocess.CompletedProcess:
    return vaeflow(batch, "embed", "--model", batch.model, "--input", batch.corpus, "--output", output, *more)


def one_line_exit_2(done: subprocess.CompletedProcess, *named: str) -> str:
    err = done.stderr.strip()
    assert done.returncode == 2, f"rc {done.returncode}:\n{done.stdout[-2000:]}\n{err[-3000:]}"
    assert len(err.splitlines()) <= 2 and "Traceback" not in err, err
    for name in named:
        assert name in err, err
    return err


@pytest.mark.scenario(
    16, "embed --output at a model's folder or a folder of other files -> refused, the files untouched"
)
def test_an_output_holding_a_model_or_other_files_is_refused_and_left_as_it_was(
    batch: Batch, scenario: Outcome
) -> None:
    fs = batch.s3.fs()
    model_prefix = batch.model.split("/", 3)[3] + "/"
    before = batch.listing(model_prefix)
    assert any(k.endswith("model.safetensors") for k in before)
    err = one_line_exit_2(embed(batch, batch.model), "overlaps the model")
    assert batch.listing(model_prefix) == before, "the model's folder changed"

    shared = f"{batch.bucket}/shared"
    fs.pipe(f"{batch.name}/shared/notes.txt", b"another team's notes")
    fs.pipe(f"{batch.name}/shared/run/meta.json", b"{}")
    held = batch.listing("shared/")
    err2 = one_line_exit_2(embed(batch, shared), "notes.txt", "run/")
    assert batch.listing("shared/") == held, "the folder of other files changed"
    assert not batch.committed(shared)
    scenario.detail = f"refused: {err.split('error: ')[-1][:120]} | {err2.split('error: ')[-1][:120]}"


@pytest.mark.scenario(
    17, "vacuum --delete of a table folder holding files the table never added -> only replaced files go"
)
def test_vacuum_deletes_only_files_its_table_replaced(batch: Batch, scenario: Outcome) -> None:
    out = f"{batch.bucket}/vacuumed"
    first = batch.run(out)
    assert first.returncode == 0, first.tail
    replaced = set(batch.table(out).file_uris())
    second = batch.run(out, mode="overwrite", job={**JOB["job"], "with_logvar": True})
    assert second.returncode == 0, second.tail
    current = set(batch.table(out).file_uris())
    # Files that someone else put into the table's folder afterwards (a model, notes, a stray Parquet).
    fs = batch.s3.fs()
    foreign = {
        f"{batch.name}/vacuumed/model.safetensors": b"weights",
        f"{batch.name}/vacuumed/notes/readme.txt": b"notes",
        f"{batch.name}/vacuumed/part-00000-not-from-this-table.parquet": b"PAR1",
    }
    for path, data in foreign.items():
        fs.pipe(path, data)
    done = vaeflow(batch, "vacuum", "--table", out, "--retention-hours", "0", "--delete")
    assert done.returncode == 0, done.stderr[-3000:]
    left = {p for p in fs.find(f"{batch.name}/vacuumed") if "/_delta_log/" not in p}
    assert set(foreign) <= left, f"vacuum deleted files its table never added: {set(foreign) - left}"
    assert {u.removeprefix("s3://") for u in current} <= left, "vacuum deleted the current version's files"
    assert not {u.removeprefix("s3://") for u in replaced} & left, "the replaced files are still there"
    ids = batch.check(out, batch.ids, scenario)
    assert sorted(ids) == sorted(batch.ids)
    scenario.detail = f"deleted the {len(replaced)} replaced files; {len(foreign)} foreign files kept"


@pytest.mark.scenario(
    18, "embed --output inside the model's training split -> refused, the dataset untouched"
)
def test_an_output_inside_the_training_data_is_refused(batch: Batch, scenario: Outcome) -> None:
    # A model trained on a dataset root: an embedding inside its train split would be read as training
    # rows by the next run, though the embed's input is another folder.
    data = f"{batch.bucket}/dataset"
    write_dataset(batch.s3.fs(), f"{batch.name}/dataset", train_rows=64, test_rows=16, shards=1)
    model = f"{batch.bucket}/dataset-model"
    save_checkpoint(
        model, build_model(train_config(data, "unused").model, DataShape(32, None)),
        train_config(data, "unused"), VectorCodec("x", 32, "float32"), meta=CheckpointMeta(epoch=1),
    )  # fmt: skip
    before = batch.listing("dataset/")
    done = vaeflow(batch, "embed", "--model", model, "--input", batch.corpus, "--output", f"{data}/train/emb")
    err = one_line_exit_2(done, f"{data}/train")
    assert batch.listing("dataset/") == before
    scenario.detail = f"refused: {err.split('error: ')[-1][:160]}"


@pytest.mark.scenario(19, "--run-name ../escaped -> refused before any work, nothing outside train.runs_uri")
def test_a_run_name_cannot_leave_the_runs_folder(batch: Batch, tmp_path: Path, scenario: Outcome) -> None:
    data = f"{batch.bucket}/names-data"
    write_dataset(batch.s3.fs(), f"{batch.name}/names-data", train_rows=64, test_rows=16, shards=1)
    cfg = train_config(data, f"{batch.bucket}/team/runs", epochs=1)
    (tmp_path / "cfg.json").write_text(cfg.to_json())
    before = batch.listing("")
    for name in ("../escaped", "a/../../b", "x" * 300):
        done = vaeflow(batch, "train", "--config", str(tmp_path / "cfg.json"), "--run-name", name)
        one_line_exit_2(done, "run name")
    after = batch.listing("")
    assert after == before, sorted(set(after) - set(before))
    scenario.detail = "3 run names refused, no object written"


@pytest.mark.scenario(
    20, "embed --mode append twice, the input re-uploaded in between (same bytes) -> every id once"
)
def test_an_append_of_a_re_uploaded_input_adds_no_row_twice(batch: Batch, scenario: Outcome) -> None:
    out = f"{batch.bucket}/appended"
    first = embed(batch, out, "--mode", "append")
    assert first.returncode == 0, first.stderr[-3000:]
    fs = batch.s3.fs()
    shard = sorted(fs.ls(batch.corpus.removeprefix("s3://")))[0]
    fs.pipe(shard, fs.cat(shard))  # a re-upload: same bytes, a new LastModified
    second = embed(batch, out, "--mode", "append")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "already committed" in second.stdout + second.stderr
    ids = batch.check(out, batch.ids, scenario)
    assert len(ids) == len(batch.ids) == len(set(ids))
    # The same rows under another run key (here: a copy of the model, one byte apart) are refused.
    other = f"{batch.name}/model-copy"
    for path in fs.find(batch.model.removeprefix("s3://")):
        data = fs.cat(path)
        fs.pipe(f"{other}/{path.rsplit('/', 1)[1]}", data + b" " if path.endswith("meta.json") else data)
    copy = f"s3://{other}"
    args = ["--model", copy, "--input", batch.corpus, "--output", out, "--mode", "append"]
    third = vaeflow(batch, "embed", *args)
    one_line_exit_2(third, "already in the table")
    assert len(batch.check(out, batch.ids, scenario)) == len(batch.ids)
    scenario.detail = "the re-upload's rerun skipped as committed; the same rows under another key refused"


@pytest.mark.scenario(21, "embed --mode append into a foreign Delta table of other columns -> refused")
def test_an_append_to_a_table_of_other_columns_is_refused_and_the_table_unchanged(
    batch: Batch, scenario: Outcome
) -> None:
    import pyarrow as pa
    from deltalake import write_deltalake

    out = f"{batch.bucket}/foreign"
    write_deltalake(out, pa.table({"a": [1, 2], "b": ["x", "y"]}), storage_options=batch.delta_options())
    done = embed(batch, out, "--mode", "append")
    err = one_line_exit_2(done, "columns a int64, b string")
    table = batch.table(out)
    assert table.version() == 0 and table.to_pyarrow_table().num_rows == 2
    scenario.detail = f"refused: {err.split('error: ')[-1][:160]}"


@pytest.mark.scenario(
    22, "two incremental embeds at once, each seeing a new shard -> every id once, the loser reruns"
)
def test_two_incremental_embeds_at_once_commit_each_id_once(batch: Batch, scenario: Outcome) -> None:
    import pyarrow.parquet as pq

    fs = batch.s3.fs()
    root = f"{batch.name}/growing"
    write_dataset(fs, root, train_rows=1000, test_rows=16, shards=4)  # ids 0..999
    corpus, out = f"s3://{root}/train", f"{batch.bucket}/growing-emb"
    incremental = {"job": {**JOB["job"], "incremental": True}, "mode": "append", "input": corpus}

    def add_shard(i: int, first_id: int) -> None:
        with fs.open(f"{root}/train/part-{i:03d}.parquet", "wb") as f:
            pq.write_table(vector_rows(250, first_id, seed=i), f)

    night = batch.run(out, **incremental)
    assert night.returncode == 0 and night.result["rows"] == 1000, night.tail
    # Run A sees shard 4 new; run B, started while A runs, sees shards 4 and 5. Both runs' commits are
    # held until both have mapped their rows, then sent on together: a real race for the next version.
    add_shard(4, 1000)
    batch.s3.proxy.hold_matching(f"PUT /{batch.name}/growing-emb/_delta_log/", forward=True)
    runs = {"A": Lines(batch.launch(out, **incremental))}
    try:
        wait_for(lambda: "(100%)" in runs["A"].text() or runs["A"].proc.poll() is not None, 200, "A to map")
        add_shard(5, 1250)
        runs["B"] = Lines(batch.launch(out, **incremental))
        wait_for(lambda: "(100%)" in runs["B"].text() or runs["B"].proc.poll() is not None, 200, "B to map")
        time.sleep(2)  # into their commits (held)
    finally:
        held = batch.s3.proxy.clear()["blackholed"]
    done = {k: Job(*lines.finish(180)) for k, lines in runs.items()}
    codes = {k: job.returncode for k, job in done.items()}
    scenario.detail = f"{held} commit requests held and released together; return codes {codes}"
    assert None not in codes.values(), f"a run hung: {codes}"
    assert sorted(codes.values()) == [0, 1], {k: job.tail for k, job in done.items()}
    (loser,) = [k for k, code in codes.items() if code != 0]
    assert "another writer committed" in done[loser].output, done[loser].tail
    rerun = batch.run(out, **incremental)  # what the loser's message says to do
    assert rerun.returncode == 0, rerun.tail
    ids = batch.check(out, set(range(1500)), scenario)
    assert sorted(ids) == list(range(1500))
    added = rerun.result["rows_embedded"]
    scenario.detail += f"; {loser} refused its commit cleanly, its rerun added {added} rows"


@pytest.mark.scenario(
    24, "vaeflow maintain killed mid-compaction (its commit held), then rerun -> every id once, compacted"
)
def test_maintenance_killed_mid_compaction_then_rerun_leaves_every_id_once(
    batch: Batch, scenario: Outcome
) -> None:
    out = f"{batch.bucket}/maintained"
    first = batch.run(out)
    assert first.returncode == 0, first.tail
    fs, folder = batch.s3.fs(), f"{batch.name}/maintained"
    committed = {u.removeprefix("s3://") for u in batch.table(out).file_uris()}
    version = batch.table(out).version()
    assert len(committed) >= 2, committed  # small files to compact

    def parquet() -> set[str]:
        fs.invalidate_cache()
        return {p for p in fs.ls(folder, detail=False) if p.endswith(".parquet")}

    # The compaction's commit never reaches the store: the process is killed while it waits on it.
    batch.s3.proxy.hold_matching(f"PUT /{folder}/_delta_log/")
    proc = subprocess.Popen(
        [VAEFLOW, "maintain", "--table", out], env=batch.cluster.env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: parquet() - committed or proc.poll() is not None, 120, "the compacted file")
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(1)  # into its commit (held)
        kill_tree(proc.pid)
        proc.wait(timeout=30)
    finally:
        batch.s3.proxy.clear()
    orphans = parquet() - committed
    assert orphans and batch.table(out).version() == version  # written, never committed
    ids = batch.check(out, batch.ids, scenario)
    assert sorted(ids) == sorted(batch.ids)
    rerun = vaeflow(batch, "maintain", "--table", out)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"compaction: {len(committed)} small files into 1" in rerun.stdout, rerun.stdout
    assert len(batch.table(out).file_uris()) == 1
    assert sorted(batch.check(out, batch.ids, scenario)) == sorted(batch.ids)
    again = vaeflow(batch, "maintain", "--table", out)  # a rerun of a finished maintenance: nothing
    assert again.returncode == 0 and "compaction: nothing to do" in again.stdout, again.stdout
    assert orphans <= parquet(), "maintenance deleted files its table never added"
    scenario.detail = (
        f"killed with {len(orphans)} compacted file(s) written and the commit held; the rerun compacted "
        f"{len(committed)} files into 1; the killed attempt's file stays, never referenced"
    )
