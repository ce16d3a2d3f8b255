"""Torch-Pruning 1.6's timm ViT recipe and the variants its example script offers, each pruned
onto a MACs target, for the race of ``benchmarks/peers.py``.

The recipe itself (``MetaPruner``, ``GroupMagnitudeImportance``, head dims, ``round_to=8``,
embedding width pruned, the dense ``scale`` kept) is :mod:`gpu_torch_pruning`'s; this module
reuses its attention ``forward``, MAC counter and result type, and adds the options of
Torch-Pruning's ``examples/transformers/prune_timm_vit.py``:

- importance (``--pruning_type``): ``l1`` (the recipe's default), ``l2``, ``taylor`` (gradients
  of the cross-entropy on calibration batches, accumulated before the pruner steps);
- structure: ``head_dims`` (the recipe: every head keeps fewer dims, the embedding width is pruned
  too), ``heads`` (``--prune_num_heads``: whole heads, ``head_pruning_ratio`` = the ratio),
  ``bottleneck`` (``--bottleneck``: every ``fc2`` ignored, so the embedding width is kept and
  only head dims and MLP neurons are pruned).

One pruning ratio serves every layer; :func:`prune_to_macs` searches it for the least-pruned
model at or below a MACs target. The ratio → MACs map is a staircase, so the model usually lands
below the target: the race reports where it landed.
"""

from __future__ import annotations

import copy
import math
import time
import types
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import gpu_torch_pruning as recipe
import torch
import torch.nn.functional as F
from timm.layers import Attention
from torch import Tensor, nn

IMPORTANCES = ("l1", "l2", "taylor")
STRUCTURES = {
    "head_dims": "head dims + embedding width",
    "heads": "whole heads + embedding width",
    "bottleneck": "head dims, embedding width kept",
}
Batch = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class Variant:
    """One Torch-Pruning configuration: an importance and a structure."""

    importance: str
    structure: str

    def __post_init__(self) -> None:
        if self.importance not in IMPORTANCES:
            raise ValueError(f"importance: {self.importance!r} (known: {', '.join(IMPORTANCES)})")
        if self.structure not in STRUCTURES:
            raise ValueError(f"structure: {self.structure!r} (known: {', '.join(STRUCTURES)})")

    @property
    def key(self) -> str:
        return f"{self.importance}/{self.structure}"

    @property
    def label(self) -> str:
        return f"{self.importance.upper()}, {STRUCTURES[self.structure]}"

    @classmethod
    def parse(cls, text: str) -> Variant:
        """``"l1/head_dims"`` → ``Variant("l1", "head_dims")``."""
        importance, _, structure = text.partition("/")
        return cls(importance, structure or "head_dims")


RECIPE = Variant("l1", "head_dims")
ALL_VARIANTS = tuple(Variant(i, s) for s in STRUCTURES for i in IMPORTANCES)


def _importance(name: str) -> object:
    import torch_pruning as tp

    factories = {
        "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
        "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
        "taylor": tp.importance.GroupTaylorImportance,
    }
    return factories[name]()


def prune(
    dense: nn.Module,
    ratio: float,
    variant: Variant = RECIPE,
    *,
    calibration: Sequence[Batch] = (),
    round_to: int = 8,
) -> nn.Module:
    """A pruned copy of ``dense`` (CPU, fp32) at Torch-Pruning ``pruning_ratio=ratio``.

    ``calibration`` batches feed the Taylor importance (required for it, unused otherwise). With
    ``RECIPE`` this builds the same model as :func:`gpu_torch_pruning.prune` (tested).
    """
    import torch_pruning as tp

    if variant.importance == "taylor" and not calibration:
        raise ValueError("taylor importance: needs calibration batches")
    model = copy.deepcopy(dense).float().cpu().eval()
    num_heads = {}
    for module in model.modules():
        if isinstance(module, Attention):
            module.forward = types.MethodType(recipe._attention_forward, module)
            num_heads[module.qkv] = module.num_heads
    ignored = [model.head]
    if variant.structure == "bottleneck":
        ignored += [block.mlp.fc2 for block in model.blocks]
    whole_heads = variant.structure == "heads"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "will prune the last non-singleton dimension" of cls/pos tokens
        pruner = tp.pruner.MetaPruner(
            model,
            torch.randn(1, *recipe._image_shape(model)),
            importance=_importance(variant.importance),
            pruning_ratio=ratio,
            ignored_layers=ignored,
            num_heads=num_heads,
            prune_num_heads=whole_heads,
            prune_head_dims=not whole_heads,
            head_pruning_ratio=ratio if whole_heads else 0.0,
            round_to=round_to,
        )
        if variant.importance == "taylor":
            model.zero_grad()
            for images, labels in calibration:
                F.cross_entropy(model(images), labels).backward()
        pruner.step()
    model.zero_grad(set_to_none=True)
    for module in model.modules():
        if isinstance(module, Attention):
            if pruner.num_heads[module.qkv] == 0:
                raise ValueError(f"ratio {ratio:.3f} removes every head of a layer")
            module.num_heads = pruner.num_heads[module.qkv]
            module.head_dim = module.qkv.out_features // (3 * module.num_heads)
            module.attn_dim = module.num_heads * module.head_dim
    return model


