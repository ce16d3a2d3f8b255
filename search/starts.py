"""The trials a search starts from, chosen by hand before Sobol and the GP propose any.

- **uniform** (``generation.uniform_start``): every enabled dimension scaled alike onto the
  budget, a strong and simple baseline.
- **one dimension alone** (``generation.single_dimension_starts``): for each enabled dimension
  that can reach the budget by itself, the policy that prunes it alone and leaves every other
  dimension dense (on digits at 50 % of MACs: the MLP alone, or the tokens alone). The projection
  scales every free dimension by one factor, so a random or GP point almost never leaves six of
  seven dimensions untouched; these corners are only reached when asked for. A dimension whose
  aligned steps cannot land within 1 % of the budget alone (the residual width of the digits
  model: 24 channels is 80 % of the budget, 32 is over it) gives no start.
"""

from __future__ import annotations

from vitprune.search.plan import Plan
from vitprune.spaces import InputError
from vitprune.spaces.space import decode


def start_points(plan: Plan) -> list[tuple[str, dict[str, float]]]:
    """``(arm name, point)`` of each start trial, in order, at most ``trials.total`` of them; no two
    decode to the same policy."""
    generation, space = plan.spec.generation, plan.space
    candidates: list[tuple[str, dict[str, float], bool]] = []
    if generation.uniform_start:
        candidates.append(("uniform", space.uniform_point(), False))
    if generation.single_dimension_starts:
        alone = space.single_dimension_points()
        candidates += [(f"{dim}_alone", point, True) for dim, point in alone.items()]
    measure = plan.measure()
    starts: list[tuple[str, dict[str, float]]] = []
    seen = []
    for name, point, alone in candidates:
        try:
            fit = decode(
                point,
                space=space,
                base=plan.base,
                scores=plan.scores,
                budget=plan.budget,
                measure=measure,
            )
        except InputError:  # this point's family cannot reach the budget: no start
            continue
        if alone and (fit.scale < 1.0 or fit.shortfall):  # others pruned too, or off the budget
            continue
        if fit.policy in seen:
            continue
        seen.append(fit.policy)
        starts.append((name, point))
    return starts[: plan.spec.trials.total]
