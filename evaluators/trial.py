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
from collections.abc import Callable, Hashable, Sequence
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
from vitprune.evaluators.measure import accuracy, latency_side_by_side
from vitprune.evaluators.surgery import apply_policy
from vitprune.spaces import Architecture, Policy, cost

OnEpoch = Callable[[EpochMetrics, nn.Module], bool | None]

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


_CONTEXTS: dict[Hashable, TrialContext] = {}


def shared_context(key: Hashable, build: Callable[[], TrialContext]) -> TrialContext:
    """The context stored under ``key``, built by ``build`` once per process: every trial a worker
    runs reuses its dense model and data. The one cache of the process."""
    if key not in _CONTEXTS:
        _CONTEXTS[key] = build()
    return _CONTEXTS[key]


def cached_context(
    model: ModelConfig,
    data: DataConfig,
    dense_training: DenseTrainingConfig,
    cache_dir: Path | None = None,
    *,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
) -> TrialContext:
    """The context for these configurations, with the dense model trained (once, cached on disk)
    or loaded; ``on_epoch`` follows the dense model's training, when it has to be trained."""

    def build() -> TrialContext:
        dense, splits = prepare_dense(model, data, dense_training, cache_dir=cache_dir, on_epoch=on_epoch)
        return TrialContext(
            dense=dense.model, base=dense.base, data=splits, dense_test_accuracy=dense.test_accuracy
        )

    key = ("configs", model.digest(), data.digest(), dense_training.digest(), str(cache_dir))
    return shared_context(key, build)


def evaluate_policy(
    policy: Policy,
    context: TrialContext,
    *,
    finetune_config: FinetuneConfig,
    latency_config: LatencyConfig | None = None,
    latency_reference_ms: float | None = None,
    device: str = "auto",
    test: bool = False,
    on_epoch: OnEpoch | None = None,
) -> TrialResult:
    """Build ``policy`` from the dense weights, then :func:`evaluate` it (fine-tuned with the dense
    model as teacher) on search-val, and on test if ``test`` (never during a search)."""
    return evaluate(
        apply_policy(context.dense, policy),
        policy,
        data=context.data,
        teacher=context.dense,
        finetune_config=finetune_config,
        latency_config=latency_config,
        latency_reference_ms=latency_reference_ms,
        splits=("search-val", "test") if test else ("search-val",),
        device=device,
        on_epoch=on_epoch,
    )


def evaluate(
    model: nn.Module,
    policy: Policy,
    *,
    data: DataSplits,
    teacher: nn.Module | None = None,
    finetune_config: FinetuneConfig | None = None,
    latency_config: LatencyConfig | None = None,
    latency_reference_ms: float | None = None,
    splits: Sequence[str] = ("search-val",),
    compare_dense: bool = False,
    device: str = "auto",
    on_epoch: OnEpoch | None = None,
) -> TrialResult:
    """Fine-tune a pruned model (optionally, distilling ``teacher``) and measure it: the one
    pipeline behind search trials, ``vitprune evaluate`` and ``vitprune export``.

    Args:
        model: the pruned model of ``policy``; fine-tuned in place (and returned).
        policy: its policy (for the exact MACs and parameters).
        data: the splits.
        teacher: the dense model: the distillation teacher, and what ``compare_dense`` measures.
        finetune_config: the fine-tune (``None``: measure as it is).
        latency_config: how to measure latency (``None``: not measured).
        latency_reference_ms: the dense latency a latency budget was set from. The model is then
            timed side by side with ``teacher``, and ``latency_ms`` is its ratio to the teacher
            times this: a trial timed while other trials train reads slower, and the dense model
            beside it reads slower alike (``latency_measured_ms`` is the time as read).
        splits: where to measure accuracy; the first one is ``accuracy`` / ``top5``.
        compare_dense: also measure ``teacher`` on the same splits, and its latency side by side.
        device: training device (``"auto"``: CUDA when available).
        on_epoch: called after each fine-tune epoch with its metrics and the model; returning
            ``True`` stops the fine-tune (early stopping).

    Returns:
        The model and its metrics: ``accuracy``, ``top5``, ``<split>_accuracy`` per split,
        ``macs``, ``params`` and their ``*_ratio`` to dense; when fine-tuned
        ``zero_shot_accuracy``, ``finetune_seconds``, ``finetune_epochs``, ``stopped_early``; when
        latency is measured ``latency_ms`` (+ ``latency_min_ms``, ``latency_max_ms``,
        ``latency_seconds``); with ``compare_dense`` ``dense_<split>_accuracy``,
        ``dense_latency_ms`` and ``latency_ratio``; with ``latency_reference_ms`` the last two and
        ``latency_measured_ms``.
    """
    if compare_dense and teacher is None:
        raise ValueError("compare_dense: needs the dense model as teacher")
    if latency_reference_ms is not None and teacher is None:
        raise ValueError("latency_reference_ms: needs the dense model as teacher, to time beside it")
    train_device = resolve_device(device)
    model = model.to(train_device)
    report: dict[str, Any] = {}
    if finetune_config is not None:
        report["zero_shot_accuracy"] = accuracy(model, data.eval_loader(splits[0]), device=train_device).top1
        callback = None if on_epoch is None else (lambda metrics: on_epoch(metrics, model))
        result = finetune(
            model, data=data, config=finetune_config, teacher=teacher, device=train_device, on_epoch=callback
        )
        report |= {
            "finetune_seconds": result.seconds,
            "finetune_epochs": result.epochs,
            "stopped_early": result.stopped_early,
        }
    for i, split in enumerate(splits):
        measured = accuracy(model, data.eval_loader(split), device=train_device)
        report[f"{split.replace('-', '_')}_accuracy"] = measured.top1
        if i == 0:
            report |= {"accuracy": measured.top1, "accuracy_sem": measured.top1_sem, "top5": measured.top5}
        if compare_dense:
            dense = accuracy(teacher, data.eval_loader(split), device=train_device).top1
            report[f"dense_{split.replace('-', '_')}_accuracy"] = dense
    costs, dense_costs = cost(policy), cost(Policy.keep_all(policy.base))
    report |= {
        "macs": costs.macs,
        "params": costs.params,
        "macs_ratio": costs.macs / dense_costs.macs,
        "params_ratio": costs.params / dense_costs.params,
    }
    if latency_config is not None:
        started = time.perf_counter()
        beside = compare_dense or latency_reference_ms is not None
        models = {"pruned": model, **({"dense": teacher} if beside else {})}
        times = latency_side_by_side(
            models,
            batch_size=latency_config.batch_size,
            device=resolve_device(latency_config.device),
            dtype=getattr(torch, latency_config.dtype),
            warmup=latency_config.warmup,
            repeats=latency_config.repeats,
        )
        pruned = times["pruned"]
        report |= {
            "latency_ms": pruned.median_ms,
            "latency_min_ms": pruned.min_ms,
            "latency_max_ms": pruned.max_ms,
            "latency_seconds": time.perf_counter() - started,
        }
        if beside:
            report["dense_latency_ms"] = times["dense"].median_ms
            report["latency_ratio"] = pruned.median_ms / times["dense"].median_ms
        if latency_reference_ms is not None:
            report["latency_measured_ms"] = pruned.median_ms
            report["latency_ms"] = report["latency_ratio"] * latency_reference_ms
    return TrialResult(metrics=report, model=model)
