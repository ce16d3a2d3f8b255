"""What the sections of the GPU check share: settings, the dense models, the time budget.

``Settings`` holds the two configurations the check runs in: the real one (DeiT-S/B/Ti at
224 px, bf16, batch 256 on CUDA) and ``--tiny``, the same code paths with 12-block models of
width 48–96 at 32 px on the CPU, which runs in seconds so that a default test keeps the script
from rotting.
"""

from __future__ import annotations

import copy
import gc
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import timm
import torch
from gpu_timing import Timing, example_input, time_round_robin
from speedup import families
from torch import nn

from vitprune.evaluators import describe
from vitprune.evaluators.criteria import get_criterion
from vitprune.spaces import Architecture, InputError, Policy, Scores, macs
from vitprune.spaces.budget import fit_to_budget

# The joint family of benchmarks/speedup.py: all six dimensions at once.
JOINT = "joint (all six)"


@dataclass(frozen=True)
class ModelSpec:
    """A dense model: its label in tables, timm name and ``create_model`` overrides."""

    label: str
    name: str
    args: dict[str, Any] = field(default_factory=dict)


FULL_MODELS = {
    "deit_t": ModelSpec("DeiT-Ti", "deit_tiny_patch16_224"),
    "deit_s": ModelSpec("DeiT-S", "deit_small_patch16_224"),
    "deit_b": ModelSpec("DeiT-B", "deit_base_patch16_224"),
}
# 12 blocks like the real models (BoundaryDPT's layer lists index up to block 11), head dim 16 so
# that q/k and v widths can be pruned in steps of 8; 16 patches so that tokens can be pruned.
_TINY = {"img_size": 32, "patch_size": 8, "depth": 12, "num_classes": 10}
TINY_MODELS = {
    "deit_t": ModelSpec("DeiT-Ti (tiny)", "deit_tiny_patch16_224", _TINY | {"embed_dim": 48, "num_heads": 3}),
    "deit_s": ModelSpec("DeiT-S (tiny)", "deit_small_patch16_224", _TINY | {"embed_dim": 64, "num_heads": 4}),
    "deit_b": ModelSpec("DeiT-B (tiny)", "deit_base_patch16_224", _TINY | {"embed_dim": 96, "num_heads": 6}),
}


@dataclass(frozen=True)
class Settings:
    """Everything that differs between the GPU run and ``--tiny``."""

    tiny: bool
    device: str
    dtype: str
    batch: int  # the throughput batch every section reports
    small_batches: tuple[int, ...]  # also measured for the joint policies and the seeds
    warmup: int
    repeats: int
    models: Mapping[str, ModelSpec]
    budgets: tuple[float, ...] = (0.5, 0.25)  # fractions of dense MACs
    speedup_models: tuple[str, ...] = ("deit_s", "deit_b")
    tp_models: tuple[str, ...] = ("deit_s", "deit_b")
    tp_max_evaluations: int = 5  # Torch-Pruning prunes per MACs target (a search on its ratio)
    latency_models: tuple[str, ...] = ("deit_s", "deit_b")
    latency_batch: int = 256
    holdout: int = 12
    finetune_batch: int = 64
    finetune_steps: int = 40
    finetune_images: int = 512
    expected_s: Mapping[str, float] = field(default_factory=dict)  # per section; skip below it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gpu_settings() -> Settings:
    return Settings(
        tiny=False,
        device="cuda",
        dtype="bfloat16",
        batch=256,
        small_batches=(1, 32),
        warmup=5,
        repeats=20,
        models=FULL_MODELS,
        # Upper estimates on one H100/H200 (BENCHMARKS.md, section 5 explains them).
        expected_s={"speedup": 90, "seeds": 40, "torch_pruning": 150, "latency_model": 100, "training": 45},
    )


def tiny_settings() -> Settings:
    return Settings(
        tiny=True,
        device="cpu",
        dtype="bfloat16",
        batch=8,
        small_batches=(1, 2),
        warmup=1,
        repeats=3,
        models=TINY_MODELS,
        tp_models=("deit_s",),
        tp_max_evaluations=3,
        latency_models=("deit_s",),
        latency_batch=8,
        finetune_batch=8,
        finetune_steps=6,
        finetune_images=24,
        expected_s={},
    )