def prune_to_macs(
    build: Callable[[float], nn.Module],
    target_macs: float,
    *,
    dense_macs: float,
    max_evaluations: int = 10,
    tolerance: float = 0.01,
    count: Callable[[nn.Module], float] = recipe.count_macs,
) -> recipe.Pruned:
    """The least-pruned model ``build(ratio)`` with at most ``target_macs``, found on the ratio.

    As :func:`gpu_torch_pruning.prune_to_macs` (whose search is tied to the recipe's ``prune``):
    ``MACs ≈ dense·(1 − ratio)²`` proposes the next ratio, bisection takes over on a step of the
    staircase or outside the bracket of ratios known too small / large enough. Stops within
    ``tolerance`` below the target or after ``max_evaluations``; ``reached=False`` when no model
    tried fits (the most pruned one is returned).
    """
    started = time.perf_counter()
    aim = target_macs * (1 - tolerance / 2)
    low, high = 0.0, 0.95  # ratios known too small / large enough (0.95: the most we try)
    tried: dict[float, tuple[nn.Module, float]] = {}

    def evaluate(ratio: float) -> float | None:
        try:
            model = build(ratio)
        except ValueError:
            return None
        tried[ratio] = (model, count(model))
        return tried[ratio][1]

    ratio, previous = min(0.9, max(0.01, 1 - math.sqrt(aim / dense_macs))), None
    for _ in range(max_evaluations):
        value = evaluate(ratio)
        if value is not None and target_macs * (1 - tolerance) <= value <= target_macs:
            break
        if value is None or value <= target_macs:
            high = min(high, ratio)
        else:
            low = max(low, ratio)
        proposal = (low + high) / 2
        if value is not None and value != previous:  # off a step of the staircase: the model can aim
            aimed = 1 - (1 - ratio) * math.sqrt(aim / value)
            proposal = aimed if low < aimed < high and abs(aimed - ratio) > 1e-3 else proposal
        if high - low <= 1e-3 or proposal in tried:
            break
        ratio, previous = proposal, value
    if not tried:
        raise ValueError(f"no ratio tried could be built ({max_evaluations} tries)")
    fitting = [(macs, r) for r, (_, macs) in tried.items() if macs <= target_macs]
    _, chosen = max(fitting) if fitting else min((macs, r) for r, (_, macs) in tried.items())
    return recipe.Pruned(
        model=tried[chosen][0],
        ratio=chosen,
        macs=tried[chosen][1],
        reached=bool(fitting),
        evaluations=len(tried),
        seconds=time.perf_counter() - started,
    )


def structure(model: nn.Module) -> dict[str, object]:
    """Embedding width, head counts and dims, MLP widths of a Torch-Pruning model."""
    attention = [m for m in model.modules() if isinstance(m, Attention)]
    return {
        "embed_dim": int(model.patch_embed.proj.out_channels),
        "num_heads": sorted({int(m.num_heads) for m in attention}),
        "head_dims": sorted({int(m.head_dim) for m in attention}),
        "mlp_hidden": sorted({int(block.mlp.fc1.out_features) for block in model.blocks}),
    }
