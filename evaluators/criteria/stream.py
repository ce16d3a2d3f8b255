"""The residual stream's coupled weights: every tensor that reads or writes channel ``c`` of the
embedding width, which ``embed`` pruning removes together (one index set for the whole model).

For each coupled tensor, ``slices(model)`` yields the tensor and the axis along which its slices
are the channels: the patch embedding's output rows, the prefix tokens and position embedding, every
norm and LayerScale, the input columns of ``qkv`` and ``fc1``, the output rows of ``proj`` and
``fc2``, and the classifiers' input columns.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn


def coupled(model: nn.Module) -> Iterator[tuple[Tensor, int]]:
    """``(tensor, channel axis)`` for every parameter coupled to the residual stream's channels."""
    yield model.patch_embed.proj.weight, 0
    if model.patch_embed.proj.bias is not None:
        yield model.patch_embed.proj.bias, 0
    for name in ("cls_token", "reg_token", "dist_token", "pos_embed"):
        token = getattr(model, name, None)
        if isinstance(token, nn.Parameter):
            yield token, -1
    for module in _channel_modules(model):
        yield from ((p, 0) for p in module.parameters(recurse=False))
    for block in model.blocks:
        yield block.attn.qkv.weight, 1
        yield block.attn.proj.weight, 0
        if block.attn.proj.bias is not None:
            yield block.attn.proj.bias, 0
        yield block.mlp.fc1.weight, 1
        yield block.mlp.fc2.weight, 0
        if block.mlp.fc2.bias is not None:
            yield block.mlp.fc2.bias, 0
    for name in ("head", "head_dist"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Linear):
            yield head.weight, 1


def _channel_modules(model: nn.Module) -> Iterator[nn.Module]:
    """Norms and LayerScales of the stream (their parameters are one value per channel)."""
    modules = [model.norm_pre, model.norm, model.fc_norm]
    for block in model.blocks:
        modules += [block.norm1, block.ls1, block.norm2, block.ls2]
    return (m for m in modules if not isinstance(m, nn.Identity) and any(True for _ in m.parameters()))


def per_channel(tensor: Tensor, axis: int, reduce: str) -> Tensor:
    """``(D,)``: ``tensor`` reduced over every axis but ``axis`` (``"l1"``, ``"l2"`` or ``"sum"``)."""
    moved = tensor.detach().double().movedim(axis, 0).reshape(tensor.shape[axis], -1)
    if reduce == "l1":
        return moved.abs().sum(dim=1)
    if reduce == "l2":
        return moved.pow(2).sum(dim=1).sqrt()
    return moved.sum(dim=1)


def mean_normalised(scores: list[Tensor]) -> Tensor:
    """The average of per-tensor channel scores, each divided by its own mean over channels, so
    that large matrices and small norms weigh alike (Torch-Pruning's ``normalizer="mean"``)."""
    return torch.stack([s / s.mean().clamp_min(1e-12) for s in scores]).mean(dim=0)
