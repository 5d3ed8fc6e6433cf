"""bench/README.md against the result JSONs it is generated from (`python -m bench table`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import table

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_bench_readme_matches_the_result_files():
    committed = (ROOT / "bench" / "README.md").read_text()
    assert committed == table.render(ROOT / "bench" / "results"), (
        "bench/README.md is not what bench/results/*.json give: run `python -m bench table`"
    )


def _write(folder: Path, name: str, value: float, target: float | None, better: str, **extra) -> None:
    met = None if target is None else value >= target if better == "higher" else value <= target
    result = {
        "name": name,
        "value": value,
        "unit": "ratio: something / something else",
        "target": target,
        "better": better,
        "met": met,
        "baseline": 1234.5,
        "setting": {"rows": 2000, "workers": 2, "epochs": 1, "machine": "x86_64 2 cores"},
        "measured_at": "2026-12-05T04:03:36+00:00",
        **extra,
    }
    (folder / f"{name}.json").write_text(json.dumps(result))


def _rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ["):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows[cells[0].split("]")[0][1:]] = cells
    return rows


def test_verdicts_for_higher_lower_and_no_target(tmp_path):
    _write(tmp_path, "b_higher_met", 0.95, 0.9, "higher")
    _write(tmp_path, "a_higher_missed", 0.77, 0.8, "higher")
    _write(tmp_path, "d_lower_met", 24.7, 25, "lower")
    _write(tmp_path, "c_lower_missed", 1.3, 1.25, "lower", peak_met=False)
    _write(tmp_path, "e_recorded", 121.4, None, "lower")
    text = table.render(tmp_path)
    rows = _rows(text)
    assert list(rows) == sorted(rows)  # sorted by name
    header = dict(zip(table.COLUMNS, range(len(table.COLUMNS)), strict=True))
    verdicts = {name: cells[header["verdict"]] for name, cells in rows.items()}
    assert verdicts == {
        "a_higher_missed": "missed",
        "b_higher_met": "met",
        "c_lower_missed": "missed; peak missed",
        "d_lower_met": "met",
        "e_recorded": "recorded",
    }
    assert rows["a_higher_missed"][header["target"]] == "≥ 0.8"
    assert rows["d_lower_met"][header["target"]] == "≤ 25"
    assert rows["e_recorded"][header["target"]] == "—"
    met = rows["b_higher_met"]
    assert met[header["value"]] == "0.95 ratio"
    assert met[header["baseline"]] == "1,234"  # rounded, thousands separated
    assert met[header["setting"]] == "2,000 rows; 2 workers; 1 epoch; x86_64 2 cores"
    assert met[header["measured"]] == "2026-12-05"
    assert "[b_higher_met](results/b_higher_met.json)" in met[0]
    assert table.render(tmp_path) == text  # deterministic


def test_a_met_field_that_contradicts_the_value_is_refused(tmp_path):
    _write(tmp_path, "edited", 0.77, 0.8, "higher")
    result = json.loads((tmp_path / "edited.json").read_text())
    (tmp_path / "edited.json").write_text(json.dumps({**result, "met": True}))
    with pytest.raises(ValueError, match="edited: met is True"):
        table.render(tmp_path)
