"""The first hour on a table of one's own: the README's "Your own table" commands, as written, on a
table built to hold the traps a new user meets (issue 40), and what each command must say about them.

The table: a source sorted by `monthly_spend` (a report that read each file's first rows would see only
the cheapest customers), 0/1 flags (`phone`, `senior`), an integer code column (`industry`, 12 codes),
a rule between two columns that neither fixes the other (internet=no => streaming="no internet", as in
real churn data: the codec's exact maps do not cover it), and in the predefined test file one row whose
spend lies far above every training row's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.integration.test_own_table import BIN, readme_commands

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(900, method="signal")]

TRAIN_ROWS, TEST_ROWS = 12_000, 1_000
# What Ray prints at error level: glog's "[date time,ms E pid tid] file.cc:line" or "(raylet) E ..."
RAY_ERROR_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+ E \d+ \d+\]|core_worker\.cc|\(raylet\).* E ")


def write_csvs(folder: Path, seed: int = 0) -> float:
    """customers.csv sorted by monthly_spend and customers_test.csv with one spend above them all;
    returns the training maximum of monthly_spend."""
    rng = np.random.default_rng(seed)
    header = "customer,phone,internet,streaming,senior,industry,monthly_spend,tenure,churned\n"
    tables = {}
    for name, n in (("customers.csv", TRAIN_ROWS), ("customers_test.csv", TEST_ROWS)):
        phone = (rng.random(n) > 0.3).astype(int)
        internet = rng.choice(["dsl", "fiber", "no"], n, p=[0.4, 0.4, 0.2])
        streaming = np.where(internet == "no", "no internet", rng.choice(["yes", "no"], n))
        senior = (rng.random(n) < 0.2).astype(int)
        industry = rng.integers(0, 12, n)
        spend = np.round(rng.gamma(2.0, 20.0, n) + 5 * industry + 15 * phone, 2)
        tenure = rng.integers(1, 72, n)
        churned = np.where(rng.random(n) < 0.15 + 0.2 * (tenure < 12), "yes", "no")
        tables[name] = [phone, internet, streaming, senior, industry, spend, tenure, churned]
    top = float(tables["customers.csv"][5].max())
    tables["customers_test.csv"][5][0] = round(10 * top, 2)  # the one out-of-range test row
    for name, cols in tables.items():
        order = np.argsort(cols[5], kind="stable") if name == "customers.csv" else np.arange(len(cols[5]))
        prefix = "c" if name == "customers.csv" else "t"
        rows = [f"{prefix}-{i:05d}," + ",".join(str(c[j]) for c in cols) + "\n" for i, j in enumerate(order)]
        (folder / name).write_text(header + "".join(rows))
    return top


def test_the_first_hour_on_a_sorted_table_with_flags_codes_a_rule_and_an_outlier(tmp_path, ray_local):
    top = write_csvs(tmp_path)
    env = {**os.environ, "RAY_ADDRESS": ray_local, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    transcript = {}
    for command in readme_commands():
        run = subprocess.run(
            command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert run.returncode == 0, f"{command}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        transcript[command.split()[1] if command.split()[1] != "data" else command.split()[2]] = (
            run.stdout + run.stderr
        )

    # The whole transcript: no line at error level from Ray (the actors' constructor-argument warning).
    ray_errors = [
        line for out in transcript.values() for line in out.splitlines() if RAY_ERROR_LINE.search(line)
    ]
    assert not ray_errors, ray_errors
    assert "1 shards" not in transcript["import"] and "1 files" not in transcript["embed"]

    # describe: 0/1 flags categorical, the code column flagged, exact null counts.
    describe = transcript["describe"]
    assert re.search(r"phone\s+int64\s+categorical\s+2 categories, 0 nulls", describe), describe
    assert re.search(r"senior\s+int64\s+categorical", describe), describe
    assert re.search(r"industry\s+int64\s+continuous .*12 distinct values: likely categorical", describe), (
        describe
    )
    assert 'use data.categorical=["industry"]' in describe

    # config: the key the import recorded, not the default "id".
    config = json.loads((tmp_path / "customers.json").read_text())
    assert config["data"]["id_column"] == "customer"

    # train: the out-of-range validation row counted up front and on every validated epoch's line.
    train = transcript["train"]
    assert "column 'monthly_spend': 1 value(s) outside the training range" in train, train
    epochs = [line for line in train.splitlines() if line.startswith("epoch ") and "val ELBO" in line]
    assert epochs and all("validation values outside training" in line for line in epochs), epochs
    assert re.search(
        r"best checkpoint: .*\(highest validation ELBO of the kept checkpoints, .* at epoch \d", train
    )
    assert train.count("latest checkpoint:") == 1

    # report: the real rows are a uniform sample of the sorted split, and the page says so.
    metrics = json.loads((tmp_path / "data/runs/customers/epoch_0005/report/metrics.json").read_text())
    sampling = metrics["data"]["sampling"]["train"]
    assert sampling == f"a uniform random sample of 10,000 of {_train_rows(tmp_path):,} rows (seed 0)"
    read = _rows_the_report_read(tmp_path)
    whole = pq.read_table(tmp_path / "data/customers/train", columns=["monthly_spend"]).column(0).to_numpy()
    assert whole.max() == pytest.approx(top)
    for q in (0.05, 0.25, 0.5, 0.75, 0.95):
        assert abs(np.quantile(read, q) - np.quantile(whole, q)) <= 0.05 * np.quantile(whole, q), q

    # ... and its verdict names the rule with the share of synthetic rows that break it.
    rules = metrics["synthetic_quality"]["rules"]
    rule = next(
        r
        for r in rules["broken"]
        if (r["if_column"], r["if_value"], r["then_column"]) == ("internet", "no", "streaming")
    )
    assert rule["then_value"] == "no internet" and rule["real_rows"] > 1000 and rule["broken_share"] > 0
    page = (tmp_path / "data/runs/customers/epoch_0005/report/report.html").read_text()
    verdict = page.split('<section id="verdict">', 1)[1].split("</section>", 1)[0]
    assert page.index('id="verdict"') < page.index("<img ")  # first, above every figure
    assert f"internet=no ⇒ streaming=no internet holds in all {rule['real_rows']:,} real rows" in verdict
    assert f"{rule['broken_share']:.1%} of synthetic rows break it" in verdict
    assert "Detection ROC AUC" in verdict and "Columns that give the rows away most" in verdict


def _train_rows(root: Path) -> int:
    return pq.read_table(root / "data/customers/train", columns=["customer"]).num_rows


def _rows_the_report_read(root: Path) -> np.ndarray:
    """monthly_spend of the train rows the report read: the same read (splits.read_split, the
    report's defaults) with the trained checkpoint's codec."""
    from vae_core.reports.splits import EVAL_ROWS, read_split
    from vae_core.training.checkpoints import load_checkpoint

    ckpt = load_checkpoint(str(root / "data/runs/customers/epoch_0005"))
    data = ckpt.config.data.model_copy(update={"uri": str(root / "data/customers")})
    split = read_split(data, "train", ckpt.codec, None, EVAL_ROWS, seed=0)
    return split.table.column("monthly_spend").to_numpy()
