"""`vaeflow run`: one vae-nightly on the embedded default (local Ray, Prefect's ephemeral API, a local
folder as the object store, MNIST imported into it on first use), then the output locations."""

from __future__ import annotations

import logging
import time
from datetime import date
from pathlib import Path

from pydantic import ValidationError

from flows.nightly import NightlyResult, nightly_flow
from vae_core.config import VaeflowConfig, validation_message
from vae_core.errors import ConfigError
from vae_core.operations.pipeline import PipelineConfig, local_defaults


def split_overrides(overrides: list[str]) -> tuple[list[str], dict[str, str]]:
    """`pipeline.key=value` items go to PipelineConfig; everything else to VaeflowConfig."""
    config, pipeline = [], {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key.startswith("pipeline."):
            pipeline[key.removeprefix("pipeline.")] = value
        else:
            config.append(item)
    return config, pipeline


def build(
    root: str, epochs: int | None, config_file: str | None, overrides: list[str]
) -> tuple[VaeflowConfig, PipelineConfig]:
    """The local default config (or a config file) with `section.key=value` overrides applied.

    Only the pure local default bootstraps MNIST into its own folder; with a config file the data
    must be there already (`pipeline.bootstrap=...` asks for it explicitly, into an empty location).
    """
    import json

    config, pipeline = local_defaults(root, **({"epochs": epochs} if epochs else {}))
    if config_file:
        config = VaeflowConfig.from_file(config_file)
        # The MNIST-specific settings (bootstrap, the `label` passthrough) stay with the MNIST default.
        pipeline = PipelineConfig(root=pipeline.root)
    config_overrides, pipeline_overrides = split_overrides(overrides)
    if epochs and config_file:
        config_overrides.insert(0, f"train.epochs={epochs}")
    config = config.with_overrides(config_overrides)
    updates = {}
    for key, raw in pipeline_overrides.items():
        try:
            updates[key] = json.loads(raw)
        except json.JSONDecodeError:
            updates[key] = raw
    try:
        pipeline = PipelineConfig.model_validate({**pipeline.model_dump(), **updates})
    except ValidationError as e:
        raise ConfigError(f"pipeline settings: {validation_message(e)}") from e
    return config, pipeline


def _href(uri: str | None) -> str:
    if not uri:
        return "-"
    return uri if "://" in uri else Path(uri).resolve().as_uri()


def summary(result: NightlyResult, message: str, seconds: float) -> str:
    lines = [
        f"vae-nightly {result.night} finished in {seconds:.0f}s: {message}",
        f"  held-out ELBO    {result.elbo:.2f} nats per row (candidate)",
        f"  candidate model  {result.candidate_uri}",
        f"  champion model   {result.champion_uri or '-'}",
        f"  report           {_href(result.report_uri)}",
    ]
    for split, uri in result.embeddings.items():
        rows, carried = result.embedded.get(split, (0, 0))
        lines.append(f"  embeddings       {uri}  ({split}: {rows:,} rows embedded, {carried:,} carried over)")
    lines.append(f"  samples          {result.samples_uri or '-'}")
    if result.drift:
        drift = result.drift.verdict
        lines.append(f"  latent drift     {'ALERT' if drift.alert else 'ok'}: {'; '.join(drift.reasons)}")
    return "\n".join(lines)


class QuietConsole(logging.Filter):
    """Prefect's own lines that tell a terminal nothing the summary does not: each task's and flow's
    "Finished in state Completed(...)", "Beginning subflow run", the temporary API's start and stop.
    Only the console drops them; the run logs in the Prefect API keep every line. Failures, retries
    and every line vaeflow logs still show."""

    DROPPED = (
        "Finished in state Completed(",
        "Beginning subflow run",
        "Starting temporary server on",
        "Stopping temporary server on",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.DROPPED)


def quiet_console() -> None:
    """Add QuietConsole to Prefect's console handlers (configured when prefect was imported)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in logging.root.manager.loggerDict)]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, PrefectConsoleHandler) and not any(
                isinstance(f, QuietConsole) for f in handler.filters
            ):
                handler.addFilter(QuietConsole())


def run(
    root: str = "data",
    run_date: date | None = None,
    epochs: int | None = None,
    config_file: str | None = None,
    overrides: list[str] | None = None,
) -> int:
    config, pipeline = build(root, epochs, config_file, overrides or [])
    quiet_console()
    t0 = time.perf_counter()
    state = nightly_flow(config, pipeline, run_date, return_state=True)
    result = state.result(raise_on_failure=False)
    if not isinstance(result, NightlyResult):
        print(f"vae-nightly failed: {state.message}", flush=True)
        return 1
    print(summary(result, state.message or "", time.perf_counter() - t0), flush=True)
    return 0 if state.is_completed() else 1
