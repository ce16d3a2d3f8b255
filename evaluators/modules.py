"""The modules a pruned ViT is built from. They replace timm ``Block``s inside a timm
``VisionTransformer``; everything outside the blocks stays timm's own.

A pruned block is two residual sub-layers, either of which may be ``nn.Identity`` (removed)::

    AttentionLayer:  x = x + ls1(attn(norm1(x)));  x = tokens(x, cls_attention)
    MlpLayer:        x = x + ls2(mlp(norm2(x)))

``PrunedAttention`` keeps ``num_heads`` heads with ``qk_dim`` query/key dims and ``v_dim`` value
dims each (``qk_dim != v_dim`` allowed) and the dense model's scale, and runs
``F.scaled_dot_product_attention`` (which picks a fused kernel when the widths allow it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PrunedAttention(nn.Module):
    """Multi-head self-attention with independent query/key and value head widths.

    Args:
        dim: token width ``D``.
        num_heads: kept heads ``H``.
        qk_dim: query/key dims per head.
        v_dim: value dims per head.
        scale: the dense model's scale ``head_dim**-0.5`` (pruning q/k dims removes terms from
            each score; it does not rescale the rest).
        score_tokens: also return the class token's attention (mean over heads), for token pruning.
        qkv_bias, proj_bias: whether the projections carry biases.
        attn_drop, proj_drop: dropout rates (training only).

    ``qkv`` is one ``Linear(D, H·(2·qk_dim + v_dim))`` laid out ``[q heads | k heads | v heads]``.

    Shapes: ``x`` is ``(B, N, D)``; returns ``(out (B, N, D), cls_attention (B, N) or None)``.
    """

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        qk_dim: int,
        v_dim: int,
        scale: float,
        score_tokens: bool = False,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qk_dim = qk_dim
        self.v_dim = v_dim
        self.attn_dim = num_heads * v_dim
        self.scale = scale
        self.score_tokens = score_tokens
        self.attn_drop = attn_drop
        self.split = (num_heads * qk_dim, num_heads * qk_dim, num_heads * v_dim)
        self.qkv = nn.Linear(dim, sum(self.split), bias=qkv_bias, device=device, dtype=dtype)
        self.proj = nn.Linear(self.attn_dim, dim, bias=proj_bias, device=device, dtype=dtype)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        B, N, _ = x.shape
        q, k, v = self.qkv(x).split(self.split, dim=-1)
        q = q.view(B, N, self.num_heads, self.qk_dim).transpose(1, 2)
        k = k.view(B, N, self.num_heads, self.qk_dim).transpose(1, 2)
        v = v.view(B, N, self.num_heads, self.v_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale
        )
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, self.attn_dim)))
        return out, (cls_attention(q, k, self.scale) if self.score_tokens else None)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, qk_dim={self.qk_dim}, v_dim={self.v_dim}, scale={self.scale:.4g}"


def cls_attention(q: Tensor, k: Tensor, scale: float) -> Tensor:
    """The class token's attention over all tokens, averaged over heads.

    Only the class query row is computed: ``H·N·d_qk`` MACs instead of ``H·N²·d_qk``.

    Args:
        q: ``(B, H, N, d)`` queries; row 0 is the class token.
        k: ``(B, H, N, d)`` keys.
        scale: the attention scale.

    Returns:
        ``(B, N)`` attention weights of the class token, each row summing to one.
    """
    logits = (q[:, :, :1] * scale) @ k.transpose(-2, -1)  # (B, H, 1, N)
    return logits.softmax(dim=-1).mean(dim=1).squeeze(1)


class KeepTokens(nn.Module):
    """Keeps the prefix tokens and the ``keep`` patch tokens the class token attends to most.

    Shapes: ``x`` is ``(B, N, D)``, ``cls_attention`` ``(B, N)``; returns ``(B, prefix + keep, D)``.
    """

    def __init__(self, keep: int, *, num_prefix_tokens: int) -> None:
        super().__init__()
        self.keep = keep
        self.num_prefix_tokens = num_prefix_tokens

    def forward(self, x: Tensor, cls_attention: Tensor | None) -> Tensor:
        assert cls_attention is not None, "KeepTokens needs an attention that scores tokens"
        prefix = self.num_prefix_tokens
        index = cls_attention[:, prefix:].topk(self.keep, dim=1).indices + prefix
        patches = x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        return torch.cat([x[:, :prefix], patches], dim=1)

    def extra_repr(self) -> str:
        return f"keep={self.keep}, num_prefix_tokens={self.num_prefix_tokens}"


class KeepAllTokens(nn.Module):
    """The no-op token selection of layers that do not prune tokens."""

    def forward(self, x: Tensor, cls_attention: Tensor | None) -> Tensor:
        return x


class AttentionLayer(nn.Module):
    """Pre-norm residual attention sub-layer followed by token selection."""

    def __init__(
        self,
        *,
        norm: nn.Module,
        attn: PrunedAttention,
        ls: nn.Module,
        drop_path: nn.Module,
        tokens: nn.Module,
    ) -> None:
        super().__init__()
        self.norm = norm
        self.attn = attn
        self.ls = ls
        self.drop_path = drop_path
        self.tokens = tokens

    def forward(self, x: Tensor) -> Tensor:
        out, cls_attn = self.attn(self.norm(x))
        return self.tokens(x + self.drop_path(self.ls(out)), cls_attn)


class MlpLayer(nn.Module):
    """Pre-norm residual MLP sub-layer; ``mlp`` is a timm ``Mlp`` or, merged, one ``nn.Linear``."""

    def __init__(self, *, norm: nn.Module, mlp: nn.Module, ls: nn.Module, drop_path: nn.Module) -> None:
        super().__init__()
        self.norm = norm
        self.mlp = mlp
        self.ls = ls
        self.drop_path = drop_path

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop_path(self.ls(self.mlp(self.norm(x))))


class PrunedBlock(nn.Module):
    """A transformer block after pruning: ``attn`` and ``mlp`` are sub-layers or ``nn.Identity``."""

    def __init__(self, *, attn: nn.Module, mlp: nn.Module) -> None:
        super().__init__()
        self.attn = attn
        self.mlp = mlp

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("pruned ViT blocks take no attention mask (token pruning changes the sequence)")
        return self.mlp(self.attn(x))
