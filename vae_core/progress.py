"""The one progress-callback type: long work reports plain lines ("epoch 3/10 ...", "embedded
40,000 / 100,000 rows") through a Progress; the CLI prints them, flows send them to the Prefect log."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str], None]


def quiet(_: str) -> None:
    """A Progress that drops every line."""
