"""What the optimizer hands back: trial records, best points, suggestion timings, typed errors."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any


class OptimizerStateError(RuntimeError):
    """A method was called before the step it depends on (e.g. ``suggest`` before ``configure``)."""


class NoFeasibleTrialError(LookupError):
    """No completed trial satisfies every outcome constraint (or none has completed yet)."""


@dataclasses.dataclass(frozen=True)
class Suggestion:
    """One ``suggest`` call that produced trials.

    Attributes:
        seconds: Wall time of the ``Client.get_next_trials`` call (model fit + acquisition).
        trials: Number of trials it generated.
        node: Generation node that produced them (``"Sobol"`` or ``"GP"``).
    """

    seconds: float
    trials: int
    node: str


@dataclasses.dataclass(frozen=True)
class SuggestionTiming:
    """Summary of the optimiser's own cost: seconds spent in ``suggest`` calls."""

    calls: int
    trials: int
    total_s: float
    mean_s: float
    max_s: float

    @classmethod
    def of(cls, suggestions: Sequence[Suggestion]) -> SuggestionTiming:
        seconds = [s.seconds for s in suggestions]
        return cls(
            calls=len(seconds),
            trials=sum(s.trials for s in suggestions),
            total_s=sum(seconds),
            mean_s=sum(seconds) / len(seconds) if seconds else 0.0,
            max_s=max(seconds, default=0.0),
        )


@dataclasses.dataclass(frozen=True)
class TrialRecord:
    """One Ax trial as vitprune sees it.

    Attributes:
        index: Ax trial index.
        status: Ax trial status name: ``"RUNNING"``, ``"COMPLETED"``, ``"FAILED"``, ``"ABANDONED"``.
        parameters: The point, one float in [0, 1] per parameter.
        metrics: Observed values attached to the trial (empty unless it completed).
        node: Generation node that proposed the point (``"Sobol"`` or ``"GP"``).
        generator: Ax generator that ran in that node (``"Sobol"`` or ``"BoTorch"``).
        model: BoTorch model class of the GP (``"SingleTaskGP"``), ``None`` for Sobol.
        acquisition: BoTorch acquisition function class, ``None`` for Sobol.
        reason: Why the trial failed or was abandoned, if it was.
        fit_s: Seconds Ax spent fitting the model for this trial's suggestion (0 when the fit
            was shared with an earlier trial of the same batch).
        gen_s: Seconds Ax spent optimising the acquisition function for it.
        sems: Standard errors reported with the metrics, for those that had one.
    """

    index: int
    status: str
    parameters: dict[str, float]
    metrics: dict[str, float]
    node: str
    generator: str
    model: str | None
    acquisition: str | None
    reason: str | None
    fit_s: float
    gen_s: float
    sems: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class BestPoint:
    """A trial chosen by Ax from observed values (not model predictions)."""

    index: int
    parameters: dict[str, float]
    metrics: dict[str, float]


def trial_records(experiment: Any) -> list[TrialRecord]:
    """Every trial of an Ax ``Experiment`` in index order, with the generator that proposed it."""
    from vitprune.search import ax_adapter

    observed: dict[int, dict[str, float]] = {}
    sems: dict[int, dict[str, float]] = {}
    for row in experiment.lookup_data().df.itertuples():
        observed.setdefault(int(row.trial_index), {})[str(row.metric_name)] = float(row.mean)
        if not math.isnan(row.sem):
            sems.setdefault(int(row.trial_index), {})[str(row.metric_name)] = float(row.sem)
    records = []
    for index, trial in sorted(experiment.trials.items()):
        run = trial.generator_runs[0]
        node, generator, kwargs = ax_adapter.generator_run_info(run)
        acquisition = kwargs.get("botorch_acqf_class")
        spec = kwargs.get("surrogate_spec")
        model = spec.model_configs[0].botorch_model_class if spec is not None else None
        records.append(
            TrialRecord(
                index=index,
                status=trial.status.name,
                parameters=floats(trial.arm.parameters),
                metrics=observed.get(index, {}),
                node=node or ("start" if generator is None else "?"),  # attached by hand: a start point
                generator=generator or "manual",
                model=model.__name__ if model is not None else None,
                acquisition=acquisition.__name__ if acquisition is not None else None,
                reason=trial.status_reason,
                fit_s=float(run.fit_time or 0.0),
                gen_s=float(run.gen_time or 0.0),
                sems=sems.get(index, {}),
            )
        )
    return records


def floats(parameters: Mapping[str, Any]) -> dict[str, float]:
    return {name: float(value) for name, value in parameters.items()}


def means(outcome: Mapping[str, Any]) -> dict[str, float]:
    """Ax outcomes map a metric to ``(mean, sem)`` or to a mean: keep the mean."""
    return {name: float(v[0] if isinstance(v, tuple) else v) for name, v in outcome.items()}
