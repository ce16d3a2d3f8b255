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
  ``[0, 1]``); the depth criterion ranks which;
- ``embed``: the fraction of residual-stream channels kept, in every layer at once.

``per_layer``: one ``heads_i``, ``qk_i``, ``v_i``, ``mlp_i`` per layer (``4·L`` parameters) plus
the token, depth and ``embed`` parameters.

Projection (:mod:`vitprune.spaces.budget`): the enabled dimensions of a point are shrunk or grown
together, removed layers given back or added, and aligned steps filled layer by layer, so that the
cost lands within 1 % below the budget; dimensions that are not enabled stay dense. The search
explores *where* to prune at the budget's cost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from vitprune.spaces.budget import Budget, Fit, Measure, Proposal, project
from vitprune.spaces.builder import LayerRatios, default_token_start, removed_layers, shape_of
from vitprune.spaces.errors import InputError
from vitprune.spaces.policy import Architecture
from vitprune.spaces.scores import Scores
from vitprune.spaces.shape import Shape

WIDTHS = ("heads", "qk", "v", "mlp")
ALL_DIMENSIONS = (*WIDTHS, "tokens", "depth", "embed")


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
        if "embed" in self.dimensions:
            names += ["embed"]
        return tuple(names)

    @property
    def uniform_token_start(self) -> int:
        """The first layer that drops tokens in the uniform policy (:func:`default_token_start`)."""
        return default_token_start(self.depth)

    def uniform_point(self, token_start: int | None = None) -> dict[str, float]:
        """The point of the uniform policy: every keep ratio 1, no slope, tokens dropped from
        layer ``token_start`` on (default :attr:`uniform_token_start`), no layer removed. The
        projection then scales every enabled dimension alike onto the budget (each layer keeps the
        same share of its heads, dims, neurons, residual channels and, from the token start on,
        entering tokens): the strong, simple baseline a search starts from.

        Raises:
            InputError: ``token_start`` is not a layer index of this depth.
        """
        if token_start is None:
            token_start = self.uniform_token_start
        elif not 0 <= token_start < self.depth:
            raise InputError(
                f"token_start: must be a layer index in [0, {self.depth - 1}], got {token_start}"
            )
        fixed = {
            "token_start": token_start / max(1, self.depth - 1),
            "drop_attn": 0.0,
            "drop_act": 0.0,
        }
        return {name: fixed.get(name, 0.5 if name.endswith("_slope") else 1.0) for name in self.parameters()}

    def single_dimension_points(self) -> dict[str, dict[str, float]]:
        """Enabled dimension → the uniform point with that dimension alone at its narrowest (its
        keep ratios 0, its most layers removed, or tokens dropped from the first layer on). When
        that point's cost at scale 1 is within the budget, the projection grows only this
        dimension back onto it (scale ``t ≥ 1`` leaves keep ratios of 1 unchanged) and every other
        dimension stays dense: the "prune one dimension alone" corners of the space, which random
        and GP points almost never reach. When it is not, the projection shrinks everything and
        the point is another mixed policy."""
        if len(self.dimensions) < 2:
            return {}
        uniform = self.uniform_point()
        first_layer = {"token_start": 0.0} if "token_start" in uniform else {}
        narrowest: dict[str, dict[str, float]] = {
            "tokens": {"tokens": 0.0} | first_layer,
            "depth": {"drop_attn": 1.0, "drop_act": 1.0},
            "embed": {"embed": 0.0},
        }
        points = {}
        for dim in ALL_DIMENSIONS:
            if dim not in self.dimensions:
                continue
            if dim in WIDTHS:
                names = [dim] if self.kind == "compact" else [f"{dim}_{i}" for i in range(self.depth)]
                change = dict.fromkeys(names, 0.0)
            else:
                change = narrowest[dim]
            points[dim] = uniform | change
        return points

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
            free=self.dimensions,
            token_start=self._token_start(point),
            embed=point["embed"] if "embed" in self.dimensions else 1.0,
            drop_attn=round(point["drop_attn"] * self.drop_attn_limit) if depth_on else 0,
            drop_act=round(point["drop_act"] * self.drop_act_limit) if depth_on else 0,
            max_drop_attn=self.drop_attn_limit if depth_on else 0,
            max_drop_act=self.drop_act_limit if depth_on else 0,
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
        start = self._token_start(point)
        final = self.min_token_keep + (1 - self.min_token_keep) * point["tokens"]
        pruning_layers = L - start
        return [final ** (1 / pruning_layers) if i >= start else 1.0 for i in range(L)]

    def _token_start(self, point: Mapping[str, float]) -> int:
        """The first layer that drops tokens: ``token_start`` as a layer index (0 without it)."""
        if "token_start" not in self.parameters():
            return 0
        return min(self.depth - 1, round(point["token_start"] * (self.depth - 1)))


def decode(
    point: Mapping[str, float],
    *,
    space: SearchSpace,
    base: Architecture,
    scores: Scores,
    budget: Budget,
    measure: Measure,
    tolerance: float = 0.01,
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
    return project(
        proposal,
        base=base,
        scores=scores,
        budget=budget,
        measure=measure,
        align=space.align,
        tolerance=tolerance,
    )


def cheapest(space: SearchSpace, base: Architecture, *, scores: Scores | None = None) -> Shape:
    """The cheapest shape the projection can reach in ``space``: every enabled width at its
    minimum (one head, ``align`` dims, neurons and residual channels), one patch token from the
    first layer with attention on, and as many attention layers and activations removed as the
    space allows.

    Without ``scores`` (before the criteria have run), the depth ranking keeps the earliest
    attention layers. That is the cheapest of *every* ranking, so a budget below it is impossible
    whatever the depth criterion finds: the layers before the first kept attention run their MLPs
    on all patch tokens, and every later layer sees one token whichever layers are removed.
    """
    if scores is None:
        scores = Scores(
            criterion="cheapest",
            attn_layers=tuple(float(base.depth - i) for i in range(base.depth)),
            act_layers=tuple(float(base.depth - i) for i in range(base.depth)),
        )
    proposal = Proposal(
        ratios=(LayerRatios(),) * base.depth,
        free=space.dimensions,
        drop_attn=space.drop_attn_limit if "depth" in space.dimensions else 0,
        drop_act=space.drop_act_limit if "depth" in space.dimensions else 0,
    )
    removed_attn, removed_act = removed_layers(
        scores, drop_attn=proposal.drop_attn, drop_act=proposal.drop_act, depth=base.depth
    )
    return shape_of(
        base,
        proposal.ratios_at(0.0),
        removed_attn=removed_attn,
        removed_act=removed_act,
        align=space.align,
        embed=proposal.embed_at(0.0),
    )


def check_budget(
    *,
    space: SearchSpace,
    base: Architecture,
    budget: Budget,
    measure: Measure,
    scores: Scores | None = None,
) -> float:
    """Raise :class:`InputError` unless the cheapest policy of the space (:func:`cheapest`) meets
    ``budget``; returns its cost. Called before any work (without scores: from the architecture
    alone) and again once the criteria have ranked the layers."""
    value = measure(cheapest(space, base, scores=scores))
    if value > budget.limit:
        raise InputError(
            f"budget.{budget.metric}: {budget.limit:.4g} is below the cheapest policy this search space can "
            f"build ({value:.4g}); raise the budget or enable more dimensions"
        )
    return value
