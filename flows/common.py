"""Small helpers shared by the flows: the run date, run ids, and markdown for artifacts."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any

from prefect.runtime import flow_run

from vae_core.training.model_report import ModelReport


def night(run_date: date | None) -> date:
    """The run date: as given, else the date the run was scheduled for (a late run keeps its night)."""
    if run_date is not None:
        return run_date
    return flow_run.scheduled_start_time.date()


def run_id() -> str:
    """This flow run's id (a fresh uuid outside Prefect runs)."""
    return flow_run.id or uuid.uuid4().hex


def flat_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Scalar metrics as dotted names (`test.elbo`, `iwae`, ...); lists and vectors are left out."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update(flat_metrics(v, f"{prefix}{k}."))
        elif isinstance(v, bool):
            continue
        elif isinstance(v, int | float):
            out[f"{prefix}{k}"] = float(v)
    return out


def metrics_rows(candidate: ModelReport, champion: ModelReport | None = None) -> list[dict[str, Any]]:
    """One row per scalar metric: candidate and, when there is one, champion side by side."""
    cand = flat_metrics(candidate.to_json_dict())
    champ = flat_metrics(champion.to_json_dict()) if champion else {}
    rows = []
    for name, value in cand.items():
        row: dict[str, Any] = {"metric": name, "candidate": round(value, 4)}
        if champion is not None:
            row["champion"] = round(champ[name], 4) if name in champ else None
        rows.append(row)
    return rows


def link(uri: str | None) -> str:
    """A markdown link for a location (file:// for local paths, so it opens from the UI)."""
    if not uri:
        return "-"
    href = uri if "://" in uri else f"file://{uri}"
    return f"[{uri}]({href})"


def locations_markdown(title: str, locations: dict[str, str | None]) -> str:
    lines = [f"# {title}", "", "| output | location |", "|---|---|"]
    lines += [f"| {name} | {link(uri)} |" for name, uri in locations.items()]
    return "\n".join(lines) + "\n"
