"""Compute a criterion once per (weights, calibration data, criterion, options) and reuse it.

Criteria run on the dense model before a search; every trial reuses their scores. The scores are
cached as JSON (:meth:`Scores.to_json`) in ``cache_dir`` under a SHA-256 of everything they depend
on: the model's state dict (names, dtypes, shapes, bytes), the calibration tensors, the criterion
name and its options. Files are written atomically; a file that does not parse or does not fit the
model is recomputed, never trusted.

>>> batches = calibration_batches(train_loader, num_batches=4)                         # doctest: +SKIP
>>> scores = compute_scores("hsic", model, base=base, data=batches, cache_dir=".cache")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vitprune.evaluators.criteria import get_criterion
from vitprune.evaluators.criteria.capture import Batch
from vitprune.spaces import Architecture, InputError, Scores
from vitprune.spaces.files import write_text_atomic
from vitprune.spaces.scores import DIMENSIONS

log = logging.getLogger(__name__)

# Bump when a criterion's formulation changes, so that old cached scores are not reused.
CACHE_VERSION = 2  # 2: magnitude, random and taylor also score the residual channels (embed)


def calibration_batches(loader: Iterable[Any], num_batches: int) -> list[Batch]:
    """The first ``num_batches`` ``(images, labels)`` batches of ``loader``, on the CPU, as a list."""
    if num_batches < 1:
        raise InputError(f"calibration batches: must be >= 1, got {num_batches}")
    batches = []
    for images, labels in loader:
        batches.append((images.detach().cpu(), labels.detach().cpu()))
        if len(batches) == num_batches:
            break
    if not batches:
        raise InputError("calibration data: the loader yielded no batches")
    if len(batches) < num_batches:
        log.warning("calibration data: asked for %d batches, the loader has %d", num_batches, len(batches))
    return batches


def _update(digest: Any, tensor: Tensor) -> None:
    t = tensor.detach().cpu().contiguous()
    digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
    digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # raw bytes, any dtype


def cache_key(name: str, model: nn.Module, *, data: Iterable[Batch] | None, options: dict[str, Any]) -> str:
    """Hex SHA-256 of the criterion name and options, the model's state dict and the data tensors."""
    digest = hashlib.sha256()
    header = {"version": CACHE_VERSION, "criterion": name, "options": options}
    digest.update(json.dumps(header, sort_keys=True, default=repr).encode())
    for key, tensor in model.state_dict().items():
        digest.update(key.encode())
        _update(digest, tensor)
    for i, (images, labels) in enumerate(data or ()):
        digest.update(f"batch {i}".encode())
        _update(digest, images)
        _update(digest, torch.as_tensor(labels))
    return digest.hexdigest()


def resolved_options(name: str, criterion: Any, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the criterion's defaults filled in (so that spelling out a default does not
    change the cache key); raises :class:`InputError` for an option the criterion does not take."""
    signature = inspect.signature(criterion)
    known = [
        p.name
        for p in signature.parameters.values()
        if p.kind is p.KEYWORD_ONLY and p.name not in ("base", "data")
    ]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    unknown = sorted(set(options) - set(known))
    if unknown and not takes_any:
        raise InputError(
            f"criterion {name}: unknown option {unknown[0]!r} (known: {', '.join(known) or 'none'})"
        )
    defaults = {
        p.name: p.default
        for p in signature.parameters.values()
        if p.name in known and p.default is not inspect.Parameter.empty
    }
    return {**defaults, **options}


def compute_scores(
    name: str,
    model: nn.Module,
    *,
    base: Architecture,
    data: Iterable[Batch] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    **options: Any,
) -> Scores:
    """The scores of criterion ``name``, from ``cache_dir`` when present and valid, else computed.

    Args:
        name: a registered criterion (see ``criterion_names()``).
        model: the dense timm ViT (not modified).
        base: its architecture.
        data: calibration batches (``None`` for weight-only criteria).
        cache_dir: where cached scores live; ``None`` computes without caching.
        **options: passed to the criterion; part of the cache key.

    Raises:
        InputError: unknown criterion or option, or bad data for it.
    """
    criterion = get_criterion(name)
    options = resolved_options(name, criterion, options)
    batches = None if data is None else list(data)
    if cache_dir is None:
        return criterion(model, base=base, data=batches, **options).check(base)
    path = Path(cache_dir) / f"{name}-{cache_key(name, model, data=batches, options=options)}.json"
    if path.exists():
        try:
            scores = Scores.from_json(path.read_text()).check(base)
            log.info("criterion %s: cached scores from %s", name, path)
            return scores
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            log.warning("criterion %s: ignoring unreadable cache file %s (%s)", name, path, error)
    scores = criterion(model, base=base, data=batches, **options).check(base)
    write_text_atomic(path, scores.to_json())
    log.info("criterion %s: scores cached in %s", name, path)
    return scores


def scores_by_dimension(
    criteria: dict[str, str],
    model: nn.Module,
    *,
    base: Architecture,
    data: Iterable[Batch] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Scores:
    """Scores with each dimension taken from its own criterion, each criterion computed once.

    Args:
        criteria: dimension (heads, qk, v, mlp, tokens, depth) → criterion name.
        model, base, data, cache_dir: as for :func:`compute_scores`.
        progress: called with ``(criteria done, criteria in all)`` after each criterion.

    Raises:
        InputError: a criterion does not score the dimension it was chosen for.
    """
    names = sorted(set(criteria.values()))
    computed = {}
    for done, name in enumerate(names, start=1):
        computed[name] = compute_scores(name, model, base=base, data=data, cache_dir=cache_dir)
        if progress is not None:
            progress(done, len(names))
    combined = Scores.combine({dimension: computed[name] for dimension, name in criteria.items()})
    for dimension, name in criteria.items():
        if all(getattr(combined, field) is None for field in DIMENSIONS[dimension]) and dimension != "tokens":
            raise InputError(f"criteria.{dimension}: {name} does not score {dimension}")
    return combined
