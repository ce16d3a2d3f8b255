"""Reference computations for surgery tests: the dense timm model with masks, and an explicit
forward pass (full attention matrices, explicit top-k gather) written independently of vitprune."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from vitprune.spaces import Policy


def masked_dense(model: nn.Module, policy: Policy) -> nn.Module:
    """A copy of the dense model whose pruned units are zeroed instead of removed.

    Pruned q/k dims and v dims get zero rows in ``qkv`` (so they add nothing to scores or outputs),
    removed heads get zero value rows, removed neurons zero ``fc1`` rows (GELU(0) = 0), and a removed
    activation becomes ``nn.Identity`` (the unmerged activation-free MLP).
    """
    masked = copy.deepcopy(model)
    base = policy.base
    hd, width = base.head_dim, base.attn_dim
    with torch.no_grad():
        for block, layer in zip(masked.blocks, policy.layers, strict=True):
            keep_q = torch.zeros(width, dtype=torch.bool)
            keep_v = torch.zeros(width, dtype=torch.bool)
            for h, qk_dims, v_dims in zip(layer.heads, layer.qk, layer.v, strict=True):
                keep_q[[h * hd + d for d in qk_dims]] = True
                keep_v[[h * hd + d for d in v_dims]] = True
            keep_rows = torch.cat([keep_q, keep_q, keep_v])
            block.attn.qkv.weight[~keep_rows] = 0
            if block.attn.qkv.bias is not None:
                block.attn.qkv.bias[~keep_rows] = 0
            keep_n = torch.zeros(base.mlp_hidden, dtype=torch.bool)
            keep_n[list(layer.mlp)] = True
            block.mlp.fc1.weight[~keep_n] = 0
            if block.mlp.fc1.bias is not None:
                block.mlp.fc1.bias[~keep_n] = 0
            if not layer.activation:
                block.mlp.act = nn.Identity()
    return masked


def reference_forward(model: nn.Module, policy: Policy, x: torch.Tensor) -> torch.Tensor:
    """Explicit forward of a (masked) dense timm ViT following ``policy``'s depth and token choices,
    on the residual channels ``policy.embed`` keeps: every linear map reads or writes only those
    columns or rows of the dense weights, and every norm normalises over them."""
    base = policy.base
    prefix = base.num_prefix_tokens
    e = list(range(base.embed_dim)) if policy.embed is None else list(policy.embed)

    def norm(module: nn.Module, y: torch.Tensor) -> torch.Tensor:
        if isinstance(module, nn.Identity):
            return y
        weight = None if module.weight is None else module.weight[e]
        bias = None if module.bias is None else module.bias[e]
        return F.layer_norm(y, (len(e),), weight, bias, module.eps)

    def scale(module: nn.Module, y: torch.Tensor) -> torch.Tensor:
        return y if isinstance(module, nn.Identity) else y * module.gamma[e]

    def reads(linear: nn.Module, y: torch.Tensor) -> torch.Tensor:  # a map from the stream
        if isinstance(linear, nn.Identity):  # a model without a classifier returns its features
            return y
        return F.linear(y, linear.weight[:, e], linear.bias)

    def writes(linear: nn.Linear, y: torch.Tensor) -> torch.Tensor:  # a map into the stream
        return F.linear(y, linear.weight[e], None if linear.bias is None else linear.bias[e])

    x = model._pos_embed(model.patch_embed(x))[..., e]  # elementwise: slicing commutes with it
    x = norm(model.norm_pre, x)
    tokens = base.num_patches
    positions = torch.arange(tokens).expand(x.shape[0], -1)  # grid position of each patch token
    for block, layer in zip(model.blocks, policy.layers, strict=True):
        if layer.attention:
            attn = block.attn
            y = norm(block.norm1, x)
            B, N, _ = y.shape
            qkv = reads(attn.qkv, y).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            weights = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, H, N, N)
            out = (weights @ v).transpose(1, 2).reshape(B, N, base.attn_dim)
            x = x + scale(block.ls1, writes(attn.proj, out))
            if layer.keep_tokens < tokens:
                score = weights[:, list(layer.heads), 0, prefix:].mean(dim=1)  # kept heads only
                if layer.token_prior is not None:
                    prior = torch.tensor(layer.token_prior)[positions]
                    online = score / score.sum(dim=1, keepdim=True)
                    score = layer.token_fusion * online + (1 - layer.token_fusion) * prior / prior.sum(
                        1, keepdim=True
                    )
                index = score.topk(layer.keep_tokens, dim=1).indices
                rows = torch.arange(B).unsqueeze(1)
                x = torch.cat([x[:, :prefix], x[rows, index + prefix]], dim=1)
                positions = positions[rows, index]
        tokens = layer.keep_tokens
        if layer.mlp:
            mlp = block.mlp
            hidden = mlp.act(reads(mlp.fc1, norm(block.norm2, x)))
            x = x + scale(block.ls2, writes(mlp.fc2, hidden))
    x = norm(model.norm, x)
    pooled = x[:, prefix:].mean(dim=1) if base.global_pool == "avg" else x[:, 0]
    logits = reads(model.head, norm(model.fc_norm, pooled))
    if base.num_classifiers == 2:  # distilled DeiT at inference: the mean of both heads
        logits = (logits + reads(model.head_dist, norm(model.fc_norm, x[:, 1]))) / 2
    return logits
