"""Small helpers every room of sparknet shares; this module imports nothing of sparknet."""
from __future__ import annotations

from collections.abc import Sequence

__all__ = ["shape_str"]


def shape_str(shape: Sequence[int]) -> str:
    """A shape as Python writes a tuple: ``(2, 3)``, ``(5,)``, ``()``."""
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"
