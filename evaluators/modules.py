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
    When ``qk_dim != v_dim`` the narrower of q/k and v is zero-padded to ``sdpa_dim`` before the
    attention call (exact), because PyTorch's fused kernels need equal widths.

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
        self.sdpa_dim = max(qk_dim, v_dim)  # fused kernels need equal q/k and v widths: pad the narrower
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
        # Zero dims change no score and add zero output columns, so padding is exact; without it,
        # unequal widths fall back to the math kernel, which is slower than the dense model. Equal
        # widths need no padding (F.pad would still copy q, k and v: 36 copies a pass in DeiT-S).
        padded = (q, k, v)
        if self.qk_dim != self.v_dim:
            qk_pad, v_pad = (0, self.sdpa_dim - self.qk_dim), (0, self.sdpa_dim - self.v_dim)
            padded = (F.pad(q, qk_pad), F.pad(k, qk_pad), F.pad(v, v_pad))
        out = F.scaled_dot_product_attention(
            *padded, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale
        )
        if self.qk_dim != self.v_dim:
            out = out[..., : self.v_dim]
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
    """Keeps the prefix tokens and the ``keep`` most important patch tokens.

    Importance is the class token's attention over the current patch tokens, optionally fused with
    an offline per-position prior (STAR): ``fusion · online + (1 − fusion) · prior[position]``, both
    renormalised over the current patches. ``positions`` are the grid positions of the current patch
    tokens (``None``: all patches, in grid order) and are returned updated.

    Shapes: ``x`` ``(B, N, D)``; ``positions`` ``(B, N − prefix)`` or ``None``; ``cls_attention``
    ``(B, N)``; returns ``(B, prefix + keep, D)`` and ``(B, keep)``.
    """

    def __init__(
        self,
        keep: int,
        *,
        num_prefix_tokens: int,
        prior: Tensor | None = None,
        fusion: float = 1.0,
    ) -> None:
        super().__init__()
        self.keep = keep
        self.num_prefix_tokens = num_prefix_tokens
        self.fusion = fusion
        self.register_buffer("prior", prior)

    def forward(
        self, x: Tensor, positions: Tensor | None, cls_attention: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        assert cls_attention is not None, "KeepTokens needs an attention that scores tokens"
        prefix = self.num_prefix_tokens
        if positions is None:
            positions = torch.arange(x.shape[1] - prefix, device=x.device).expand(x.shape[0], -1)
        score = cls_attention[:, prefix:]
        if self.prior is not None:
            prior = self.prior[positions]
            score = self.fusion * score / score.sum(-1, keepdim=True) + (1 - self.fusion) * prior / prior.sum(
                -1, keepdim=True
            )
        index = score.topk(self.keep, dim=1).indices
        # One gather of the prefix and the kept patches (concatenating the small index, not the tokens).
        prefix_rows = torch.arange(prefix, device=x.device).expand(x.shape[0], -1)
        rows = torch.cat([prefix_rows, index + prefix], dim=1)
        return x.gather(1, rows.unsqueeze(-1).expand(-1, -1, x.shape[-1])), positions.gather(1, index)

    def extra_repr(self) -> str:
        fused = f", fusion={self.fusion:.3g}" if self.prior is not None else ""
        return f"keep={self.keep}, num_prefix_tokens={self.num_prefix_tokens}{fused}"


class KeepAllTokens(nn.Module):
    """The no-op token selection of layers that do not prune tokens."""

    def forward(
        self, x: Tensor, positions: Tensor | None, cls_attention: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        return x, positions


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

    def forward(self, x: Tensor, positions: Tensor | None) -> tuple[Tensor, Tensor | None]:
        out, cls_attn = self.attn(self.norm(x))
        return self.tokens(x + self.drop_path(self.ls(out)), positions, cls_attn)


class NoAttention(nn.Module):
    """A removed attention sub-layer: the residual stream passes through unchanged."""

    def forward(self, x: Tensor, positions: Tensor | None) -> tuple[Tensor, Tensor | None]:
        return x, positions


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
    """A transformer block after pruning: ``attn`` is an :class:`AttentionLayer` or
    :class:`NoAttention`, ``mlp`` an :class:`MlpLayer` or ``nn.Identity``.

    Takes and returns the grid positions of the patch tokens along with the tokens.
    """

    def __init__(self, *, attn: nn.Module, mlp: nn.Module) -> None:
        super().__init__()
        self.attn = attn
        self.mlp = mlp

    def forward(self, x: Tensor, positions: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        x, positions = self.attn(x, positions)
        return self.mlp(x), positions


class PrunedBlocks(nn.Sequential):
    """Replaces timm's ``model.blocks``: runs the pruned blocks in order, carrying token positions.

    timm calls ``model.blocks(x)``; this returns the tokens only. Attention masks are not supported
    (token pruning changes the sequence).
    """

    def forward(self, x: Tensor) -> Tensor:
        positions = None
        for block in self:
            x, positions = block(x, positions)
        return x
