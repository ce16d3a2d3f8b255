"""Command-line argument types: a bad value is one usage line that says what was typed and what
would be valid (argparse prints ``argument --X: <message>``)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def whole_number(
    *, low: int = 0, high: int | None = None, what: str = "a whole number"
) -> Callable[[str], int]:
    """An integer in ``[low, high]`` (``high=None``: no upper bound)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if high is not None and not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in {low}..{high}, got {text}")
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {text}")
        return value

    return parse


def ratio(text: str) -> float:
    """A fraction in ``[0, 1]``."""
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a ratio in [0, 1], got {text}")
    return value


def budget(text: str) -> float:
    """A budget: a fraction of dense in ``(0, 1]``, or an absolute count above 1."""
    value = _number(text)
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(
            f"must be a fraction of dense in (0, 1] or an absolute count > 1, got {text}"
        )
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
