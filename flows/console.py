"""What `vaeflow` shows while a command runs: progress lines, and a bar over the epochs of `vaeflow train`."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # records import torch, which `vaeflow config` and `describe` never load
    from vae_core.training.records import Record


@contextlib.contextmanager
def log_to_stderr(logger: str) -> Iterator[None]:
    """The INFO lines of `logger` on stderr, as they come, while the block runs."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    target = logging.getLogger(logger)
    level = target.level
    target.addHandler(handler)
    target.setLevel(logging.INFO)
    try:
        yield
    finally:
        target.removeHandler(handler)
        target.setLevel(level)


def print_progress(msg: str) -> None:
    """The CLI's Progress (vae_core.progress): each line at once, also when piped to a log."""
    print(msg, flush=True)


class EpochBar:
    """`vaeflow train` on a terminal: a bar over the epochs (rich) below the plain lines, which scroll
    above it; piped into a log, plain lines only. Used as the Progress and `on_record` of
    train_on_ray, and as a context that removes the bar at the end."""

    def __init__(self, terminal: bool | None = None) -> None:
        self.terminal = sys.stdout.isatty() if terminal is None else terminal
        self.bar: Any = None

    def __call__(self, msg: str) -> None:
        if self.bar is None:
            print_progress(msg)
        else:
            self.bar.console.print(msg, highlight=False, markup=False)

    def record(self, record: Record) -> None:
        if not self.terminal:
            return
        if self.bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("training"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
            )
            self.task = self.bar.add_task("epochs", total=record.epochs)
            self.bar.start()
        if record.kind == "epoch":
            self.bar.update(self.task, completed=record.epoch)

    def __enter__(self) -> EpochBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
