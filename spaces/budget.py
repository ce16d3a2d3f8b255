"""Projection onto a budget: the policy of a proposed point whose cost lands just under the limit.

A point proposes keep ratios per layer and how many attention sub-layers and activations to
remove. Its *free* dimensions (those the search space enables) are then moved together until the
cost (MACs, parameters or modelled latency) lands in ``[(1 − tolerance)·B, B]``:

1. **Scale.** Every free keep ratio ``r`` follows one scale ``t ∈ [0, 2]``::

       g(r, t) = r·t                  for t ≤ 1   (shrink, keeping the proportions between layers)
       g(r, t) = 1 − (1 − r)·(2 − t)  for t > 1   (grow, shrinking what is pruned in proportion)

   ``t = 1`` is the point itself, ``t = 0`` the narrowest policy of its structure (one head,
   ``align`` dims, neurons and residual channels, one patch token), ``t = 2`` its widest (every
   free width full). The residual (``embed``) keep ratio is one more ratio on the same scale.
   Token keep ratios move only from the proposal's ``token_start`` on: the layers before it
   keep every patch token, as the point's schedule says. Ratios of dimensions that are not free
   are used exactly as given.
2. **Depth.** When even ``t = 2`` stays under the budget, removed layers are given back one at a
   time (attention and activations in proportion); when even ``t = 0`` exceeds it, more are
   removed, up to the space's limits. Only with ``depth`` free. When even the most removals
   exceed it, tokens start to drop one layer earlier, as far as the first layer.
3. **Bisection** finds the largest ``t`` whose cost is within the budget.
4. **Fill.** Rounding to whole heads and aligned widths makes cost a step function of ``t``: one
   step of ``t`` can add an aligned step to every layer at once. The steps the next ``t`` would
   add are then taken layer by layer while they fit, and after that any single step of a free
   dimension (a head, ``align`` dims or neurons, a token) that still fits, the largest first.

What is left below ``(1 − tolerance)·B`` is a *shortfall*: the point's structure cannot land
closer (a layer given back would overshoot, or no single step fits), and :class:`Fit` says why.

All of this works on :class:`~vitprune.spaces.shape.Shape` counts (microseconds per candidate);
only the final shape becomes a :class:`~vitprune.spaces.policy.Policy`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from vitprune.spaces.builder import LayerRatios, policy_of, removed_layers, shape_of
from vitprune.spaces.errors import InputError
from vitprune.spaces.policy import Architecture, Policy
from vitprune.spaces.scores import Scores
from vitprune.spaces.shape import LayerShape, Shape

RATIO_DIMENSIONS = ("heads", "qk", "v", "mlp", "tokens")  # a keep ratio per layer
DIMENSIONS = (*RATIO_DIMENSIONS, "depth", "embed")
Metric = Literal["macs", "params", "latency_ms"]
Measure = Callable[[Policy | Shape], float]


@dataclass(frozen=True)
class Budget:
    """A cost limit: ``metric`` (``macs``, ``params`` or ``latency_ms``) at most ``limit``."""

    metric: Metric
    limit: float

    def __post_init__(self) -> None:
        if not self.limit > 0:
            raise InputError(f"budget.{self.metric}: must be > 0, got {self.limit:.4g}")


@dataclass(frozen=True)
class Proposal:
    """What a point asks for, before the budget projection.

    Attributes:
        ratios: keep ratios of each layer.
        embed: keep ratio of the residual stream's channels (one for every layer).
        drop_attn: attention sub-layers to remove.
        drop_act: activations to remove.
        free: the dimensions the projection may move (the enabled ones, or those asked for on
            the command line); every other ratio and count is used exactly as given.
        max_drop_attn: most attention sub-layers the projection may remove (``depth`` free).
        max_drop_act: most activations the projection may remove.
        token_start: the first layer whose token keep ratio the projection moves (``tokens``
            free); the layers before it keep the ratio given, every patch token for a schedule.
    """

    ratios: tuple[LayerRatios, ...]
    free: frozenset[str]
    embed: float = 1.0
    drop_attn: int = 0
    drop_act: int = 0
    max_drop_attn: int | None = None
    max_drop_act: int | None = None
    token_start: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.free) - set(DIMENSIONS))
        if unknown:
            raise InputError(f"free: unknown dimension {unknown[0]!r} (known: {', '.join(DIMENSIONS)})")
        if not 0 <= self.token_start < max(1, len(self.ratios)):
            raise InputError(
                f"token_start: must be a layer index in [0, {len(self.ratios) - 1}], got {self.token_start}"
            )

    def embed_at(self, t: float) -> float:
        """The residual keep ratio at scale ``t``."""
        return _scale(self.embed, t) if "embed" in self.free else self.embed

    def ratios_at(self, t: float) -> tuple[LayerRatios, ...]:
        """The keep ratios at scale ``t`` (see the module docstring)."""
        moved = [dim for dim in RATIO_DIMENSIONS if dim in self.free]
        return tuple(
            dataclasses.replace(
                ratio,
                **{
                    dim: _scale(getattr(ratio, dim), t)
                    for dim in moved
                    if dim != "tokens" or i >= self.token_start
                },
            )
            for i, ratio in enumerate(self.ratios)
        )

    def depth_ladder(self) -> list[tuple[int, int]]:
        """``(drop_attn, drop_act)`` pairs the projection may use, most removals first; the
        proposed pair is among them. One unit step apart, attention and activations in proportion."""
        here = (self.drop_attn, self.drop_act)
        if "depth" not in self.free:
            return [here]
        most = (max(self.drop_attn, self.max_drop_attn or 0), max(self.drop_act, self.max_drop_act or 0))
        return [*reversed(_walk(here, most)[1:]), *_walk(here, (0, 0))]


@dataclass(frozen=True)
class Fit:
    """The policy chosen for a budget and how it was reached.

    Attributes:
        policy: the decoded policy.
        cost: its cost in the budget's metric.
        scale: the ``t`` of the bisection (1: the point's own ratios; < 1 shrunk; > 1 grown).
        filled: single steps added layer by layer after the bisection.
        shortfall: why ``cost`` is below ``(1 − tolerance)`` of the budget, or ``None``.
        token_start: the first layer whose tokens the projection moved: the proposal's, or an
            earlier one where the budget needed it.
    """

    policy: Policy
    cost: float
    scale: float
    filled: int = 0
    shortfall: str | None = None
    token_start: int = 0


def project(
    proposal: Proposal,
    *,
    base: Architecture,
    scores: Scores,
    budget: Budget,
    measure: Measure,
    align: int = 8,
    tolerance: float = 0.01,
) -> Fit:
    """The policy of ``proposal`` whose cost lands in ``[(1 − tolerance)·B, B]`` (module docstring).

    Raises:
        InputError: even the narrowest policy with the most removals allowed exceeds the budget.
    """
    scores.check(base)
    limit = budget.limit
    ladder = proposal.depth_ladder()
    rung = ladder.index((proposal.drop_attn, proposal.drop_act))

    def shape_at(proposal: Proposal, rung: int, t: float) -> Shape:
        drop_attn, drop_act = ladder[rung]
        removed_attn, removed_act = removed_layers(
            scores, drop_attn=drop_attn, drop_act=drop_act, depth=base.depth
        )
        return shape_of(
            base,
            proposal.ratios_at(t),
            removed_attn=removed_attn,
            removed_act=removed_act,
            align=align,
            embed=proposal.embed_at(t),
        )

    # The least a proposal can cost is at t = 0 with the most removals (rung 0): where even that
    # exceeds the budget, tokens must drop earlier.
    while proposal.token_start > 0 and measure(shape_at(proposal, 0, 0.0)) > limit:
        proposal = dataclasses.replace(proposal, token_start=proposal.token_start - 1)

    @functools.cache
    def shape(rung: int, t: float) -> Shape:
        return shape_at(proposal, rung, t)

    def cost(rung: int, t: float) -> float:
        return measure(shape(rung, t))

    while cost(rung, 0.0) > limit and rung > 0:  # too costly even at its narrowest: remove more
        rung -= 1
    if cost(rung, 0.0) > limit:
        raise InputError(
            f"budget.{budget.metric}: {limit:.4g} is below the cheapest policy this point can reach "
            f"({cost(rung, 0.0):.4g}); raise the budget or allow more pruning"
        )
    while cost(rung, 2.0) < limit and rung + 1 < len(ladder) and cost(rung + 1, 0.0) <= limit:
        rung += 1  # under budget even at full width: give a removed layer back

    def land(rung: int) -> tuple[float, Shape, float, int, int]:
        """Bisection on ``t`` at this rung, then the fill: (cost, shape, t, steps filled, rung)."""
        low, high = 0.0, 2.0
        if cost(rung, high) <= limit:
            low = high
        while high - low > 1e-6:
            middle = (low + high) / 2
            if cost(rung, middle) <= limit:
                low = middle
            else:
                high = middle
        filled, value, steps = _fill(
            shape(rung, low),
            toward=shape(rung, high),
            free=proposal.free,
            align=align,
            measure=measure,
            limit=limit,
        )
        return value, filled, low, steps, rung

    best = land(rung)
    # Too coarse to land here (whole merged MLPs, wide heads): the next rungs give layers back.
    while best[0] < (1 - tolerance) * limit and rung + 1 < len(ladder) and cost(rung + 1, 0.0) <= limit:
        rung += 1
        best = max(best, land(rung), key=lambda landing: landing[0])
    value, filled, low, steps, rung = best
    shortfall = None
    if value < (1 - tolerance) * limit:
        if low == 2.0 and rung + 1 < len(ladder):
            shortfall = (
                f"{value / limit:.1%} of the budget: every free width is full, and giving back one more "
                "removed layer would exceed the budget"
            )
        elif low == 2.0:
            shortfall = f"{value / limit:.1%} of the budget: the point's widest policy costs less"
        else:
            shortfall = f"{value / limit:.1%} of the budget: no single head, aligned width or token step fits"
    return Fit(
        policy=policy_of(filled, scores),
        cost=value,
        scale=low,
        filled=steps,
        shortfall=shortfall,
        token_start=proposal.token_start,
    )


def _scale(ratio: float, t: float) -> float:
    return ratio * t if t <= 1 else 1 - (1 - ratio) * (2 - t)


def _walk(start: tuple[int, int], end: tuple[int, int]) -> list[tuple[int, int]]:
    """Unit steps from ``start`` to ``end``, moving each coordinate in proportion to its distance."""
    (a, c), (end_a, end_c) = start, end
    da, dc = abs(end_a - a), abs(end_c - c)
    sa, sc = (1 if end_a > a else -1), (1 if end_c > c else -1)
    points, ia, ic = [start], 0, 0
    while ia < da or ic < dc:
        if ic == dc or (ia < da and (ia + 1) * dc <= (ic + 1) * da):
            ia += 1
        else:
            ic += 1
        points.append((a + sa * ia, c + sc * ic))
    return points


def _fill(
    shape: Shape, *, toward: Shape, free: frozenset[str], align: int, measure: Measure, limit: float
) -> tuple[Shape, float, int]:
    """Add single steps to ``shape`` while its cost stays within ``limit``: first those that
    ``toward`` (the next shape of the bisection) adds, layer by layer; then any step of a free
    dimension, the largest that fits first. Returns the shape, its cost and the steps added."""
    value, steps = measure(shape), 0
    while shape.embed_dim < toward.embed_dim and (candidate := _wider_embed(shape, align)) is not None:
        if (candidate_value := measure(candidate)) > limit:
            break
        shape, value, steps = candidate, candidate_value, steps + 1
    for i in range(len(shape.layers)):
        for dim in RATIO_DIMENSIONS:
            while _count(shape.layers[i], dim) < _count(toward.layers[i], dim):
                candidate = _step(shape, i, dim, align)
                if candidate is None or (candidate_value := measure(candidate)) > limit:
                    break
                shape, value, steps = candidate, candidate_value, steps + 1
    for _ in range(4 * len(shape.layers) * len(RATIO_DIMENSIONS)):  # each round adds one step
        best: tuple[float, Shape] | None = None
        for candidate in _steps(shape, free, align):
            candidate_value = measure(candidate)
            if candidate_value <= limit and (best is None or candidate_value > best[0]):
                best = (candidate_value, candidate)
        if best is None or best[0] <= value:
            break
        value, shape = best
        steps += 1
    return shape, value, steps


_COUNTS = {"heads": "num_heads", "qk": "qk_dim", "v": "v_dim", "mlp": "mlp_hidden", "tokens": "keep_tokens"}


def _count(layer: LayerShape, dim: str) -> int:
    return getattr(layer, _COUNTS[dim])


def _steps(shape: Shape, free: frozenset[str], align: int) -> Iterator[Shape]:
    if "embed" in free and (candidate := _wider_embed(shape, align)) is not None:
        yield candidate
    for i in range(len(shape.layers)):
        for dim in RATIO_DIMENSIONS:
            if dim in free and (candidate := _step(shape, i, dim, align)) is not None:
                yield candidate


def _step(shape: Shape, i: int, dim: str, align: int) -> Shape | None:
    """``shape`` with one more unit of ``dim`` in layer ``i`` (a head, an aligned width step, a
    token), or ``None`` when there is no more to add."""
    base, layers = shape.base, list(shape.layers)
    layer = layers[i]
    if dim == "mlp":
        wider = _wider(layer.mlp_hidden, base.mlp_hidden, align)
        return None if wider is None else shape.replace_layers(_set(layers, i, mlp_hidden=wider))
    if not layer.attention:
        return None
    if dim == "heads":
        more = layer.num_heads + 1 if layer.num_heads < base.num_heads else None
        return None if more is None else shape.replace_layers(_set(layers, i, num_heads=more))
    if dim in ("qk", "v"):
        field = _COUNTS[dim]
        wider = _wider(getattr(layer, field), base.head_dim, align)
        return None if wider is None else shape.replace_layers(_set(layers, i, **{field: wider}))
    # tokens: keep one more here, and in the following layers that did not prune further
    old = layer.keep_tokens
    if old >= shape.tokens_in[i]:
        return None
    for j in range(i, len(layers)):
        if j > i and layers[j].keep_tokens != old:
            break
        layers = _set(layers, j, keep_tokens=old + 1)
    return shape.replace_layers(layers)


def _wider_embed(shape: Shape, align: int) -> Shape | None:
    """``shape`` with one more aligned step of residual width, or ``None`` when it is full."""
    wider = _wider(shape.embed_dim, shape.base.embed_dim, align)
    return None if wider is None else dataclasses.replace(shape, embed_dim=wider)


def _wider(width: int, full: int, align: int) -> int | None:
    """The next aligned width above ``width`` (``full`` itself is always allowed), if any."""
    return None if width >= full else min(full, width + min(align, full))


def _set(layers: list[LayerShape], i: int, **changes: int) -> list[LayerShape]:
    return [*layers[:i], dataclasses.replace(layers[i], **changes), *layers[i + 1 :]]


def fit_to_budget(
    build: Callable[[float], Policy],
    measure: Measure,
    budget: float,
    *,
    tolerance: float = 0.01,
    iterations: int = 30,
) -> Fit:
    """The largest ``s`` in ``[0, 1]`` with ``measure(build(s)) <= budget``, by bisection, for any
    one-parameter family of policies whose cost grows with ``s`` (benchmarks use it to put a
    family on a MACs target; the search uses :func:`project`).

    Raises:
        InputError: even ``build(0)`` exceeds the budget (no policy of the family meets it).
    """
    if budget <= 0:
        raise InputError(f"budget: must be > 0, got {budget}")
    full = build(1.0)
    full_cost = measure(full)
    if full_cost <= budget:
        return Fit(policy=full, cost=full_cost, scale=1.0)
    smallest = build(0.0)
    smallest_cost = measure(smallest)
    if smallest_cost > budget:
        raise InputError(
            f"budget: {budget:.4g} is below the cheapest policy this space can build ({smallest_cost:.4g})"
        )
    best = Fit(policy=smallest, cost=smallest_cost, scale=0.0)
    low, high = 0.0, 1.0
    for _ in range(iterations):
        if best.cost >= budget * (1 - tolerance):
            break
        middle = (low + high) / 2
        policy = build(middle)
        value = measure(policy)
        if value <= budget:
            low = middle
            if value > best.cost:
                best = Fit(policy=policy, cost=value, scale=middle)
        else:
            high = middle
    return best
