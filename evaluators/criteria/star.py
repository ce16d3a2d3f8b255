"""Token importance (STAR, Zhang, Wei & Freris, "Synergistic Patch Pruning for Vision Transformer:
Unifying Intra- & Inter-Layer Patch Importance", ICLR 2024).

Where a pruned layer drops patch tokens it ranks them by
``fusion · online + (1 − fusion) · prior[position]`` (see ``KeepTokens``): ``online`` is the class
token's attention in that layer (intra-layer, per image, computed at inference) and ``prior`` an
offline inter-layer importance of each patch-grid position. This criterion computes, per layer, the
prior, the fusion weight and a keep rate from calibration images.

Confirmed from the paper's abstract: the online [CLS] score, an offline inter-layer score, their
fusion by minimising a weighted average of KL divergences, and keep rates derived automatically
from offline metrics. Not confirmed (the full text was not available): how the inter-layer score is
propagated, the direction and weights of the KL terms, and the rate rule. The choices below are
principled stand-ins and are stated where they are made.
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
    split_qkv,
)
from vitprune.spaces import Architecture, InputError, Scores

_TINY = 1e-300


def kl_fusion_weight(online: Tensor, prior: Tensor, *, weight: float = 0.5, tol: float = 1e-12) -> float:
    """The fusion weight ``α ∈ [0, 1]`` that minimises a weighted sum of KL divergences.

    With ``f_b(α) = α·p_b + (1 − α)·q`` (the fused ranking distribution of image ``b``),

        ``α* = argmin_α mean_b [ w·KL(f_b ‖ p_b) + (1 − w)·KL(f_b ‖ q) ]``.

    The objective is convex in ``α`` (KL is convex, ``f`` affine in ``α``), with derivative
    ``J'(α) = mean_b Σ_i (p_bi − q_i)·(log f_bi − w·log p_bi − (1 − w)·log q_i)``, which is ``≤ 0``
    at 0 and ``≥ 0`` at 1, and ``J''(α) = mean_b Σ_i (p_bi − q_i)² / f_bi``; ``α*`` is the root of
    ``J'``, found by Newton steps kept inside a shrinking bracket (bisection where a step leaves it).
    This direction of the KL (the fused distribution against each source) leans towards the more
    confident source: mass that ``f`` puts where a source has none costs much. The other direction,
    ``w·KL(p ‖ f) + (1 − w)·KL(q ‖ f)``, is minimised by ``α = w`` for every input and would make the
    fusion a fixed hyper-parameter.

    For two-point distributions (one image) the optimum is closed-form: ``f(α*)`` is the
    normalised geometric mixture ``g ∝ p^w·q^(1−w)``, so ``α* = (g_1 − q_1)/(p_1 − q_1)``.

    Args:
        online: ``(n, P)`` per-image distributions ``p_b`` (rows sum to 1).
        prior: ``(P,)`` the offline distribution ``q``.
        weight: ``w``, the weight of the online term.
        tol: width of the final bracket around ``α*``.
    """
    p = online.double()
    q = prior.double().expand_as(p)
    diff = p - q
    anchor = weight * p.clamp_min(_TINY).log() + (1 - weight) * q.clamp_min(_TINY).log()

    def derivatives(alpha: float) -> tuple[float, float]:
        fused = (alpha * p + (1 - alpha) * q).clamp_min(_TINY)
        first = (diff * (fused.log() - anchor)).sum(-1).mean()
        return float(first), float((diff.square() / fused).sum(-1).mean())

    low, high = 0.0, 1.0
    if derivatives(low)[0] >= 0:
        return low
    if derivatives(high)[0] <= 0:
        return high
    alpha = 0.5
    for _ in range(200):  # Newton converges in a handful of steps; bisection alone needs ~40
        first, second = derivatives(alpha)
        low, high = (alpha, high) if first < 0 else (low, alpha)
        if first == 0 or high - low < tol:
            break
        step = alpha - first / second if second > 0 else -1.0
        alpha = step if low < step < high else (low + high) / 2
        if abs(first / max(second, _TINY)) < tol:
            break
    return alpha


def auto_keep_rates(effective: Tensor) -> Tensor:
    """Per-layer keep rates from the effective fraction of tokens each layer's ranking needs.

    The fraction of patch tokens kept after layer ``l`` is ``K_l = min(K_{l−1}, e_l)`` with
    ``K_{−1} = 1`` (tokens once dropped do not come back), and the rate of layer ``l`` is
    ``K_l / K_{l−1}`` in ``(0, 1]``, relative to the tokens entering it.

    Args:
        effective: ``(L,)`` fractions ``e_l ∈ (0, 1]``.
    """
    kept = torch.cummin(effective.double().clamp(max=1.0), dim=0).values
    return kept / torch.cat([kept.new_ones(1), kept[:-1]])


def perplexity(dist: Tensor) -> Tensor:
    """``exp(H(p))`` of each row of ``(..., P)``: the number of equally likely outcomes it equals."""
    p = dist.double()
    return torch.exp(-(p * p.clamp_min(_TINY).log()).sum(-1))


@register_criterion("star", scores=("tokens",))
def star(
    model: nn.Module,
    *,
    base: Architecture,
    data: Any = None,
    kl_weight: float = 0.5,
    floor: float = 1e-3,
) -> Scores:
    """Per-layer token prior, fusion weight and keep rate from the calibration images.

    For each layer ``l`` and image ``b``, with ``Ā_l`` ``(N, N)`` the head-averaged attention:

    - online score ``p_lb``: the class token's row ``Ā_l[0, patches]`` renormalised over the
      patches, exactly what ``KeepTokens`` fuses at inference (all heads kept);
    - inter-layer score ``r_lb``: attention rollout (Abnar & Zuidema, 2020) from the output back to
      the tokens leaving layer ``l``'s attention, ``e · Â_{L−1} ··· Â_{l+1}`` with
      ``Â = (Ā + I)/2`` (the residual path) and ``e`` uniform over the classifier tokens, restricted
      to the patches and renormalised: how much each patch still reaches the prediction through the
      later layers. At the last layer no later attention exists and ``r`` is uniform;
    - ``token_prior[l]`` = ``(1 − floor)·mean_b r_lb + floor/P`` (positive, sums to 1);
    - ``token_fusion[l]`` = :func:`kl_fusion_weight` of ``p_l·`` against ``token_prior[l]`` with
      weight ``kl_weight`` on the online term;
    - ``token_rates[l]`` = :func:`auto_keep_rates` of ``e_l = mean_b perplexity(f_lb) / P``, the
      effective share of patches that the fused ranking distribution ``f_lb`` spreads over
      (``P`` for a uniform ranking: keep all; ``m`` for one uniform over ``m`` patches).

    Raises:
        InputError: the model has no class token (token pruning ranks by its attention).
    """
    if not base.class_token:
        raise InputError(f"criterion star: token pruning needs a class token, and {base.model} has none")
    if not 0.0 <= kl_weight <= 1.0 or not 0.0 < floor < 1.0:
        raise InputError(
            f"criterion star: need 0 <= kl_weight <= 1 and 0 < floor < 1, got {kl_weight}, {floor}"
        )
    batches = require_data("star", data)
    L, P, prefix = base.depth, base.num_patches, base.num_prefix_tokens
    classifiers = max(1, base.num_classifiers)
    online: list[list[Tensor]] = [[] for _ in range(L)]
    relevance = torch.zeros(L, P, dtype=torch.float64)
    maps: list[Tensor] = []

    def on_qkv(layer: int, out: Tensor) -> None:
        q, k, _ = split_qkv(out, num_heads=base.num_heads)  # in the model's precision: (B, H, N, N) is big
        maps.append((model.blocks[layer].attn.scale * q @ k.mT).softmax(dim=-1).mean(dim=1).double())

    with torch.inference_mode(), evaluating(model):
        for images, _ in batches:
            maps.clear()
            forward_hooked(model, images, on_qkv=on_qkv)
            reach = torch.zeros(images.shape[0], P + prefix, dtype=torch.float64)
            reach[:, :classifiers] = 1 / classifiers
            for layer in reversed(range(L)):
                online[layer].append(_patch_distribution(maps[layer][:, 0, prefix:]))
                relevance[layer] += _patch_distribution(reach[:, prefix:]).sum(dim=0)
                reach = (torch.einsum("bi,bij->bj", reach, maps[layer]) + reach) / 2
    count = sum(images.shape[0] for images, _ in batches)
    prior = (1 - floor) * relevance / count + floor / P
    fusion, effective = [], []
    for layer in range(L):
        p = torch.cat(online[layer])
        alpha = kl_fusion_weight(p, prior[layer], weight=kl_weight)
        fusion.append(alpha)
        effective.append(perplexity(alpha * p + (1 - alpha) * prior[layer]).mean() / P)
    return Scores(
        criterion="star",
        token_prior=nested(prior),
        token_fusion=tuple(fusion),
        token_rates=nested(auto_keep_rates(torch.stack(effective))),
    ).check(base)


def _patch_distribution(mass: Tensor) -> Tensor:
    """Rows of ``(B, P)`` non-negative mass renormalised to sum to 1 (uniform where all zero)."""
    total = mass.sum(dim=-1, keepdim=True)
    uniform = torch.full_like(mass, 1 / mass.shape[-1])
    return torch.where(total > 0, mass / total.clamp_min(_TINY), uniform)
