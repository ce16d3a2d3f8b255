"""From keep ratios to a concrete policy: how much to keep comes from the ratios, what to keep from
the importance scores.

Widths are rounded to multiples of ``align`` (8 by default) because GEMMs and fused attention
kernels are only fast on aligned widths; heads are kept whole; a kept attention layer keeps at least
one head, a kept MLP at least ``align`` neurons.

>>> ratios = uniform_ratios(12, heads=0.5, mlp=0.5, token_keep=0.9, token_start=3)  # doctest: +SKIP
>>> policy = build_policy(base, scores, ratios, drop_attn=2, drop_act=3)            # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence, Set
from dataclasses import dataclass

from vitprune.spaces.errors import InputError
from vitprune.spaces.policy import Architecture, LayerPolicy, Policy
from vitprune.spaces.scores import Scores
from vitprune.spaces.shape import LayerShape, Shape


@dataclass(frozen=True)
class LayerRatios:
    """Fractions of one layer to keep. ``tokens`` is the fraction of entering patch tokens kept."""

    heads: float = 1.0
    qk: float = 1.0
    v: float = 1.0
    mlp: float = 1.0
    tokens: float = 1.0

    def __post_init__(self) -> None:
        for name in ("heads", "qk", "v", "mlp", "tokens"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InputError(f"keep ratio {name}: must be in [0, 1], got {value}")


def default_token_start(depth: int) -> int:
    """The first layer that drops tokens unless told otherwise: ``⌈L/4⌉`` of ``L`` layers (2 of 6,
    3 of 12), at most the last layer. The class token's attention in the first layers is a weak
    guide to which tokens matter, so EViT and DynamicViT keep every token there (DeiT-S: pruning
    from its 4th layer). On the 6-layer embedded ViT, dropping from layer 2 instead of layer 0
    scores 2.0–2.3 test points more on Fashion-MNIST at 50 % and 25 % of MACs (BENCHMARKS.md,
    section 9); on digits +0.8 at 50 % and −1.9 at 25 % (section 7).

    >>> default_token_start(6), default_token_start(12), default_token_start(1)
    (2, 3, 0)
    """
    return min(depth - 1, -(-depth // 4))


def uniform_ratios(
    depth: int,
    *,
    heads: float = 1.0,
    qk: float = 1.0,
    v: float = 1.0,
    mlp: float = 1.0,
    token_keep: float = 1.0,
    token_start: int = 0,
) -> tuple[LayerRatios, ...]:
    """The same ratios in every layer; tokens shrink by ``token_keep`` at each layer from ``token_start``."""
    if not 0 <= token_start < depth:
        raise InputError(f"token_start: must be a layer index in [0, {depth - 1}], got {token_start}")
    return tuple(
        LayerRatios(heads=heads, qk=qk, v=v, mlp=mlp, tokens=token_keep if i >= token_start else 1.0)
        for i in range(depth)
    )


def aligned_width(ratio: float, full: int, align: int) -> int:
    """``ratio · full`` rounded to a multiple of ``align``, within ``[min(align, full), full]``.

    >>> aligned_width(0.5, 64, 8), aligned_width(0.3, 64, 8), aligned_width(1.0, 100, 8)
    (32, 16, 100)
    """
    if ratio >= 1.0:
        return full
    step = min(align, full)
    return max(step, min(full, round(ratio * full / step) * step))


def top_indices(scores: Sequence[float], keep: int) -> tuple[int, ...]:
    """Indices of the ``keep`` highest scores, in increasing index order (ties keep the lower index)."""
    ranked = sorted(range(len(scores)), key=lambda i: -scores[i])
    return tuple(sorted(ranked[:keep]))


def lowest(scores: Sequence[float], count: int) -> set[int]:
    """Indices of the ``count`` lowest scores (ties drop the lower index first)."""
    return set(sorted(range(len(scores)), key=lambda i: scores[i])[:count])


def removed_layers(scores: Scores, *, drop_attn: int, drop_act: int, depth: int) -> tuple[set[int], set[int]]:
    """The attention sub-layers and activations to remove: the lowest ``attn_layers`` /
    ``act_layers`` scores. Sets grow with the counts (removing one more never restores another)."""
    for name, count in (("drop_attn", drop_attn), ("drop_act", drop_act)):
        if not 0 <= count <= depth:
            raise InputError(f"{name}: must be in [0, {depth}], got {count}")
    removed_attn = lowest(scores.require("attn_layers"), drop_attn) if drop_attn else set()
    removed_act = lowest(scores.require("act_layers"), drop_act) if drop_act else set()
    return removed_attn, removed_act


def shape_of(
    base: Architecture,
    ratios: Sequence[LayerRatios],
    *,
    removed_attn: Set[int] = frozenset(),
    removed_act: Set[int] = frozenset(),
    align: int = 8,
    embed: float = 1.0,
) -> Shape:
    """The counts that ``ratios`` keep in each layer and the residual width that ``embed`` keeps
    (no scores needed: see :func:`build_policy`).

    Token pruning is ranked by a layer's own attention: where a layer's attention is removed, its
    token ratio is carried over to the next layer that still has attention.
    """
    if len(ratios) != base.depth:
        raise InputError(f"ratios: expected {base.depth} layers, got {len(ratios)}")
    if align < 1:
        raise InputError(f"align: must be >= 1, got {align}")
    layers = []
    tokens = base.num_patches
    pending_rate = 1.0
    for i, ratio in enumerate(ratios):
        attention = i not in removed_attn
        heads = qk_dim = v_dim = 0
        if attention:
            heads = max(1, round(ratio.heads * base.num_heads))
            qk_dim = aligned_width(ratio.qk, base.head_dim, align)
            v_dim = aligned_width(ratio.v, base.head_dim, align)
        pending_rate *= ratio.tokens
        if attention and base.class_token:
            tokens = max(1, min(tokens, round(tokens * pending_rate)))
            pending_rate = 1.0
        layers.append(
            LayerShape(
                attention=attention,
                num_heads=heads,
                qk_dim=qk_dim,
                v_dim=v_dim,
                activation=i not in removed_act,
                mlp_hidden=aligned_width(ratio.mlp, base.mlp_hidden, align),
                keep_tokens=tokens,
            )
        )
    if not 0.0 <= embed <= 1.0:
        raise InputError(f"keep ratio embed: must be in [0, 1], got {embed}")
    return Shape(base=base, layers=tuple(layers), embed_dim=aligned_width(embed, base.embed_dim, align))


def policy_of(shape: Shape, scores: Scores) -> Policy:
    """The policy with ``shape``'s counts, keeping the highest-scoring units of every layer.

    Layers that prune tokens carry the criterion's token prior and fusion weight, if it has them.
    """
    base = shape.base
    scores.check(base)
    layers = []
    for i, (layer, entering) in enumerate(zip(shape.layers, shape.tokens_in, strict=True)):
        heads: tuple[int, ...] = ()
        qk: tuple[tuple[int, ...], ...] = ()
        v: tuple[tuple[int, ...], ...] = ()
        if layer.attention:
            heads = _keep(scores, "heads", i, layer.num_heads, base.num_heads)
            qk = tuple(_keep(scores, "qk", (i, h), layer.qk_dim, base.head_dim) for h in heads)
            v = tuple(_keep(scores, "v", (i, h), layer.v_dim, base.head_dim) for h in heads)
        prior, fusion = None, 1.0
        if layer.keep_tokens < entering and scores.token_prior is not None:
            prior = scores.token_prior[i]
            fusion = 1.0 if scores.token_fusion is None else scores.token_fusion[i]
        layers.append(
            LayerPolicy(
                attention=layer.attention,
                heads=heads,
                qk=qk,
                v=v,
                activation=layer.activation,
                mlp=_keep(scores, "mlp", i, layer.mlp_hidden, base.mlp_hidden),
                keep_tokens=layer.keep_tokens,
                token_prior=prior,
                token_fusion=fusion,
            )
        )
    embed = _keep(scores, "embed", (), shape.embed_dim, base.embed_dim)
    return Policy(base=base, layers=tuple(layers), embed=embed)


def build_policy(
    base: Architecture,
    scores: Scores,
    ratios: Sequence[LayerRatios],
    *,
    drop_attn: int = 0,
    drop_act: int = 0,
    align: int = 8,
    embed: float = 1.0,
) -> Policy:
    """Build the policy that keeps ``ratios`` of each layer, choosing units by ``scores``.

    Args:
        base: the dense architecture.
        scores: importance of every unit (higher is kept).
        ratios: one :class:`LayerRatios` per layer.
        drop_attn: number of attention sub-layers to remove (the lowest ``scores.attn_layers``).
        drop_act: number of MLP activations to remove (the lowest ``scores.act_layers``).
        align: width multiple for q/k, v, MLP and residual widths.
        embed: fraction of residual channels kept (the highest ``scores.embed``), in every layer.

    Token pruning is ranked by a layer's own attention: where a layer's attention is removed, its
    token ratio is carried over to the next layer that still has attention.
    """
    scores.check(base)
    removed_attn, removed_act = removed_layers(
        scores, drop_attn=drop_attn, drop_act=drop_act, depth=base.depth
    )
    shape = shape_of(
        base, ratios, removed_attn=removed_attn, removed_act=removed_act, align=align, embed=embed
    )
    return policy_of(shape, scores)


def _keep(scores: Scores, name: str, where: int | tuple[int, int], keep: int, size: int) -> tuple[int, ...]:
    """The ``keep`` best of ``size`` units by ``scores.<name>[where]``; all of them without a score lookup."""
    if keep >= size:
        return tuple(range(size))
    ranked = scores.require(name)
    for index in where if isinstance(where, tuple) else (where,):
        ranked = ranked[index]
    return top_indices(ranked, keep)
