"""Torch-Pruning 1.6's timm ViT recipe, as a baseline pruned to the same MACs as vitprune.

The recipe (Torch-Pruning's ``examples/transformers/prune_timm_vit.py``, FIELD_NOTES):
``MetaPruner`` with ``GroupMagnitudeImportance`` (L1, the recipe's default), ``num_heads`` per qkv
layer, head *dims* pruned (not whole heads), ``round_to=8``, the classifier ignored; it prunes the
embedding width too. Its attention ``forward`` is replaced by one that reads the pruned widths;
unlike the recipe's, ours passes ``scale=self.scale`` so that pruned head dims keep the softmax
temperature (FIELD_NOTES). One pruning ratio serves every layer, so the MACs target is reached by
a search on that ratio; its ratio → MACs map is a staircase, so the result lands at or below the
target, as close as the staircase allows.

MACs are counted as vitprune's tests count them: ``FlopCounterMode`` FLOPs / 2 at batch 1, with
attention on PyTorch's math kernel (the fused CPU kernel has no FLOP formula and counts 0).
"""

from __future__ import annotations

import copy
import importlib.metadata
import math
import time
import types
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import Attention
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


def version() -> str | None:
    """The installed Torch-Pruning version, or ``None``."""
    try:
        return importlib.metadata.version("torch-pruning")
    except importlib.metadata.PackageNotFoundError:
        return None


def _image_shape(model: nn.Module) -> tuple[int, int, int]:
    embed = model.patch_embed
    return (embed.proj.in_channels, *embed.img_size)


def count_macs(model: nn.Module) -> float:
    """Per-image MACs of a timm ViT, counted on a CPU fp32 copy (``model`` is unchanged)."""
    counted = copy.deepcopy(model).float().cpu().eval()
    images = torch.randn(1, *_image_shape(model))
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        counted(images)
    return counter.get_total_flops() / 2


def _attention_forward(self: Attention, x: Tensor, attn_mask: Tensor | None = None, **_: object) -> Tensor:
    """The recipe's attention: widths from the pruned linears, the dense model's scale kept."""
    B, N, _ = x.shape
    qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.scale)
    return self.proj(x.transpose(1, 2).reshape(B, N, -1))


def prune(dense: nn.Module, ratio: float, *, round_to: int = 8) -> nn.Module:
    """A pruned copy of ``dense`` (CPU, fp32) at Torch-Pruning ``pruning_ratio=ratio``."""
    import torch_pruning as tp

    model = copy.deepcopy(dense).float().cpu().eval()
    num_heads = {}
    for module in model.modules():
        if isinstance(module, Attention):
            module.forward = types.MethodType(_attention_forward, module)
            num_heads[module.qkv] = module.num_heads
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "will prune the last non-singleton dimension" of cls/pos tokens
        pruner = tp.pruner.MetaPruner(
            model,
            torch.randn(1, *_image_shape(model)),
            importance=tp.importance.GroupMagnitudeImportance(p=1),
            pruning_ratio=ratio,
            ignored_layers=[model.head],
            num_heads=num_heads,
            prune_num_heads=False,
            prune_head_dims=True,
            round_to=round_to,
        )
        pruner.step()
    for module in model.modules():
        if isinstance(module, Attention):
            module.num_heads = pruner.num_heads[module.qkv]
            module.head_dim = module.qkv.out_features // (3 * module.num_heads)
            module.attn_dim = module.num_heads * module.head_dim
    return model


@dataclass
class Pruned:
    """The Torch-Pruning model chosen for a MACs target, and how it was found."""

    model: nn.Module
    ratio: float
    macs: float
    reached: bool
    evaluations: int
    seconds: float

    def structure(self) -> dict[str, object]:
        attention = [m for m in self.model.modules() if isinstance(m, Attention)]
        return {
            "embed_dim": int(self.model.patch_embed.proj.out_channels),
            "head_dims": sorted({int(m.head_dim) for m in attention}),
            "num_heads": sorted({int(m.num_heads) for m in attention}),
            "mlp_hidden": sorted({int(b.mlp.fc1.out_features) for b in self.model.blocks}),
        }


def prune_to_macs(
    dense: nn.Module,
    target_macs: float,
    *,
    dense_macs: float,
    max_evaluations: int,
    tolerance: float = 0.01,
) -> Pruned:
    """The least-pruned Torch-Pruning model with at most ``target_macs``, found on its ratio.

    ``dense_macs`` is ``count_macs(dense)``. Width pruning shrinks MACs on both sides of a linear
    layer, so ``MACs ≈ dense·(1 − ratio)²``: each step proposes the ratio that model predicts
    from the last count, aiming just under the target, and falls back to bisecting between the
    tightest ratios known to be too small and large enough when the proposal leaves that bracket.
    The map is a staircase (``round_to``) and not even monotonic at extreme ratios (a width that
    would round to 0 is left whole), so on a step the search bisects instead. Stops within
    ``tolerance`` below the target or after ``max_evaluations`` prunes; if none of those fits, one
    more prune aims well under the target, and if even that does not fit, the most pruned model
    tried is returned with ``reached=False``.
    """
    started = time.perf_counter()
    aim = target_macs * (1 - tolerance / 2)
    low, low_value, high = 0.0, dense_macs, None  # ratios known too small / large enough
    ratio = min(0.9, max(0.01, 1 - math.sqrt(aim / dense_macs)))
    best: tuple[nn.Module, float, float] | None = None
    smallest: tuple[nn.Module, float, float] | None = None
    evaluations = 0

    def evaluate(ratio: float) -> float:
        nonlocal best, smallest, evaluations
        model = prune(dense, ratio)
        value = count_macs(model)
        evaluations += 1
        if smallest is None or value < smallest[2]:
            smallest = (model, ratio, value)
        if value <= target_macs and (best is None or value > best[2]):
            best = (model, ratio, value)
        return value

    previous = None
    while evaluations < max_evaluations:
        value = evaluate(ratio)
        if value <= target_macs:
            high = ratio
            if value >= target_macs * (1 - tolerance):
                break
        else:
            low, low_value = ratio, value
        upper = 0.95 if high is None else high
        proposal = 1 - (1 - ratio) * math.sqrt(aim / value)
        stuck = value == previous  # on one step of the staircase: the model cannot see past it
        if stuck or not low < proposal < upper or abs(proposal - ratio) <= 1e-3:
            proposal = (low + upper) / 2
        ratio, previous = proposal, value
    if best is None:  # every try was too large: one more, aimed well under the target
        evaluate(min(0.95, 1 - (1 - low) * math.sqrt(0.6 * aim / low_value)))
    chosen = best or smallest
    assert chosen is not None  # max_evaluations >= 1
    return Pruned(
        model=chosen[0],
        ratio=chosen[1],
        macs=chosen[2],
        reached=best is not None,
        evaluations=evaluations,
        seconds=time.perf_counter() - started,
    )
