"""Projection onto a budget: the largest scaling of a family of policies that fits under it.

A decoder describes a family of policies by a scale ``s ∈ [0, 1]`` (``build(s)``: 0 = the most
pruned policy of the family, 1 = the proposed point itself) whose cost grows with ``s``. Bisection
finds the largest ``s`` whose cost is within the budget, so every decoded policy lands just under
it (within ``tolerance`` when the rounding of widths allows) and no trial is spent on an
infeasible policy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vitprune.spaces.errors import InputError
from vitprune.spaces.policy import Policy


@dataclass(frozen=True)
class Fit:
    """The policy chosen for a budget, its cost and the scale that produced it."""

    policy: Policy
    cost: float
    scale: float


def fit_to_budget(
    build: Callable[[float], Policy],
    measure: Callable[[Policy], float],
    budget: float,
    *,
    tolerance: float = 0.01,
    iterations: int = 30,
) -> Fit:
    """The largest ``s`` in ``[0, 1]`` with ``measure(build(s)) <= budget``, by bisection.

    Stops as soon as the cost is within ``tolerance`` (relative) below the budget. Width rounding
    makes cost a step function of ``s``, so the final policy may sit further below the budget when
    no policy of the family lands closer.

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
