"""Search spaces over pruning policies, and the decoder that lands every point on the budget.

The optimiser sees only floats in ``[0, 1]`` (integer parameters make Ax's acquisition optimiser
several times slower). A space names its parameters and turns a point into per-layer keep ratios
and depth-removal counts; :func:`decode` turns those into a concrete :class:`Policy` via the
importance scores and projects it onto the budget.

``compact`` (about 12 parameters):

- ``heads``, ``qk``, ``v``, ``mlp``: global keep ratios, each with a ``*_slope`` in ``[0, 1]``
  mapped to ``[−0.5, 0.5]``, so that ratio ``r`` in layer ``l`` of ``L`` is
  ``clip(r + slope·(2l/(L−1) − 1), 0, 1)`` (early and late layers can differ);
- ``tokens``: fraction of patch tokens left after the last layer, reached geometrically from
  ``token_start`` (a layer index scaled to ``[0, 1]``); with ``token_keep: auto`` the shape of the
  schedule is the criterion's per-layer rates (STAR) and ``tokens`` sets its strength;
- ``drop_attn``, ``drop_act``: how many attention / activation layers to remove (scaled to
  ``[0, 1]``); the depth criterion ranks which.

``per_layer``: one ``heads_i``, ``qk_i``, ``v_i``, ``mlp_i`` per layer (``4·L`` parameters) plus
the token and depth parameters.

Projection: the point's keep ratios are multiplied by a common factor ``t`` (capped at 1) found by
bisection so that cost lands within 1 % below the budget: points that overshoot are shrunk,
points that undershoot are grown, and the search explores *where* to prune at the budget's cost.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from vitprune.spaces.budget import Fit, fit_to_budget
from vitprune.spaces.builder import LayerRatios, build_policy
from vitprune.spaces.errors import InputError
from vitprune.spaces.policy import Architecture, Policy
from vitprune.spaces.scores import Scores

WIDTHS = ("heads", "qk", "v", "mlp")
ALL_DIMENSIONS = (*WIDTHS, "tokens", "depth")


@dataclass(frozen=True)
class Proposal:
    """What a point asks for before the budget projection."""

    ratios: tuple[LayerRatios, ...]
    drop_attn: int
    drop_act: int


@dataclass(frozen=True)
class SearchSpace:
    """A parametrisation of pruning policies by floats in ``[0, 1]``.

    Args:
        kind: ``compact`` (global ratios with depth slopes) or ``per_layer``.
        depth: number of layers of the dense model.
        dimensions: enabled dimensions among heads, qk, v, mlp, tokens, depth.
        align: width multiple for q/k, v and MLP widths.
        max_drop_attn: most attention sub-layers that may be removed.
        max_drop_act: most activations that may be removed.
        token_auto: shape the token schedule with the criterion's per-layer rates (STAR).
        min_token_keep: smallest fraction of patch tokens the schedule may end with.
    """

    kind: Literal["compact", "per_layer"]
    depth: int
    dimensions: frozenset[str] = field(default_factory=lambda: frozenset(ALL_DIMENSIONS))
    align: int = 8
    max_drop_attn: int | None = None
    max_drop_act: int | None = None
    token_auto: bool = False
    min_token_keep: float = 0.1

    def __post_init__(self) -> None:
        unknown = sorted(set(self.dimensions) - set(ALL_DIMENSIONS))
        if unknown:
            raise InputError(f"space.dimensions: unknown {unknown[0]!r} (known: {', '.join(ALL_DIMENSIONS)})")
        if not self.dimensions:
            raise InputError("space.dimensions: enable at least one dimension")
        for name in ("max_drop_attn", "max_drop_act"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= self.depth:
                raise InputError(f"space.{name}: must be in [0, {self.depth}], got {value}")

    @property
    def drop_attn_limit(self) -> int:
        return self.depth // 2 if self.max_drop_attn is None else self.max_drop_attn

    @property
    def drop_act_limit(self) -> int:
        return self.depth if self.max_drop_act is None else self.max_drop_act

    def parameters(self) -> tuple[str, ...]:
        """Parameter names, each a float in ``[0, 1]``."""
        names: list[str] = []
        for width in WIDTHS:
            if width not in self.dimensions:
                continue
            if self.kind == "compact":
                names += [width, f"{width}_slope"]
            else:
                names += [f"{width}_{i}" for i in range(self.depth)]
        if "tokens" in self.dimensions:
            names += ["tokens"] if self.token_auto else ["tokens", "token_start"]
        if "depth" in self.dimensions:
            names += ["drop_attn", "drop_act"]
        return tuple(names)

    def propose(self, point: Mapping[str, float], *, token_rates: Sequence[float] | None = None) -> Proposal:
        """Per-layer keep ratios and depth counts of ``point`` (before the budget projection).

        ``token_rates`` are the criterion's per-layer rates, needed with ``token_auto``.
        """
        missing = [name for name in self.parameters() if name not in point]
        if missing:
            raise InputError(f"point: missing parameter {missing[0]!r} of the {self.kind} space")
        for name in self.parameters():
            if not 0.0 <= point[name] <= 1.0:
                raise InputError(f"point.{name}: must be in [0, 1], got {point[name]}")
        L = self.depth
        widths = {width: self._layer_ratios(point, width) for width in WIDTHS}
        tokens = self._token_rates(point, token_rates)
        ratios = tuple(
            LayerRatios(**{width: widths[width][i] for width in WIDTHS}, tokens=tokens[i]) for i in range(L)
        )
        depth_on = "depth" in self.dimensions
        return Proposal(
            ratios=ratios,
            drop_attn=round(point["drop_attn"] * self.drop_attn_limit) if depth_on else 0,
            drop_act=round(point["drop_act"] * self.drop_act_limit) if depth_on else 0,
        )

    def _layer_ratios(self, point: Mapping[str, float], width: str) -> list[float]:
        L = self.depth
        if width not in self.dimensions:
            return [1.0] * L
        if self.kind == "per_layer":
            return [point[f"{width}_{i}"] for i in range(L)]
        slope = point[f"{width}_slope"] - 0.5
        positions = [2 * i / (L - 1) - 1 if L > 1 else 0.0 for i in range(L)]
        return [min(1.0, max(0.0, point[width] + slope * x)) for x in positions]

    def _token_rates(self, point: Mapping[str, float], auto: Sequence[float] | None) -> list[float]:
        """Per-layer keep rates of patch tokens.

        Manual: geometric from ``token_start``, ending at ``min_token_keep + (1 − min)·tokens``.
        Auto: the criterion's rates raised to ``2·(1 − tokens)`` (1: keep all; 0: twice as strong).
        """
        L = self.depth
        if "tokens" not in self.dimensions:
            return [1.0] * L
        if self.token_auto:
            if auto is None:
                raise InputError(
                    "space.token_keep: auto needs per-layer token rates from the tokens criterion (star)"
                )
            return [rate ** (2 * (1 - point["tokens"])) for rate in auto]
        start = min(L - 1, round(point["token_start"] * (L - 1)))
        final = self.min_token_keep + (1 - self.min_token_keep) * point["tokens"]
        pruning_layers = L - start
        return [final ** (1 / pruning_layers) if i >= start else 1.0 for i in range(L)]


@dataclass(frozen=True)
class Budget:
    """A cost limit: ``metric`` (``macs``, ``params`` or ``latency_ms``) at most ``limit``."""

    metric: Literal["macs", "params", "latency_ms"]
    limit: float


def _scaled(proposal: Proposal, factor: float) -> tuple[LayerRatios, ...]:
    """Every keep ratio (token keep rates included) multiplied by ``factor``, capped at 1."""

    def scale(value: float) -> float:
        return min(1.0, value * factor)

    return tuple(
        LayerRatios(
            heads=scale(r.heads), qk=scale(r.qk), v=scale(r.v), mlp=scale(r.mlp), tokens=scale(r.tokens)
        )
        for r in proposal.ratios
    )


def project(
    proposal: Proposal,
    *,
    base: Architecture,
    scores: Scores,
    budget: Budget,
    measure: Callable[[Policy], float],
    align: int = 8,
) -> Fit:
    """The policy of ``proposal`` with its keep ratios scaled onto ``budget``.

    All keep ratios (token keep rates included) are multiplied by ``t = u·t_max`` (capped at 1),
    ``t_max`` being the factor that brings the smallest ratio to 1, and ``u ∈ [0, 1]`` is found by
    bisection so that ``measure`` lands within 1 % below ``budget.limit``. Depth removals are kept.

    Raises:
        InputError: no policy of this proposal's family meets the budget.
    """
    smallest = min(
        [v for r in proposal.ratios for v in (r.heads, r.qk, r.v, r.mlp, r.tokens) if 0 < v < 1] or [1.0]
    )
    t_max = 1.0 / smallest

    def build(u: float) -> Policy:
        return build_policy(
            base,
            scores,
            _scaled(proposal, u * t_max),
            drop_attn=proposal.drop_attn,
            drop_act=proposal.drop_act,
            align=align,
        )

    return fit_to_budget(build, measure, budget.limit)


def decode(
    point: Mapping[str, float],
    *,
    space: SearchSpace,
    base: Architecture,
    scores: Scores,
    budget: Budget,
    measure: Callable[[Policy], float],
) -> Fit:
    """The policy of ``point``, projected onto ``budget`` (see :func:`project`).

    Args:
        point: parameter name → value in ``[0, 1]``.
        space: the search space the point belongs to.
        base: the dense architecture.
        scores: importance scores of every enabled dimension.
        budget: the cost limit.
        measure: the cost of a policy in the budget's metric (``macs``, ``params``, or a latency model).

    Raises:
        InputError: no policy of this point's family meets the budget.
    """
    if space.depth != base.depth:
        raise InputError(f"space: built for depth {space.depth}, the model has {base.depth}")
    auto = scores.require("token_rates") if space.token_auto and "tokens" in space.dimensions else None
    proposal = space.propose(point, token_rates=auto)
    return project(proposal, base=base, scores=scores, budget=budget, measure=measure, align=space.align)


def check_budget(
    *,
    space: SearchSpace,
    base: Architecture,
    scores: Scores,
    budget: Budget,
    measure: Callable[[Policy], float],
) -> float:
    """Raise :class:`InputError` unless the cheapest policy of the space meets ``budget``.

    The cheapest policy keeps the minimum of every enabled dimension (one head, ``align`` dims and
    neurons, the fewest tokens) and removes as many layers as the space allows. Called once before
    any trial, so an impossible budget fails fast. Returns the cheapest cost.
    """
    zero = dict.fromkeys(space.parameters(), 0.0) | {"drop_attn": 1.0, "drop_act": 1.0}
    auto = scores.require("token_rates") if space.token_auto and "tokens" in space.dimensions else None
    proposal = space.propose({k: v for k, v in zero.items() if k in space.parameters()}, token_rates=auto)
    cheapest = build_policy(
        base,
        scores,
        _scaled(proposal, 0.0),
        drop_attn=proposal.drop_attn,
        drop_act=proposal.drop_act,
        align=space.align,
    )
    value = measure(cheapest)
    if value > budget.limit:
        raise InputError(
            f"budget.{budget.metric}: {budget.limit:.4g} is below the cheapest policy this search space can "
            f"build ({value:.4g}); raise the budget or enable more dimensions"
        )
    return value
