"""One search trial, independent of Ray and Ax: build the pruned model from the dense weights,
fine-tune it briefly, measure it.

A :class:`TrialContext` holds what every trial of a search shares (the dense model, which is also
the teacher, and the data); :func:`cached_context` builds it once per worker process.

>>> context = cached_context(model_config, data_config, dense_training)      # doctest: +SKIP
>>> evaluate_policy(policy, context, finetune_config=FinetuneConfig(epochs=3)).metrics  # doctest: +SKIP
{'accuracy': 0.95, 'macs': 12000000, 'params': ..., 'latency_ms': ..., ...}
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitprune.evaluators.config import (
    DataConfig,
    DenseTrainingConfig,
    FinetuneConfig,
    LatencyConfig,
    ModelConfig,
)
from vitprune.evaluators.data import DataSplits
from vitprune.evaluators.dense import prepare_dense
from vitprune.evaluators.finetune import EpochMetrics, finetune
from vitprune.evaluators.measure import accuracy, latency
from vitprune.evaluators.surgery import apply_policy
from vitprune.spaces import Architecture, Policy, cost

log = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    """``"auto"`` is the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass(frozen=True)
class TrialContext:
    """What all trials of a search share: the dense model (and teacher), its base, the data."""

    dense: nn.Module
    base: Architecture
    data: DataSplits
    dense_test_accuracy: float

    @property
    def dense_policy(self) -> Policy:
        return Policy.keep_all(self.base)


@dataclass(frozen=True)
class TrialResult:
    """A trial's metrics (JSON-ready) and its fine-tuned model."""

    metrics: dict[str, Any]
    model: nn.Module


_CONTEXTS: dict[str, TrialContext] = {}


def cached_context(
    model: ModelConfig, data: DataConfig, dense_training: DenseTrainingConfig, cache_dir: Path | None = None
) -> TrialContext:
    """The context for these configurations, built once per worker process and reused by its trials."""
    key = "|".join([model.digest(), data.digest(), dense_training.digest(), str(cache_dir)])
    if key not in _CONTEXTS:
        dense, splits = prepare_dense(model, data, dense_training, cache_dir=cache_dir)
        _CONTEXTS[key] = TrialContext(
            dense=dense.model, base=dense.base, data=splits, dense_test_accuracy=dense.test_accuracy
        )
    return _CONTEXTS[key]


def evaluate_policy(
    policy: Policy,
    context: TrialContext,
    *,
    finetune_config: FinetuneConfig,
    latency_config: LatencyConfig | None = None,
    device: str = "auto",
    test: bool = False,
    on_epoch: Callable[[EpochMetrics, nn.Module], bool | None] | None = None,
) -> TrialResult:
    """Build ``policy`` from the dense weights, fine-tune it (distilling the dense model), measure it.

    Args:
        policy: the pruning policy (its base must be the context's dense model).
        context: the shared dense model and data.
        finetune_config: the brief fine-tune.
        latency_config: how to measure latency (``None``: not measured).
        device: training device (``"auto"``: CUDA when available).
        test: also report ``test_accuracy`` (never during a search).
        on_epoch: called after each fine-tune epoch with its metrics and the model; returning
            ``True`` stops the fine-tune (early stopping).

    Returns:
        The fine-tuned model and its metrics: ``accuracy`` (top-1 on search-val), ``top5``,
        ``zero_shot_accuracy`` (before fine-tuning), ``macs``, ``params``, ``latency_ms`` (+ min/max,
        when measured), ``finetune_seconds``, ``finetune_epochs``, ``stopped_early`` and optionally
        ``test_accuracy``.
    """
    train_device = resolve_device(device)
    pruned = apply_policy(context.dense, policy).to(train_device)
    search_val = context.data.eval_loader("search-val")
    zero_shot = accuracy(pruned, search_val, device=train_device).top1
    callback = None if on_epoch is None else (lambda metrics: on_epoch(metrics, pruned))
    result = finetune(
        pruned,
        data=context.data,
        config=finetune_config,
        teacher=context.dense,
        device=train_device,
        on_epoch=callback,
    )
    measured = accuracy(pruned, search_val, device=train_device)
    costs = cost(policy)
    report: dict[str, Any] = {
        "accuracy": measured.top1,
        "top5": measured.top5,
        "zero_shot_accuracy": zero_shot,
        "macs": costs.macs,
        "params": costs.params,
        "finetune_seconds": result.seconds,
        "finetune_epochs": result.epochs,
        "stopped_early": result.stopped_early,
    }
    if latency_config is not None:
        started = time.perf_counter()
        measured_latency = latency(
            pruned,
            batch_size=latency_config.batch_size,
            device=resolve_device(latency_config.device),
            dtype=getattr(torch, latency_config.dtype),
            warmup=latency_config.warmup,
            repeats=latency_config.repeats,
        )
        report |= {
            "latency_ms": measured_latency.median_ms,
            "latency_min_ms": measured_latency.min_ms,
            "latency_max_ms": measured_latency.max_ms,
            "latency_seconds": time.perf_counter() - started,
        }
    if test:
        report["test_accuracy"] = accuracy(pruned, context.data.eval_loader("test"), device=train_device).top1
    return TrialResult(metrics=report, model=pruned)
