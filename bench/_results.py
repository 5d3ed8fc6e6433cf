"""Writing benchmark results in the one format every result file shares."""

from __future__ import annotations

import json
import os
import platform
import statistics
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch

from bench import table

RESULTS = Path(__file__).parent / "results"


def machine() -> str:
    threads = torch.get_num_threads()
    return f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, {threads} threads"


def write_result(
    name: str,
    value: float,
    unit: str,
    target: float | None,
    better: Literal["higher", "lower"],
    setting: dict[str, Any],
    baseline: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    # No target (a recorded figure): met is None.
    met = None if target is None else value >= target if better == "higher" else value <= target
    result = {
        "name": name,
        "value": value,
        "unit": unit,
        "target": target,
        "better": better,
        "met": met,
        "baseline": baseline,
        "setting": {**setting, "machine": machine()},
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **extra,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    table.write()  # bench/README.md follows its result files (tests/unit/test_bench_table.py checks)
    verdict = (
        "(recorded, no target)"
        if target is None
        else f"(target {'>=' if better == 'higher' else '<='} {target}) {'MET' if met else 'MISSED'}"
    )
    print(f"[bench] {name}: {value:.4g} {unit} {verdict}")
    return result


def median(xs: list[float]) -> float:
    return statistics.median(xs)
