"""What data-driven criteria share: calibration batches, forward hooks on timm blocks, and the
per-head view of a block's ``qkv`` output.

Internals are read with forward hooks on timm's own submodules (never a patched ``forward``) and
handed to a callback while the forward pass runs, so that a criterion keeps only the statistics it
needs. Every hook is removed when the pass ends, and the model's train/eval mode is restored.

>>> logits = forward_hooked(model, images, on_heads=lambda layer, out: ...)   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from vitprune.spaces import Architecture, InputError

Batch = tuple[Tensor, Tensor]
Hook = Callable[[int, Tensor], None]


def nested(t: Tensor) -> Any:
    """A tensor as nested tuples of Python floats (the form :class:`Scores` stores)."""
    return tuple(nested(row) for row in t) if t.dim() else float(t)


def require_data(criterion: str, data: Iterable[Batch] | None) -> list[Batch]:
    """The calibration batches as a list (so that they can be read more than once)."""
    batches = list(data) if data is not None else []
    if not batches:
        raise InputError(f"criterion {criterion}: needs calibration data (data=[(images, labels), ...])")
    return batches


def require_classifier(criterion: str, base: Architecture) -> None:
    if base.num_classes == 0:
        raise InputError(f"criterion {criterion}: needs a classifier head, and {base.model} has none")


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the duration; its previous mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def forward_hooked(
    model: nn.Module,
    images: Tensor,
    *,
    on_qkv: Hook | None = None,
    on_heads: Hook | None = None,
    on_mlp: Hook | None = None,
) -> Tensor:
    """Run ``model(images)`` and hand each block's internals to the callbacks as they are computed.

    Args:
        model: a dense timm ViT (timm ``Block``s with ``Attention`` and ``Mlp``).
        images: ``(B, C, H, W)``.
        on_qkv: called with ``(layer, qkv)``, the output of ``attn.qkv``: ``(B, N, 3·H·hd)`` laid
            out ``[q | k | v]``, each head-major (see :func:`split_qkv`).
        on_heads: called with ``(layer, heads)``, the input of ``attn.proj``: ``(B, N, H·hd)``, the
            concatenated per-head attention outputs.
        on_mlp: called with ``(layer, act)``, the output of ``mlp.act``: ``(B, N, hidden)``.

    Returns:
        The model's output, ``(B, classes)``.
    """
    with ExitStack() as stack:
        for i, block in enumerate(model.blocks):
            if on_qkv is not None:
                hook = block.attn.qkv.register_forward_hook(_output_to(on_qkv, i))
                stack.callback(hook.remove)
            if on_heads is not None:
                hook = block.attn.proj.register_forward_pre_hook(_input_to(on_heads, i))
                stack.callback(hook.remove)
            if on_mlp is not None:
                hook = block.mlp.act.register_forward_hook(_output_to(on_mlp, i))
                stack.callback(hook.remove)
        return model(images)


def _output_to(callback: Hook, layer: int) -> Callable[..., None]:
    def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        callback(layer, output)

    return hook


def _input_to(callback: Hook, layer: int) -> Callable[..., None]:
    def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        callback(layer, args[0])

    return hook


def split_qkv(qkv: Tensor, *, num_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """Split timm's fused ``qkv`` output ``(B, N, 3·H·hd)`` into ``q, k, v``, each ``(B, H, N, hd)``."""
    B, N, width = qkv.shape
    head_dim = width // (3 * num_heads)
    return qkv.view(B, N, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)


def sample_tokens(num_tokens: int, count: int, *, first: int = 0, seed: int = 0) -> Tensor:
    """``count`` token positions out of ``num_tokens`` (sorted), always including ``range(first)``.

    The same positions are used for every image so that per-image features are comparable.
    """
    if count >= num_tokens:
        return torch.arange(num_tokens)
    g = torch.Generator().manual_seed(seed)
    rest = first + torch.randperm(num_tokens - first, generator=g)[: max(0, count - first)]
    return torch.cat([torch.arange(min(first, count)), rest]).sort().values


def take_images(batches: list[Batch], max_images: int) -> Iterator[Batch]:
    """The batches truncated to the first ``max_images`` images in order."""
    left = max_images
    for images, labels in batches:
        if left <= 0:
            return
        yield images[:left], labels[:left]
        left -= len(images[:left])
