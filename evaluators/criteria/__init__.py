"""Importance criteria: one pure function per criterion, one signature, one registry.

A criterion maps a dense timm ViT to :class:`~vitprune.spaces.Scores` (higher = keep)::

    def criterion(model, *, base, data=None, **options) -> Scores

``data`` is an iterable of ``(images, labels)`` calibration batches for data-driven criteria and
``None`` for weight-only ones.

>>> scores = get_criterion("magnitude")(model, base=base)   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from torch import nn

from vitprune.spaces import Architecture, InputError, Scores
from vitprune.spaces.scores import DIMENSIONS


class Criterion(Protocol):
    def __call__(
        self, model: nn.Module, *, base: Architecture, data: Any = None, **options: Any
    ) -> Scores: ...


_CRITERIA: dict[str, Criterion] = {}
_SCORES: dict[str, frozenset[str]] = {}


def register_criterion(name: str, *, scores: Iterable[str]) -> Callable[[Criterion], Criterion]:
    """Register a criterion under ``name``, declaring the dimensions it ``scores`` (see
    ``vitprune.spaces.scores.DIMENSIONS``); registering a name twice is an error."""
    dimensions = frozenset(scores)
    unknown = sorted(dimensions - set(DIMENSIONS))
    if unknown:
        raise ValueError(
            f"criterion {name!r}: unknown dimension {unknown[0]!r} (known: {', '.join(DIMENSIONS)})"
        )

    def register(fn: Criterion) -> Criterion:
        if name in _CRITERIA:
            raise ValueError(f"criterion {name!r} is already registered (by {_CRITERIA[name].__module__})")
        _CRITERIA[name] = fn
        _SCORES[name] = dimensions
        return fn

    return register


def check_criterion(name: str, dimension: str, *, prior: bool = False) -> None:
    """Raise :class:`InputError` unless criterion ``name`` exists and ranks ``dimension``.

    Any criterion may rank tokens: without a token prior, tokens are ranked by the class token's
    attention alone. ``prior=True`` asks for a criterion that scores tokens itself (a prior and
    per-layer rates, as ``token_keep: auto`` needs).
    """
    get_criterion(name)
    if (dimension != "tokens" or prior) and dimension not in _SCORES[name]:
        able = sorted(n for n, dims in _SCORES.items() if dimension in dims)
        raise InputError(
            f"criteria.{dimension}: {name} does not score {dimension} (choose one of {', '.join(able)})"
        )


def get_criterion(name: str) -> Criterion:
    """The criterion registered as ``name``."""
    try:
        return _CRITERIA[name]
    except KeyError:
        raise InputError(f"criterion {name!r}: unknown (known: {', '.join(criterion_names())})") from None


def criterion_names() -> list[str]:
    return sorted(_CRITERIA)


# Importing the modules registers their criteria.
from vitprune.evaluators.criteria import depth, hsic, magnitude, snp, star, taylor  # noqa: E402, F401
from vitprune.evaluators.criteria.cache import (  # noqa: E402
    calibration_batches,
    compute_scores,
    scores_by_dimension,
)

__all__ = [
    "Criterion",
    "calibration_batches",
    "check_criterion",
    "compute_scores",
    "criterion_names",
    "get_criterion",
    "register_criterion",
    "scores_by_dimension",
]
