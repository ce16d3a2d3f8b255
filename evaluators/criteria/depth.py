"""Depth (BoundaryDPT, "Pushing the Boundaries of Depth Pruning for Vision Transformers"): attention
sub-layers and MLP activations are ranked separately, by how much the calibration loss grows when
each one alone is removed.

The two kinds are heterogeneous (an attention layer mixes tokens; a GELU is the only non-linearity
of an MLP, whose removal lets ``fc1`` and ``fc2`` fold into one linear map), so their scores are
never compared with each other: the search decides how many of each to remove, this ranking decides
which. Confirmed from the paper's abstract: attention and activation layers as separate pruning
targets and their heterogeneity. Not confirmed: the exact ranking statistic; removal loss on
calibration data is the direct measure.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitprune.evaluators.criteria import register_criterion
from vitprune.evaluators.criteria.capture import evaluating, require_classifier, require_data
from vitprune.spaces import Architecture, Scores


@contextmanager
def removed(
    model: nn.Module, *, attention: int | None = None, activation: int | None = None
) -> Iterator[None]:
    """``model`` with one attention sub-layer and/or one MLP activation removed, via forward hooks.

    Removing block ``l``'s attention makes its residual update zero (a hook on ``ls1`` returns zeros,
    so ``x ↦ x``), which is what the surgery builds for ``attention: false``. Removing its activation
    makes ``mlp.act`` the identity (``activation: false``). The hooks are removed on exit.
    """
    handles = []
    try:
        if attention is not None:
            handles.append(
                model.blocks[attention].ls1.register_forward_hook(lambda m, args, out: torch.zeros_like(out))
            )
        if activation is not None:
            handles.append(
                model.blocks[activation].mlp.act.register_forward_hook(lambda m, args, out: args[0])
            )
        yield
    finally:
        for handle in handles:
            handle.remove()


def block_inputs(model: nn.Module, images: Tensor) -> tuple[Tensor, list[Tensor]]:
    """The model's output and the residual stream entering each block, ``(B, N, D)`` each."""
    inputs: list[Tensor] = []
    handles = [
        block.register_forward_pre_hook(lambda m, args: inputs.append(args[0])) for block in model.blocks
    ]
    try:
        return model(images), inputs
    finally:
        for handle in handles:
            handle.remove()


def forward_from(model: nn.Module, x: Tensor, start: int) -> Tensor:
    """The rest of the forward pass from the input of block ``start``: blocks, final norm, head."""
    for block in model.blocks[start:]:
        x = block(x)
    return model.forward_head(model.norm(x))


def kl_to(reference: Tensor, logits: Tensor) -> Tensor:
    """``Σ_b KL(softmax(reference_b) ‖ softmax(logits_b))`` over a batch ``(B, classes)``."""
    return F.kl_div(logits.log_softmax(-1), reference.log_softmax(-1), log_target=True, reduction="sum")


@register_criterion("depth", scores=("depth",))
def depth(model: nn.Module, *, base: Architecture, data: Any = None) -> Scores:
    """Attention-layer and activation-layer scores: the loss increase when each is removed alone.

    The loss is the KL divergence from the dense model's own predictions, averaged over the
    calibration images: ``attn_layers[l] = mean_b KL(p_b ‖ p_b^{−attn l})`` and
    ``act_layers[l] = mean_b KL(p_b ‖ p_b^{−act l})``. KL to the dense predictions rather than
    cross-entropy to the labels because it is exactly 0 for a removal that changes nothing and
    positive otherwise, needs no labels, and does not reward a removal that happens to fit a
    calibration label better. Each removal reruns only blocks ``l..L−1`` from the dense input of
    block ``l``: about ``depth + 2`` full forward passes per batch instead of ``2·depth + 1``.
    """
    require_classifier("depth", base)
    batches = require_data("depth", data)
    attn = torch.zeros(base.depth, dtype=torch.float64)
    act = torch.zeros(base.depth, dtype=torch.float64)
    count = 0
    with torch.inference_mode(), evaluating(model):
        for images, _ in batches:
            dense, inputs = block_inputs(model, images)
            dense = dense.double()
            for layer in range(base.depth):
                with removed(model, attention=layer):
                    attn[layer] += kl_to(dense, forward_from(model, inputs[layer], layer).double())
                with removed(model, activation=layer):
                    act[layer] += kl_to(dense, forward_from(model, inputs[layer], layer).double())
            count += images.shape[0]
    return Scores(
        criterion="depth",
        attn_layers=tuple((attn / count).clamp_min(0).tolist()),  # clamp: rounding around 0
        act_layers=tuple((act / count).clamp_min(0).tolist()),
    ).check(base)
