"""A closed-form stand-in for "prune, fine-tune, measure": known optimum, known costs.

``accuracy`` peaks at ``OPTIMUM``, whose ``macs`` (the mean of the point) is 0.55, above the
``MACS_BOUND`` of the constraint: the best feasible point lies on the constraint's boundary, and
the most accurate points Sobol finds are often infeasible.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Tune workers unpickle this module: keep Ax and torch out of its namespace
    from vitprune.search import Method, Optimizer

NAMES = ("a", "b", "c", "d")
OPTIMUM = (0.3, 0.7, 0.6, 0.6)
MACS_BOUND = 0.5
CONSTRAINT = f"macs <= {MACS_BOUND}"
TRACKED = ("params", "latency_ms")


def accuracy(point: Mapping[str, float]) -> float:
    return 0.9 - sum((point[name] - best) ** 2 for name, best in zip(NAMES, OPTIMUM, strict=True))


def macs(point: Mapping[str, float]) -> float:
    return sum(point[name] for name in NAMES) / len(NAMES)


def evaluate(point: Mapping[str, float]) -> dict[str, float]:
    """Final metrics of a point: accuracy (objective), macs (constrained), params and latency."""
    return {
        "accuracy": accuracy(point),
        "macs": macs(point),
        "params": 2 * macs(point) + 0.1,
        "latency_ms": 10 * macs(point) + 2,
    }


def optimizer(
    *,
    method: Method = "gp_ei",
    initial_trials: int = 3,
    objective: str = "accuracy",
    constraints: tuple[str, ...] = (CONSTRAINT,),
    storage_url: str | None = None,
) -> Optimizer:
    """A configured optimizer over ``NAMES`` with the tiny acquisition budget tests can afford."""
    from vitprune.search import GenerationConfig, Optimizer

    optimizer = Optimizer(storage_url=storage_url)
    optimizer.configure(
        NAMES,
        objective=objective,
        outcome_constraints=constraints,
        tracked_metrics=[m for m in ("macs", *TRACKED) if m not in objective],
        generation=GenerationConfig(
            method=method, initial_trials=initial_trials, seed=0, num_restarts=2, raw_samples=64
        ),
    )
    return optimizer
