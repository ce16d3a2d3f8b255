"""vitprune's contenders in the race of ``benchmarks/peers.py``: uniform policies and the search.

- **uniform**: every keep ratio of every enabled dimension starts at 1 and the budget projection
  (:func:`vitprune.spaces.budget.project`, the search's own) shrinks them by one scale ``t``
  until MACs land just under the budget: heads, q/k and v dims, MLP neurons and the residual
  width (``embed``) keep about ``t`` of the dense model in every layer,
  and each layer keeps ``t`` of the patch tokens that enter it (so the token count shrinks
  geometrically with depth). With ``depth`` enabled, layers are removed only where even the
  narrowest widths exceed the budget, which no budget here needs: a uniform policy keeps every
  layer. Units are ranked by the search's criteria (``search.yaml``).
- **search**: :class:`vitprune.search.Search` on the same spec with the budget set; the race then
  fine-tunes its best *policy* from the dense weights with the common recipe.

The dimensions are those the search space knows (:data:`vitprune.spaces.space.ALL_DIMENSIONS`)
unless the caller narrows them, so a new dimension joins the uniform policy when it lands.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from vitprune.evaluators.criteria import calibration_batches, scores_by_dimension
from vitprune.evaluators.dense import cache_root
from vitprune.evaluators.io import load_pruned
from vitprune.evaluators.measure import accuracy
from vitprune.evaluators.trial import TrialContext
from vitprune.search.spec import SearchSpec, SpaceSpec
from vitprune.spaces import Architecture, InputError, Policy, Scores, macs
from vitprune.spaces.budget import Budget, Fit
from vitprune.spaces.space import ALL_DIMENSIONS, WIDTHS, SearchSpace, decode

Progress = Callable[[str], None]


def criteria_scores(
    spec: SearchSpec, context: TrialContext, dimensions: Sequence[str], *, cache_dir: Path | None = None
) -> Scores:
    """The search's criteria for ``dimensions``, on the calibration batches a search draws."""
    named = [dim for dim in ALL_DIMENSIONS if dim in type(spec.criteria).model_fields]
    missing = [dim for dim in dimensions if dim not in named]
    if missing:
        raise InputError(
            f"criteria.{missing[0]}: the spec names no criterion for this dimension "
            f"(narrow --dimensions to {' '.join(named)})"
        )
    batches = calibration_batches(
        context.data.calibration_loader(seed=spec.seed), spec.criteria.calibration_batches
    )
    return scores_by_dimension(
        spec.criteria.by_dimension(list(dimensions)),
        context.dense,
        base=context.base,
        data=batches,
        cache_dir=cache_dir or cache_root() / "scores",
    )


def kept_search_point(search_runs: Path, budget: float) -> tuple[SpaceSpec, dict[str, float]] | None:
    """The search space and best point of the search kept as ``search_runs/search-{budget}pct``
    (``peers.py --search-dir``), or ``None`` when that search did not finish."""
    run_dir = search_runs / f"search-{budget * 100:g}pct"
    if not (run_dir / "best_policy.json").is_file():
        return None
    best = json.loads((run_dir / "best_policy.json").read_text())
    space = SearchSpec.model_validate_json((run_dir / "spec.json").read_text()).space
    return space, best["metrics"]["point"]


def search_point_policy(
    kept: tuple[SpaceSpec, dict[str, float]], base: Architecture, scores: Scores, *, budget_macs: float
) -> Fit:
    """A kept search's space and best point (:func:`kept_search_point`) decoded onto ``base`` at
    ``budget_macs``: the kind of policy the search chose, built on another model."""
    space, point = kept
    budget = Budget("macs", budget_macs)
    return decode(point, space=space.build(base.depth), base=base, scores=scores, budget=budget, measure=macs)


