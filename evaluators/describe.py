"""Read a timm ``VisionTransformer`` into the :class:`~vitprune.spaces.Architecture` a policy carries,
and create dense timm models from that description.

Supported: timm's ``VisionTransformer`` and ``VisionTransformerDistilled`` (DeiT, DeiT-distilled,
ViT with a class token or average pooling, register tokens, LayerScale, pre-norm) built from timm's
``Block``, ``Attention`` and ``Mlp``. Variants whose structure does not survive width pruning
unchanged (q/k norm, scale norms, gated attention, GLU MLPs, attention pooling, dynamic image size)
are refused with a message saying which part is unsupported.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from timm.layers import Attention, LayerNorm, Mlp
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from vitprune.spaces import Architecture, InputError


def _unsupported(model_name: str, what: str) -> InputError:
    return InputError(f"model {model_name}: {what} is not supported by vitprune's surgery")


def _check_block(block: nn.Module, i: int, name: str) -> None:
    if type(block) is not Block:
        raise _unsupported(name, f"block {i} of type {type(block).__name__} (expected timm Block)")
    attn, mlp = block.attn, block.mlp
    if type(attn) is not Attention:
        raise _unsupported(name, f"attention {type(attn).__name__} in block {i}")
    if not all(isinstance(m, nn.Identity) for m in (attn.q_norm, attn.k_norm, attn.norm)):
        raise _unsupported(name, f"q/k or scale normalisation in block {i}")
    if attn.gate is not None or attn.proj.out_features != attn.qkv.in_features:
        raise _unsupported(name, f"gated or resized attention in block {i}")
    if type(mlp) is not Mlp or not isinstance(mlp.norm, nn.Identity) or not isinstance(mlp.fc1, nn.Linear):
        raise _unsupported(name, f"MLP {type(mlp).__name__} in block {i}")
    if (mlp.fc1.bias is None) != (mlp.fc2.bias is None):
        raise _unsupported(name, f"an MLP with a bias on only one of fc1/fc2 in block {i}")
    if not isinstance(block.norm1, nn.LayerNorm | LayerNorm):
        raise _unsupported(name, f"norm {type(block.norm1).__name__} in block {i}")


def describe(
    model: nn.Module, *, name: str | None = None, model_args: dict[str, Any] | None = None
) -> Architecture:
    """The architecture of a dense timm ViT.

    Args:
        model: a dense timm ``VisionTransformer`` (not yet pruned).
        name: its timm model name; read from ``model.pretrained_cfg`` when omitted.
        model_args: the ``timm.create_model`` overrides it was built with; the image size and
            class count are always recorded so that the policy rebuilds the same model.

    Raises:
        InputError: the model is not a supported timm ViT, or is already pruned.
    """
    name = name or getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
    if not isinstance(model, VisionTransformer):
        raise InputError(f"model {name}: expected a timm VisionTransformer, got {type(model).__name__}")
    if getattr(model, "attn_pool", None) is not None or model.global_pool not in ("token", "avg"):
        raise _unsupported(name, f"global_pool={model.global_pool!r}")
    if model.dynamic_img_size:
        raise _unsupported(name, "dynamic_img_size")
    if not isinstance(model.patch_embed.norm, nn.Identity):
        raise _unsupported(name, "a normalised patch embedding")
    blocks = list(model.blocks)
    if any(type(block).__name__ == "PrunedBlock" for block in blocks):
        raise InputError(f"model {name}: already pruned; apply policies to the dense model")
    for i, block in enumerate(blocks):
        _check_block(block, i, name)

    first = blocks[0]
    attn, mlp = first.attn, first.mlp
    distilled = getattr(model, "dist_token", None) is not None
    head_out = model.head.out_features if isinstance(model.head, nn.Linear) else 0
    args = dict(model_args or {})
    args["img_size"] = list(model.patch_embed.img_size)
    args["num_classes"] = head_out
    return Architecture(
        model=name,
        model_args=args,
        embed_dim=model.embed_dim,
        depth=len(blocks),
        num_heads=attn.num_heads,
        head_dim=attn.head_dim,
        mlp_hidden=mlp.fc1.out_features,
        in_chans=model.patch_embed.proj.in_channels,
        patch_size=tuple(model.patch_embed.patch_size),
        grid_size=tuple(model.patch_embed.grid_size),
        num_prefix_tokens=model.num_prefix_tokens,
        class_token=model.cls_token is not None,
        num_classes=head_out,
        num_classifiers=(2 if distilled else 1) if head_out else 0,
        global_pool=model.global_pool,
        qkv_bias=attn.qkv.bias is not None,
        proj_bias=attn.proj.bias is not None,
        mlp_bias=mlp.fc1.bias is not None,
        patch_bias=model.patch_embed.proj.bias is not None,
        norm_bias=first.norm1.bias is not None,
        layer_scale=not isinstance(first.ls1, nn.Identity),
        pos_embed_len=model.pos_embed.shape[1] if model.pos_embed is not None else 0,
        pre_norm=not isinstance(model.norm_pre, nn.Identity),
        final_norm=not (isinstance(model.norm, nn.Identity) and isinstance(model.fc_norm, nn.Identity)),
    )


def create_dense(base: Architecture, *, device: torch.device | str = "cpu") -> nn.Module:
    """A freshly initialised dense timm model of ``base`` (on ``"meta"`` it allocates nothing)."""
    with torch.device(device):
        try:
            return timm.create_model(base.model, pretrained=False, **base.model_args)
        except RuntimeError as error:  # timm's message for an unknown name
            raise InputError(f"base.model: {error}") from None


def check_matches(model: nn.Module, base: Architecture) -> None:
    """Raise :class:`InputError` unless ``model`` has the dims the policy was made for."""
    actual = describe(model, name=base.model, model_args=base.model_args)
    for key in (
        "embed_dim",
        "depth",
        "num_heads",
        "head_dim",
        "mlp_hidden",
        "grid_size",
        "num_prefix_tokens",
        "num_classes",
        "num_classifiers",
    ):
        want, got = getattr(base, key), getattr(actual, key)
        if want != got:
            raise InputError(
                f"policy base.{key} is {want} but the model has {got}; was the policy made for it?"
            )
