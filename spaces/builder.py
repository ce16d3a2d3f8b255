"""From keep ratios to a concrete policy: how much to keep comes from the ratios, what to keep from
the importance scores.

Widths are rounded to multiples of ``align`` (8 by default) because GEMMs and fused attention
kernels are only fast on aligned widths; heads are kept whole; a kept attention layer keeps at least
one head, a kept MLP at least ``align`` neurons.

>>> ratios = uniform_ratios(12, heads=0.5, mlp=0.5, token_keep=0.9, token_start=3)  # doctest: +SKIP
>>> policy = build_policy(base, scores, ratios, drop_attn=2, drop_act=3)            # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vitprune.spaces.errors import InputError
from vitprune.spaces.policy import Architecture, LayerPolicy, Policy
from vitprune.spaces.scores import Scores


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


def build_policy(
    base: Architecture,
    scores: Scores,
    ratios: Sequence[LayerRatios],
    *,
    drop_attn: int = 0,
    drop_act: int = 0,
    align: int = 8,
) -> Policy:
    """Build the policy that keeps ``ratios`` of each layer, choosing units by ``scores``.

    Args:
        base: the dense architecture.
        scores: importance of every unit (higher is kept).
        ratios: one :class:`LayerRatios` per layer.
        drop_attn: number of attention sub-layers to remove (the lowest ``scores.attn_layers``).
        drop_act: number of MLP activations to remove (the lowest ``scores.act_layers``).
        align: width multiple for q/k, v and MLP widths.

    Token pruning is ranked by a layer's own attention: where a layer's attention is removed, its
    token ratio is carried over to the next layer that still has attention.
    """
    scores.check(base)
    if len(ratios) != base.depth:
        raise InputError(f"ratios: expected {base.depth} layers, got {len(ratios)}")
    for name, count in (("drop_attn", drop_attn), ("drop_act", drop_act)):
        if not 0 <= count <= base.depth:
            raise InputError(f"{name}: must be in [0, {base.depth}], got {count}")
    if align < 1:
        raise InputError(f"align: must be >= 1, got {align}")
    removed_attn = lowest(scores.require("attn_layers"), drop_attn) if drop_attn else set()
    removed_act = lowest(scores.require("act_layers"), drop_act) if drop_act else set()

    layers = []
    tokens = base.num_patches
    pending_rate = 1.0
    for i, ratio in enumerate(ratios):
        attention = i not in removed_attn
        heads: tuple[int, ...] = ()
        qk: tuple[tuple[int, ...], ...] = ()
        v: tuple[tuple[int, ...], ...] = ()
        if attention:
            heads = _keep(scores, "heads", i, max(1, round(ratio.heads * base.num_heads)), base.num_heads)
            qk_dim = aligned_width(ratio.qk, base.head_dim, align)
            v_dim = aligned_width(ratio.v, base.head_dim, align)
            qk = tuple(_keep(scores, "qk", (i, h), qk_dim, base.head_dim) for h in heads)
            v = tuple(_keep(scores, "v", (i, h), v_dim, base.head_dim) for h in heads)
        pending_rate *= ratio.tokens
        entering = tokens
        if attention and base.class_token:
            tokens = max(1, min(tokens, round(tokens * pending_rate)))
            pending_rate = 1.0
        prior, fusion = None, 1.0
        if tokens < entering and scores.token_prior is not None:
            prior = scores.token_prior[i]
            fusion = 1.0 if scores.token_fusion is None else scores.token_fusion[i]
        layers.append(
            LayerPolicy(
                attention=attention,
                heads=heads,
                qk=qk,
                v=v,
                activation=i not in removed_act,
                mlp=_keep(
                    scores, "mlp", i, aligned_width(ratio.mlp, base.mlp_hidden, align), base.mlp_hidden
                ),
                keep_tokens=tokens,
                token_prior=prior,
                token_fusion=fusion,
            )
        )
    return Policy(base=base, layers=tuple(layers))


def _keep(scores: Scores, name: str, where: int | tuple[int, int], keep: int, size: int) -> tuple[int, ...]:
    """The ``keep`` best of ``size`` units by ``scores.<name>[where]``; all of them without a score lookup."""
    if keep >= size:
        return tuple(range(size))
    ranked = scores.require(name)
    for index in where if isinstance(where, tuple) else (where,):
        ranked = ranked[index]
    return top_indices(ranked, keep)
