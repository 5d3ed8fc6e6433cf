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
    """A contiguous span of the feature vector: `width` columns from `start`."""

    kind: Literal["continuous", "categorical"]
    start: int
    width: int

    @property
    def stop(self) -> int:
        return self.start + self.width


def layout_from_widths(spec: list[tuple[str, int]]) -> list[Block]:
    """[("continuous", 1), ("categorical", 5), ...] -> contiguous Blocks."""
    blocks, start = [], 0
    for kind, width in spec:
        if kind not in ("continuous", "categorical") or width < 1:
            raise InternalError(f"bad layout entry ({kind!r}, {width})")
        blocks.append(Block(kind, start, width))  # type: ignore[arg-type]
        start += width
    return blocks
