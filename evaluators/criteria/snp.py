"""Attention-score preservation (SNP, Shim et al., "Structured Neuron-level Pruning to Preserve
Attention Scores", ECCV 2024).

Query/key dims are graph-connected: dim ``d`` of a head is removed from ``q`` and ``k`` together,
which removes exactly one rank-one term from that head's attention logits. A q/k dim is scored by
how much the head's attention *scores* (the softmax rows) change when that term is removed. Value
dims are scored independently by the change they make to the block output through ``proj``, and
whole heads by the part of their output that the other heads of the layer do not already produce
(inter-head redundancy).

From the paper, confirmed via its abstract and README: the joint q/k pruning that preserves the
attention scores, the independent value pruning, the inter-head redundancy. Not confirmed (the
official code delegates the scoring to a closed service): the exact measure of attention-score
change and of redundancy; the measures below are chosen to be exact removal effects.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from vitprune.evaluators.criteria import register_criterion
from vitprune.evaluators.criteria.capture import (
    evaluating,
    forward_hooked,
    nested,
    require_data,
    sample_tokens,
    split_qkv,
)
from vitprune.evaluators.criteria.weights import BlockWeights
from vitprune.spaces import Architecture, Scores


def qk_removal_kl(q: Tensor, k: Tensor, *, scale: float) -> Tensor:
    """Change of the attention rows when each q/k dim is removed, summed over rows and images.

    With logits ``S = s·q·kᵀ`` and ``Δ_d = s·q_{:,d}·k_{:,d}ᵀ`` (the term of dim ``d``), the score
    of dim ``d`` is ``Σ_rows KL(softmax(S) ‖ softmax(S − Δ_d))``, computed in closed form per row
    ``i`` as ``Σ_j A_ij Δ_d,ij − logsumexp(S_i) + logsumexp(S_i − Δ_d,i)``. A dim whose key part is
    constant over tokens shifts each row uniformly and scores 0: it carries no attention information.

    Args:
        q: ``(B, H, T, hd)`` query rows (a sample of the tokens).
        k: ``(B, H, N, hd)`` keys of all tokens.
        scale: the attention scale.

    Returns:
        ``(H, hd)`` float64.
    """
    q, k = q.double(), k.double()
    logits = scale * q @ k.mT  # (B, H, T, N)
    attn = logits.softmax(dim=-1)
    lse = logits.logsumexp(dim=-1)
    out = torch.empty(q.shape[1], q.shape[-1], dtype=torch.float64)
    step = max(1, (1 << 24) // logits.numel())  # dims per chunk: at most ~16M elements at once
    for start in range(0, q.shape[-1], step):
        dims = slice(start, start + step)
        delta = scale * q[..., None, dims] * k[:, :, None, :, dims]  # (B, H, T, N, d)
        shifted = (logits[..., None] - delta).logsumexp(dim=-2)  # (B, H, T, d)
        kl = (attn[..., None] * delta).sum(-2) - lse[..., None] + shifted
        out[:, dims] = kl.clamp_min(0).sum(dim=(0, 2))
    return out


def pivoted_residuals(gram: Tensor) -> Tensor:
    """Greedy (pivoted Cholesky) residual norms of ``U`` vectors given their Gram matrix ``(U, U)``.

    Repeatedly takes the vector with the largest norm after projecting out the span of those
    already taken; returns each vector's residual norm at the moment it is taken. The residuals are
    non-increasing in that order, and a vector in the span of earlier ones (a duplicate) gets 0.
    """
    g = gram.double().clone()
    residual = g.diagonal().clone()
    out = torch.zeros_like(residual)
    taken = torch.zeros(len(residual), dtype=torch.bool)
    basis = []
    negligible = 1e-12 * float(residual.max().clamp_min(0))  # rounding left by a duplicate
    for _ in range(len(residual)):
        pick = int(torch.where(taken, -torch.inf, residual).argmax())
        taken[pick] = True
        out[pick] = residual[pick].clamp_min(0).sqrt()
        if residual[pick] <= negligible:
            continue
        column = g[:, pick].clone()
        for b in basis:
            column -= b * b[pick]
        b = column / out[pick]
        basis.append(b)
        residual = residual - b.square()
    return out


@register_criterion("snp", scores=("heads", "qk", "v"))
def snp(
    model: nn.Module, *, base: Architecture, data: Any = None, num_queries: int = 16, seed: int = 0
) -> Scores:
    """q/k-dim, v-dim and head scores that preserve attention scores and block outputs.

    Over the calibration images (all tokens, except that q/k uses a sample of query rows):

    - ``qk[l][h][d]`` = mean over images of :func:`qk_removal_kl`, the change of the head's
      attention rows when dim ``d`` is removed from ``q`` and ``k``; ``num_queries`` query rows
      are sampled once with ``seed`` (prefix tokens always included), keys are all tokens;
    - ``v[l][h][d]`` = ``rms(o_{h,d})·‖W_proj[:, h, d]‖``, the root-mean-square change of the
      block output when value dim ``d`` is removed (``o`` the attention output ``(B, N, H, hd)``);
    - ``heads[l][h]`` = the root-mean-square residual of the head's output ``c_h = o_h·W_proj,hᵀ``
      after projecting out the outputs of the heads ranked before it (:func:`pivoted_residuals` on
      ``G_hh' = Σ_tokens ⟨c_h, c_h'⟩``): a head that another head already reproduces scores ~0.
    """
    batches = require_data("snp", data)
    weights = [BlockWeights.of(block) for block in model.blocks]
    queries = sample_tokens(
        base.num_patches + base.num_prefix_tokens, num_queries, first=base.num_prefix_tokens, seed=seed
    )
    L, H, hd = base.depth, base.num_heads, base.head_dim
    qk = torch.zeros(L, H, hd, dtype=torch.float64)
    # Σ over tokens of o·oᵀ, o the (H·hd) attention output: gives both the v-dim mean squares (its
    # diagonal) and the head Gram G_hh' = Σ ⟨W_h o_h, W_h' o_h'⟩ without forming (tokens, H, D) outputs.
    moments = torch.zeros(L, H * hd, H * hd, dtype=torch.float64)
    counts = {"images": 0, "tokens": 0}

    def on_qkv(layer: int, out: Tensor) -> None:
        q, k, _ = split_qkv(out, num_heads=H)
        qk[layer] += qk_removal_kl(q[:, :, queries], k, scale=model.blocks[layer].attn.scale)

    def on_heads(layer: int, out: Tensor) -> None:
        o = out.double().flatten(0, 1)  # (B·N, H·hd)
        moments[layer] += o.T @ o

    with torch.inference_mode(), evaluating(model):
        for images, _ in batches:
            forward_hooked(model, images, on_qkv=on_qkv, on_heads=on_heads)
            counts["images"] += images.shape[0]
            counts["tokens"] += images.shape[0] * (base.num_patches + base.num_prefix_tokens)
    moments /= counts["tokens"]
    proj = [w.proj.double().flatten(1) for w in weights]  # (D, H·hd)
    proj_norms = torch.stack([p.norm(dim=0) for p in proj]).view(L, H, hd)
    v = moments.diagonal(dim1=1, dim2=2).view(L, H, hd).sqrt() * proj_norms
    heads = torch.stack(
        [
            pivoted_residuals((m * (p.T @ p)).view(H, hd, H, hd).sum(dim=(1, 3)))
            for m, p in zip(moments, proj, strict=True)
        ]
    )
    return Scores(
        criterion="snp",
        heads=nested(heads),
        qk=nested(qk / counts["images"]),
        v=nested(v),
    ).check(base)
