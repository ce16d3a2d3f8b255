"""Measurement: top-1/top-5 accuracy and latency (warm-up, synchronisation, median with min/max).

Latency is measured, never estimated: ``torch.inference_mode()``, warm-up runs first, the device
synchronised around every timed run, and the median reported with the min and max. To compare
models on a noisy machine, :func:`latency_side_by_side` interleaves their runs so that load changes
hit all of them alike.

Measuring never changes what is measured: latency runs on a copy moved to the measuring device
and dtype (a bf16 measurement must not round the fp32 weights a trial then saves), and accuracy
restores the model's train/eval mode.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import timm
import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Latency:
    """One model's latency at one batch size; times in milliseconds per batch."""

    median_ms: float
    min_ms: float
    max_ms: float
    repeats: int
    batch_size: int
    device: str
    dtype: str
    torch_version: str
    timm_version: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _input(model: nn.Module, batch_size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    embed = model.patch_embed
    return torch.randn(batch_size, embed.proj.in_channels, *embed.img_size, device=device, dtype=dtype)


def latency_side_by_side(
    models: Mapping[str, nn.Module],
    *,
    batch_size: int,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    warmup: int = 3,
    repeats: int = 10,
) -> dict[str, Latency]:
    """Latency of several timm ViTs measured in interleaved rounds (one run of each per round).

    Args:
        models: name → model; each is measured as an eval-mode copy on ``device``/``dtype``,
            the model itself is left as it was.
        batch_size: images per forward pass.
        device: where to run (``"cpu"``, ``"cuda"``, ``"cuda:1"``...).
        dtype: parameter and input dtype (``torch.bfloat16`` on GPUs).
        warmup: untimed rounds first (kernel selection, caches, lazy init).
        repeats: timed rounds.

    Returns:
        name → :class:`Latency`.
    """
    device = torch.device(device)
    prepared = {
        name: copy.deepcopy(model).to(device=device, dtype=dtype).eval() for name, model in models.items()
    }
    inputs = {name: _input(model, batch_size, device, dtype) for name, model in prepared.items()}
    times: dict[str, list[float]] = {name: [] for name in prepared}
    with torch.inference_mode():
        for round_index in range(warmup + repeats):
            for name, model in prepared.items():
                _synchronize(device)
                start = time.perf_counter()
                model(inputs[name])
                _synchronize(device)
                if round_index >= warmup:
                    times[name].append((time.perf_counter() - start) * 1e3)
    return {
        name: Latency(
            median_ms=statistics.median(ms),
            min_ms=min(ms),
            max_ms=max(ms),
            repeats=repeats,
            batch_size=batch_size,
            device=device_name(device),
            dtype=str(dtype).removeprefix("torch."),
            torch_version=torch.__version__,
            timm_version=timm.__version__,
        )
        for name, ms in times.items()
    }


def latency(
    model: nn.Module,
    *,
    batch_size: int,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    warmup: int = 3,
    repeats: int = 10,
) -> Latency:
    """Latency of one timm ViT; see :func:`latency_side_by_side` for the arguments."""
    return latency_side_by_side(
        {"model": model}, batch_size=batch_size, device=device, dtype=dtype, warmup=warmup, repeats=repeats
    )["model"]


@dataclass(frozen=True)
class Accuracy:
    top1: float
    top5: float | None
    samples: int

    @property
    def top1_sem(self) -> float:
        """Standard error of ``top1`` as an estimate of the accuracy on unseen images: binomial,
        with one right and one wrong image added (Laplace) so that 0 % and 100 % are not exact."""
        p = (self.top1 * self.samples + 1) / (self.samples + 2)
        return math.sqrt(p * (1 - p) / self.samples)


def accuracy(
    model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], *, device: str | torch.device = "cpu"
) -> Accuracy:
    """Top-1 (and top-5 when there are at least 10 classes) accuracy over ``batches``."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    correct1 = correct5 = total = 0
    top5_possible = True
    with torch.inference_mode():
        for images, labels in batches:
            logits = model(images.to(device, non_blocking=True))
            labels = labels.to(device)
            top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
            correct1 += int((top[:, 0] == labels).sum())
            correct5 += int((top == labels[:, None]).any(dim=-1).sum())
            top5_possible &= logits.shape[-1] >= 10
            total += labels.numel()
    model.train(was_training)
    if total == 0:
        raise ValueError("accuracy: no samples")
    return Accuracy(top1=correct1 / total, top5=correct5 / total if top5_possible else None, samples=total)
