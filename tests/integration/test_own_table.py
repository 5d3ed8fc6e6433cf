"""README "Your own table": its commands, exactly as written, on a CSV with a string key, a date column,
a label and a predefined test file; every one succeeds and the outputs are what the section says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(900, method="signal")]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv's bin: `vaeflow` as a user runs it


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Your own table", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the README section has no bash block"
    return [line for line in block[1].splitlines() if line.strip()]


def write_csvs(folder: Path, seed: int = 0) -> None:
    """customers.csv (400 rows) and customers_test.csv (100 rows): string key, date, two categorical
    columns (one with empty cells), a money column, the label."""
    rng = np.random.default_rng(seed)
    header = "customer,signup,plan,monthly_spend,region,churned\n"
    for name, prefix, n in (("customers.csv", "c", 400), ("customers_test.csv", "t", 100)):
        lines = []
        for i in range(n):
            plan = rng.choice(["basic", "pro", "team"])
            spend = rng.normal({"basic": 30, "pro": 80, "team": 150}[plan], 10)
            region = rng.choice(["north", "south", ""])
            churned = "yes" if rng.random() < (0.4 if plan == "basic" else 0.1) else "no"
            day = f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}"
            lines.append(f"{prefix}-{i:05d},{day},{plan},{spend:.2f},{region},{churned}\n")
        (folder / name).write_text(header + "".join(lines))


def test_the_readme_commands_for_your_own_table_succeed_as_written(tmp_path, ray_local):
    write_csvs(tmp_path)
    env = {**os.environ, "RAY_ADDRESS": ray_local, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    commands = readme_commands()
    assert [c.split()[1] for c in commands] == [
        "data", "data", "config", "train", "embed", "generate", "report"
    ]  # fmt: skip
    outputs = []
    for command in commands:
        run = subprocess.run(
            command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        outputs.append(run.stdout)
        assert run.returncode == 0, f"{command}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"

    describe = outputs[1]
    assert re.search(r"customer\s+string\s+id", describe) and re.search(
        r"signup\s+date32\[day\]\s+continuous", describe
    )
    assert "tabular likelihood" in describe and re.search(r"test/\s+100 rows", describe)

    emb = DeltaTable(str(tmp_path / "data/customers-embeddings")).to_pyarrow_table()
    assert sorted(emb.column("customer").to_pylist()) == [f"t-{i:05d}" for i in range(100)]

    syn = DeltaTable(str(tmp_path / "data/customers-synthetic")).to_pyarrow_table()
    assert syn.num_rows == 1000
    assert syn.schema.field("customer").type == pa.string() and syn.schema.field("signup").type == pa.date32()
    assert len(set(syn.column("customer").to_pylist())) == 1000  # unique string ids
    assert set(syn.column("plan").drop_null().to_pylist()) <= {"basic", "pro", "team"}

    report = tmp_path / "data/runs/customers/epoch_0005/report"
    assert (report / "report.html").stat().st_size > 10_000 and (report / "metrics.json").exists()
