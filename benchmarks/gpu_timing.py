"""Side-by-side latency for the GPU check: CUDA events, warm-up, round-robin rounds, medians.

Every model of a group runs once per round, and the round's starting model rotates, so clock
changes and thermal drift hit all models alike and no model always follows the same neighbour.
On CUDA each run is timed by a pair of CUDA events around it, the device synchronised first so
that every run starts on an idle GPU (launch overhead counts, as it does for a user at batch 1).
On CPU (``--tiny``) the same loop uses ``time.perf_counter``.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Timing:
    """One model's latency at one batch size, in milliseconds per batch."""

    median_ms: float
    min_ms: float
    max_ms: float
    repeats: int

    def to_dict(self) -> dict[str, float | int]:
        return {"median_ms": self.median_ms, "min_ms": self.min_ms, "max_ms": self.max_ms}


def on_device(model: nn.Module, *, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A copy of ``model`` in eval mode on ``device`` in ``dtype``; ``model`` itself is unchanged."""
    return copy.deepcopy(model).to(device=device, dtype=dtype).eval()


def example_input(model: nn.Module, batch: int, *, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Random images shaped for a timm ViT's patch embedding: ``(batch, C, H, W)``."""
    embed = model.patch_embed
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, embed.proj.in_channels, *embed.img_size, generator=generator)
    return images.to(device=device, dtype=dtype)


class _Timer:
    """Milliseconds of one forward pass: CUDA events on CUDA, ``perf_counter`` elsewhere."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        if self.cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)

    def __call__(self, model: nn.Module, inputs: Tensor) -> float:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.start.record()
            model(inputs)
            self.end.record()
            self.end.synchronize()
            return self.start.elapsed_time(self.end)
        start = time.perf_counter()
        model(inputs)
        return (time.perf_counter() - start) * 1e3


def time_round_robin(
    models: Mapping[str, nn.Module], inputs: Tensor, *, warmup: int, repeats: int
) -> dict[str, Timing]:
    """Latency of each model (already on ``inputs.device`` in ``inputs.dtype``), interleaved.

    Args:
        models: name → model in eval mode; all take ``inputs``.
        inputs: one batch, ``(B, C, H, W)``.
        warmup: untimed rounds first (kernel selection, cuBLAS heuristics, caches).
        repeats: timed rounds; the median, min and max over them are reported.
    """
    names = list(models)
    timer = _Timer(inputs.device)
    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.inference_mode():
        for round_index in range(warmup + repeats):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                elapsed = timer(models[name], inputs)
                if round_index >= warmup:
                    times[name].append(elapsed)
    return {
        name: Timing(median_ms=statistics.median(ms), min_ms=min(ms), max_ms=max(ms), repeats=repeats)
        for name, ms in times.items()
    }


def compare(dense: Timing, pruned: Timing, *, batch: int, macs_ratio: float) -> dict[str, float | int | None]:
    """The figures of one pruned model against its dense model at one batch size.

    ``efficiency = speedup · MACs ratio``: 1.0 means latency falls exactly as fast as MACs.
    """
    speedup = dense.median_ms / pruned.median_ms
    return {
        "batch": batch,
        "macs_ratio": macs_ratio,
        "dense_ms": dense.median_ms,
        "pruned_ms": pruned.median_ms,
        "pruned_min_ms": pruned.min_ms,
        "pruned_max_ms": pruned.max_ms,
        "latency_ratio": pruned.median_ms / dense.median_ms,
        "speedup": speedup,
        "efficiency": speedup * macs_ratio,
        "img_per_s": batch * 1e3 / pruned.median_ms,
        "dense_img_per_s": batch * 1e3 / dense.median_ms,
    }