@dataclass(frozen=True)
class Dense:
    """A dense model the check prunes: CPU fp32 weights, its description, scores and MACs.

    ``full_size_macs`` is the MACs of the full-size timm model of the same name (equal to
    ``macs`` outside ``--tiny``): absolute budgets such as SNP's 2.0 G become fractions of it.
    """

    key: str
    label: str
    model: nn.Module
    base: Architecture
    scores: Scores
    macs: float
    full_size_macs: float


def fit_family(family: Callable[[float], Policy], budget_macs: float) -> tuple[Policy, bool]:
    """The largest policy of ``family`` within ``budget_macs`` (the search's bisection); when even
    the smallest exceeds the budget, the smallest, flagged as not reaching it."""
    try:
        return fit_to_budget(family, macs, budget_macs).policy, True
    except InputError:
        return family(0.0), False


class OutOfTime(Exception):
    """Less time is left than the next step of a section needs."""


class Skipped(Exception):
    """A section cannot run here (say why)."""


def full_size_macs(name: str) -> float:
    """MACs of the full-size timm model ``name`` (built on the meta device: no memory, no time)."""
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    return macs(Policy.keep_all(describe(model, name=name)))


class Lab:
    """The dense models (built once, shared by all sections), timing on the device, the deadline.

    Args:
        settings: the run's settings.
        deadline: ``time.monotonic()`` value after which no new step starts.
        log: progress printer.
        checkpoint: writes the report so far (called after every measured group).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        deadline: float,
        log: Callable[[str], None],
        checkpoint: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.device = torch.device(settings.device)
        self.dtype = getattr(torch, settings.dtype)
        self.deadline = deadline
        self.log = log
        self.checkpoint = checkpoint
        self._dense: dict[str, Dense] = {}
        self._joint: dict[tuple[str, float], tuple[Policy, bool]] = {}

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    def check_time(self, needed_s: float, what: str) -> None:
        """Raise :class:`OutOfTime` unless ``needed_s`` seconds are left for ``what``."""
        if self.left_s() < needed_s:
            raise OutOfTime(f"{what}: {max(0.0, self.left_s()):.0f} s left, about {needed_s:.0f} s needed")

    def dense(self, key: str) -> Dense:
        """The dense model ``key`` with random weights (seed 0), scored by weight magnitude."""
        if key not in self._dense:
            spec = self.settings.models[key]
            torch.manual_seed(0)
            model = timm.create_model(spec.name, pretrained=False, **spec.args).eval()
            base = describe(model, name=spec.name, model_args=dict(spec.args))
            dense_macs = macs(Policy.keep_all(base))
            self._dense[key] = Dense(
                key=key,
                label=spec.label,
                model=model,
                base=base,
                scores=get_criterion("magnitude")(model, base=base),
                macs=dense_macs,
                full_size_macs=full_size_macs(spec.name) if self.settings.tiny else dense_macs,
            )
        return self._dense[key]

    def joint(self, key: str, budget: float) -> tuple[Policy, bool]:
        """The joint policy of benchmarks/speedup.py projected onto ``budget`` of dense MACs."""
        if (key, budget) not in self._joint:
            dense = self.dense(key)
            family = families(dense.base, dense.scores)[JOINT]
            self._joint[key, budget] = fit_family(family, budget * dense.macs)
        return self._joint[key, budget]

    def place(self, model: nn.Module, *, copy_first: bool = False) -> nn.Module:
        """``model`` on the device in the run's dtype, in eval mode (a copy with ``copy_first``)."""
        if copy_first:
            model = copy.deepcopy(model)
        return model.to(device=self.device, dtype=self.dtype).eval()

    def time(self, models: Mapping[str, nn.Module], batch: int) -> dict[str, Timing]:
        """Round-robin latency of placed ``models`` at ``batch`` (see :mod:`gpu_timing`)."""
        inputs = example_input(next(iter(models.values())), batch, device=self.device, dtype=self.dtype)
        return time_round_robin(models, inputs, warmup=self.settings.warmup, repeats=self.settings.repeats)

    def release(self) -> None:
        """Free what the last group left on the device."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