def uniform_policy(
    base: Architecture,
    scores: Scores,
    *,
    budget_macs: float,
    dimensions: Sequence[str],
    align: int = 8,
    token_start: int | None = None,
) -> Fit:
    """The uniform policy of ``dimensions`` (module docstring) projected onto ``budget_macs``: the
    point a search starts from (:meth:`SearchSpace.uniform_point`), decoded as its trial 0 is.
    ``token_start`` is the first layer that drops tokens (``None``: the search's uniform start,
    :attr:`SearchSpace.uniform_token_start`).

    >>> uniform_policy(base, scores, budget_macs=0.5 * macs(Policy.keep_all(base)),  # doctest: +SKIP
    ...                dimensions=ALL_DIMENSIONS).policy.summary()
    """
    space = SearchSpace("compact", depth=base.depth, dimensions=frozenset(dimensions), align=align)
    budget = Budget("macs", budget_macs)
    return decode(
        space.uniform_point(token_start), space=space, base=base, scores=scores, budget=budget, measure=macs
    )


def token_schedules(depth: int, dimensions: Sequence[str]) -> dict[str, tuple[tuple[str, ...], int]]:
    """The uniform policy's token schedules the race tries: name → (dimensions, first layer that
    drops tokens). Tokens shrink geometrically from each layer in turn, or not at all (the other
    dimensions then carry the whole cut).

    >>> list(token_schedules(3, ["mlp", "tokens"]))
    ['tokens-from-0', 'tokens-from-1', 'tokens-from-2', 'no-tokens']
    """
    dims = tuple(dimensions)
    if "tokens" not in dims:
        return {"no-tokens": (dims, 0)}
    schedules = {f"tokens-from-{start}": (dims, start) for start in range(depth)}
    return schedules | {"no-tokens": (tuple(d for d in dims if d != "tokens"), 0)}


UNIFORM = {"uniform-all": None, "uniform-widths": WIDTHS}  # None: every dimension of the run


def run_search(
    spec: SearchSpec,
    *,
    fraction: float,
    trials: int,
    run_dir: Path,
    progress: Progress,
) -> dict[str, Any]:
    """One search at ``fraction`` of dense MACs with ``trials`` trials; its best policy and how it
    was found. The dense model and the criteria are the spec's, so they are the race's."""
    from vitprune.search.lifecycle import Search

    spec = spec.model_copy(
        update={
            "budget": spec.budget.model_copy(update={"macs": f"{fraction * 100:g}%"}),
            "trials": spec.trials.model_copy(
                update={
                    "total": trials,
                    "concurrent": min(spec.trials.concurrent, trials),
                    "initial": min(spec.trials.initial, trials),
                }
            ),
        }
    )
    started = time.perf_counter()
    outcome = Search(spec, run_dir=run_dir, progress=progress).run()
    if outcome.best is None:
        raise RuntimeError(
            f"search at {fraction:.0%}: no feasible trial completed (see {run_dir}/trials.csv)"
        )
    trial_model, policy = load_pruned(run_dir / "best_model")
    best = outcome.best
    return {
        "policy": policy,
        "trial_model": trial_model,
        "record": {
            "run_dir": str(run_dir),
            "trials": outcome.trials,
            "completed": outcome.completed,
            "wall_s": time.perf_counter() - started,
            "suggest_s": outcome.suggest_s,
            "best_trial": best["trial"],
            "point": best["metrics"].get("point"),
            "trial_search_val": best["metrics"]["accuracy"],
            "selection": best.get("selection"),
            "dimensions": list(spec.space.dimensions),
            "generation": spec.generation.method,
            "trials_finetune": json.loads(spec.finetune.model_dump_json()),
        },
    }


def trial_model_test(model: nn.Module, context: TrialContext) -> float:
    """Test accuracy of the search's own fine-tuned model (for reference next to the recipe's)."""
    return accuracy(model, context.data.eval_loader("test")).top1


def policy_record(policy: Policy, fit: Fit | None = None) -> dict[str, Any]:
    """What a table needs about a vitprune policy: its structure and how it landed."""
    record: dict[str, Any] = {"structure": policy.summary()}
    if fit is not None:
        record |= {"scale": fit.scale, "filled": fit.filled, "shortfall": fit.shortfall}
    return record
