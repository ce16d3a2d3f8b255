"""Views of a dense timm block's weights per head and per dim, shared by weight-based criteria."""

from __future__ import annotations

from dataclasses import dataclass

from timm.models.vision_transformer import Block
from torch import Tensor


@dataclass(frozen=True)
class BlockWeights:
    """The weights of one dense block, split per head.

    Shapes: ``q``, ``k``, ``v`` are ``(H, head_dim, D)`` (rows of ``qkv``); ``proj`` is
    ``(D, H, head_dim)`` (columns of ``proj``); ``fc1`` ``(hidden, D)``; ``fc2`` ``(D, hidden)``.
    """

    q: Tensor
    k: Tensor
    v: Tensor
    proj: Tensor
    fc1: Tensor
    fc2: Tensor

    @classmethod
    def of(cls, block: Block) -> BlockWeights:
        attn = block.attn
        H, hd = attn.num_heads, attn.head_dim
        q, k, v = attn.qkv.weight.detach().float().view(3, H, hd, -1).unbind(0)
        proj = attn.proj.weight.detach().float().view(-1, H, hd)
        return cls(
            q=q,
            k=k,
            v=v,
            proj=proj,
            fc1=block.mlp.fc1.weight.detach().float(),
            fc2=block.mlp.fc2.weight.detach().float(),
        )
