"""The layout of a feature vector x: contiguous blocks of continuous or categorical slots.

A codec that produces mixed features (the tabular codec) describes x with these blocks; the mixed
tabular likelihood reads them. Plain data: no torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vae_core.errors import InternalError


@dataclass(frozen=True)
class Block:
    """A contiguous span of the feature vector: `width` slots from `start`, part of table column
    `column` (a continuous column is several blocks: its value, its bin or mode, its null flag)."""

    kind: Literal["continuous", "categorical"]
    start: int
    width: int
    column: int = 0

    @property
    def stop(self) -> int:
        return self.start + self.width


def layout_from_widths(spec: list[tuple[str, int]]) -> list[Block]:
    """[("continuous", 1), ("categorical", 5), ...] -> contiguous Blocks, one column each."""
    blocks, start = [], 0
    for column, (kind, width) in enumerate(spec):
        if kind not in ("continuous", "categorical") or width < 1:
            raise InternalError(f"bad layout entry ({kind!r}, {width})")
        blocks.append(Block(kind, start, width, column))  # type: ignore[arg-type]
        start += width
    return blocks
