"""The Ax ``Client`` of one search, behind a small typed surface in lifecycle order.

configure → suggest → complete / fail / abandon → best, with JSON snapshots at any point::

    >>> optimizer = Optimizer()
    >>> optimizer.configure(
    ...     ["keep_heads", "keep_mlp"],
    ...     objective="accuracy",
    ...     outcome_constraints=["latency_ms <= 12.5"],
    ...     tracked_metrics=["macs", "params"],
    ...     generation=GenerationConfig(initial_trials=4),
    ... )
    >>> for index, point in optimizer.suggest(2).items():  # one call, one GP fit, two trials
    ...     optimizer.complete(index, evaluate(point))
    >>> optimizer.best().parameters

Every parameter is a float in [0, 1]: integer parameters make the acquisition optimiser several
times slower, so decoding a point into a policy (rounding to whole heads, neurons, layers) is the
trainable's job. A metric is reported as a value, or as ``(value, standard error)`` when its
noise is known (search-val accuracy: binomial over its images). The GP then models that noise
instead of inferring it; Ax judges feasibility on the measured value itself either way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ax import Client, RangeParameterConfig
from ax.core.experiment import Experiment
from ax.core.trial_status import TrialStatus
from ax.exceptions.core import DataRequiredError

from vitprune.search import ax_adapter
from vitprune.search.generation import SOBOL_NODE, GenerationConfig, build_generation_strategy
from vitprune.search.records import (
    BestPoint,
    NoFeasibleTrialError,
    OptimizerStateError,
    Suggestion,
    SuggestionTiming,
    TrialRecord,
    floats,
    means,
    trial_records,
)
from vitprune.spaces.files import write_text_atomic

logger = logging.getLogger(__name__)


class Optimizer:
    """Owns the Ax ``Client`` of one search.

    Args:
        torch_threads: Torch intra-op threads while Ax fits and optimises (restored afterwards).
            The GP's tensors are tiny: on 2 cores shared with training jobs, one thread is several
            times faster than two, which spin-wait against the trials. ``None`` leaves torch as is.
    """

    def __init__(self, *, torch_threads: int | None = 1, storage_url: str | None = None) -> None:
        self._client: Client | None = None
        self._torch_threads = torch_threads
        self._storage_url = storage_url
        self._suggestions: list[Suggestion] = []
        self._encoded: str | None = None  # see _ax_json
        self._encode_s = 0.0
        self._storage_synced = True  # False after from_state: see _writable_client

    # -------------------------------------------------------------------- configure
    def configure(
        self,
        parameters: Sequence[str],
        *,
        objective: str,
        outcome_constraints: Sequence[str] = (),
        tracked_metrics: Sequence[str] = (),
        generation: GenerationConfig | None = None,
        name: str = "vitprune",
    ) -> None:
        """Define the search space, the goal and how points are generated.

        Args:
            parameters: Names of the float parameters, each in [0, 1].
            objective: Ax objective string: ``"accuracy"`` (maximise), ``"-loss"`` (minimise),
                or a Pareto objective such as ``"accuracy, -latency_ms"``.
            outcome_constraints: Ax constraint strings on measured metrics, e.g.
                ``["latency_ms <= 12.5"]``.
            tracked_metrics: Metrics that are recorded but neither optimised nor modelled.
            generation: Method, initialisation budget, seed and acquisition optimiser budget.
            name: Name of the Ax experiment.
        """
        if self._client is not None:
            raise OptimizerStateError("configure: already configured; create a new Optimizer")
        if not parameters:
            raise ValueError("parameters: at least one parameter name is needed")
        if len(set(parameters)) != len(parameters):
            duplicates = sorted({p for p in parameters if list(parameters).count(p) > 1})
            raise ValueError(f"parameters: duplicate names {duplicates}")
        generation = generation or GenerationConfig()
        client = Client(
            random_seed=generation.seed, storage_config=ax_adapter.storage_config(self._storage_url)
        )
        client.configure_experiment(
            parameters=[
                RangeParameterConfig(name=p, parameter_type="float", bounds=(0.0, 1.0)) for p in parameters
            ],
            name=name,
        )
        try:
            client.configure_optimization(objective=objective, outcome_constraints=list(outcome_constraints))
        except Exception as error:  # Ax raises parser-specific errors: report the strings
            raise ValueError(
                f"objective {objective!r} / outcome_constraints {list(outcome_constraints)}: {error}"
            ) from error
        client.configure_tracking_metrics(
            [
                m for m in tracked_metrics if m not in ax_adapter.experiment(client).metrics
            ]  # no duplicate warnings
        )
        multi_objective = ax_adapter.experiment(client).optimization_config.is_moo_problem
        client.set_generation_strategy(build_generation_strategy(generation, multi_objective=multi_objective))
        self._client = client

    # -------------------------------------------------------------------- generate
    def attach(self, point: Mapping[str, float], *, name: str) -> int:
        """Add a trial at a point chosen by hand (RUNNING, like a suggested one); returns its index.

        A search starts from the uniform policy this way: a strong, known point the GP then
        improves on (its point counts as one of the initial trials).
        """
        missing = sorted(set(self.parameter_names) - set(point))
        if missing:
            raise ValueError(f"attach: the point lacks {missing}")
        self._changed()
        return self._writable_client("attach").attach_trial(parameters=dict(point), arm_name=name)

    def suggest(self, n: int = 1) -> dict[int, dict[str, float]]:
        """Create up to ``n`` trials with one ``Client.get_next_trials`` call (one model fit).

        Fewer than ``n`` (possibly none) come back while the Sobol budget is used up and Ax
        waits for observations before fitting the GP, and on the call that moves from Sobol to
        the GP. Points of running trials are pending points for the acquisition function, so a
        batch does not repeat itself.

        Returns:
            Ax trial index → point, for the trials created (now RUNNING in Ax).
        """
        if n < 1:
            raise ValueError(f"n: must be at least 1, got {n}")
        client = self._writable_client("suggest")
        start = time.perf_counter()
        try:
            with self._torch_threads_set():
                trials = client.get_next_trials(max_trials=n)
        except DataRequiredError:
            logger.debug("Ax waits for observations before generating more trials")
            return {}
        seconds = time.perf_counter() - start
        self._changed()  # a generation strategy may move on even without new trials
        if trials:
            node, _, _ = ax_adapter.generator_run_info(self._experiment.trials[min(trials)].generator_runs[0])
            self._suggestions.append(Suggestion(seconds=seconds, trials=len(trials), node=node or "?"))
            logger.info("Suggested %d trial(s) from %s in %.2f s", len(trials), node, seconds)
        return {index: {k: float(v) for k, v in point.items()} for index, point in trials.items()}

    # -------------------------------------------------------------------- complete
    def complete(self, index: int, metrics: Mapping[str, float | tuple[float, float]]) -> str:
        """Attach the final metrics of a RUNNING trial and mark it COMPLETED.

        A trial whose objective or constraint metric is not finite (NaN loss, diverged
        fine-tuning) is marked FAILED instead: Ax never sees the value.

        Args:
            index: Ax trial index.
            metrics: Every objective and constraint metric, optionally tracked metrics; each a
                value or ``(value, standard error)``.

        Returns:
            The trial's new status, ``"COMPLETED"`` or ``"FAILED"``.

        Raises:
            ValueError: A metric is unknown, or an objective/constraint metric is missing.
        """
        self._running_trial(index, "complete")
        unknown = sorted(set(metrics) - set(self.metric_names))
        if unknown:
            raise ValueError(f"metrics: unknown {unknown}; known metrics are {list(self.metric_names)}")
        missing = sorted(set(self.required_metric_names) - set(metrics))
        if missing:
            raise ValueError(f"metrics: trial {index} lacks {missing}, which the optimisation needs")
        earlier = self.trials()
        outcomes = {
            name: _with_known_noise(name, _outcome(name, value), earlier) for name, value in metrics.items()
        }
        not_finite = {name: o for name, o in outcomes.items() if not math.isfinite(_mean(o))}
        if any(name in self.required_metric_names for name in not_finite):
            self.fail(index, f"non-finite metrics {not_finite}")
            return TrialStatus.FAILED.name
        finite = {name: o for name, o in outcomes.items() if name not in not_finite}
        self._changed()
        status = self._writable_client("complete").complete_trial(trial_index=index, raw_data=finite)
        return status.name

    def fail(self, index: int, reason: str) -> None:
        """Mark a RUNNING trial FAILED (it raised, ran out of memory, or reported NaN)."""
        self._running_trial(index, "fail")
        self._changed()
        self._writable_client("fail").mark_trial_failed(trial_index=index, failed_reason=reason)
        logger.info("Trial %d FAILED: %s", index, reason)

    def abandon(self, index: int, reason: str) -> None:
        """Mark a RUNNING trial ABANDONED, with no data: for trials stopped early.

        Ax 1.3.1 offers three ways to end a trial that did not finish; only this one keeps its
        partial accuracy out of the GP:

        - ``mark_trial_early_stopped`` refuses a trial without data (``UnsupportedError``), and
          EARLY_STOPPED is one of the statuses whose data the GP fits
          (``DataLoaderConfig.statuses_to_fit``), so partial accuracy would count as final;
        - ``complete_trial`` with the partial result is the same mistake;
        - ``ABANDONED`` trials are excluded from the training data (``fit_abandoned=False``) and
          their points stay pending, so Ax does not propose the same point again.
        """
        self._running_trial(index, "abandon")
        client = self._writable_client("abandon")
        self._changed()
        # Client.mark_trial_abandoned takes no reason; the trial object keeps one (and is saved).
        trial = self._experiment.trials[index].mark_abandoned(reason=reason)
        ax_adapter.save_trials(client, [trial])
        logger.info("Trial %d ABANDONED: %s", index, reason)

    # -------------------------------------------------------------------- best
    def best(self) -> BestPoint:
        """Ax's best feasible trial by observed value (single objective).

        Raises:
            NoFeasibleTrialError: No completed trial satisfies every outcome constraint.
            OptimizerStateError: The objective is a Pareto objective: call ``pareto_frontier``.
        """
        client = self._configured_client("best")
        if self.multi_objective:
            raise OptimizerStateError("best: the objective has several metrics; call pareto_frontier()")
        if not self._experiment.trials_by_status[TrialStatus.COMPLETED]:
            raise NoFeasibleTrialError("best: no trial has completed yet")
        try:
            with self._torch_threads_set():
                parameters, metrics, index, _ = client.get_best_parameterization(use_model_predictions=False)
        except AssertionError as error:  # Ax logs the reason and returns None, then asserts
            raise NoFeasibleTrialError(
                "best: no completed trial satisfies the outcome constraints"
            ) from error
        return BestPoint(index=index, parameters=floats(parameters), metrics=means(metrics))

    def pareto_frontier(self) -> list[BestPoint]:
        """Ax's feasible Pareto-optimal trials by observed values (Pareto objective)."""
        client = self._configured_client("pareto_frontier")
        if not self.multi_objective:
            raise OptimizerStateError("pareto_frontier: the objective has one metric; call best()")
        if not self._experiment.trials_by_status[TrialStatus.COMPLETED]:
            raise NoFeasibleTrialError("pareto_frontier: no trial has completed yet")
        with self._torch_threads_set():
            frontier = client.get_pareto_frontier(use_model_predictions=False)
        points = [BestPoint(index=i, parameters=floats(p), metrics=means(m)) for p, m, i, _ in frontier]
        return sorted(points, key=lambda point: point.index)

    # -------------------------------------------------------------------- inspect
    @property
    def parameter_names(self) -> tuple[str, ...]:
        return tuple(self._experiment.search_space.parameters)

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Every metric the experiment knows: objectives, constraint metrics and tracked metrics."""
        return tuple(self._experiment.metrics)

    @property
    def required_metric_names(self) -> tuple[str, ...]:
        """Metrics a completed trial must report: objectives and outcome-constraint metrics."""
        return tuple(sorted(self._experiment.optimization_config.metric_names))

    @property
    def objective_names(self) -> tuple[str, ...]:
        """The metrics of the objective (one, or several for a Pareto objective)."""
        objective = self._experiment.optimization_config.objective
        return tuple(objective.metric_names)

    @property
    def multi_objective(self) -> bool:
        return self._experiment.optimization_config.is_moo_problem

    @property
    def num_trials(self) -> int:
        """Trials created so far, in any status."""
        return len(self._experiment.trials)

    def status(self, index: int) -> str:
        return self._experiment.trials[index].status.name

    def parameters(self, index: int) -> dict[str, float]:
        return floats(self._experiment.trials[index].arm.parameters)

    def trials(self) -> list[TrialRecord]:
        """Every trial in index order, with the generator that proposed it."""
        return trial_records(self._experiment)

    def model_training_trials(self) -> set[int]:
        """Trials whose data the most recently fitted model trained on (empty before any fit)."""
        adapter = ax_adapter.fitted_adapter(self._configured_client("model_training_trials"))
        if adapter is None:
            return set()
        index = adapter.get_training_data().observation_data.index
        return {int(i) for i in index.get_level_values("trial_index")}

    def modelled_metrics(self) -> tuple[str, ...]:
        """Metrics the most recently fitted model predicts (tracked metrics are not modelled)."""
        adapter = ax_adapter.fitted_adapter(self._configured_client("modelled_metrics"))
        return tuple(sorted(adapter.outcomes)) if adapter is not None else ()

    def analysis_cards(self) -> list[Any]:
        """Ax's analysis cards of the experiment (``Client.compute_analyses``), for the dashboard."""
        with self._torch_threads_set():
            return self._configured_client("analysis_cards").compute_analyses(display=False)

    def timing(self, node: str | None = None) -> SuggestionTiming:
        """Seconds spent in ``suggest`` calls that produced trials, optionally for one node."""
        return SuggestionTiming.of([s for s in self._suggestions if node is None or s.node == node])

    @property
    def seed(self) -> int | None:
        """The Sobol / acquisition seed, read back from the generation strategy."""
        sobol = ax_adapter.generation_strategy(self._configured_client("seed")).nodes_by_name[SOBOL_NODE]
        return sobol.generator_specs[0].generator_kwargs.get("seed")

    # -------------------------------------------------------------------- persist
    def snapshot(self, path: str | os.PathLike[str]) -> None:
        """Write the Ax snapshot (``Client.load_from_json_file`` reads it) atomically.

        The JSON goes to a temporary file in the same folder, is flushed to disk, then renamed
        over ``path``: a reader (or a driver killed mid-write) never sees a partial file.
        """
        write_text_atomic(path, self._ax_json())

    @classmethod
    def restore(cls, path: str | os.PathLike[str], *, torch_threads: int | None = 1) -> Optimizer:
        """An optimizer continuing the experiment of a ``snapshot`` (suggestion timings restart)."""
        return cls.from_state(
            {"ax": Path(path).read_text(), "suggestions": [], "torch_threads": torch_threads}
        )

    def state(self) -> dict[str, Any]:
        """JSON-serialisable state: the Ax snapshot (a JSON string), the timings, the torch threads."""
        return {
            "ax": self._ax_json(),
            "suggestions": [dataclasses.asdict(s) for s in self._suggestions],
            "torch_threads": self._torch_threads,
            "encode_s": self._encode_s,
            "storage_url": self._storage_url,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Optimizer:
        """Inverse of ``state``: the same experiment, generation strategy and timings."""
        optimizer = cls(torch_threads=state["torch_threads"], storage_url=state.get("storage_url"))
        # Without storage: reading a search's state (status, export, a dashboard) never writes.
        snapshot = json.loads(state["ax"])
        optimizer._client = ax_adapter.from_snapshot(snapshot, random_seed=None)
        ax_adapter.set_random_seed(optimizer._client, optimizer.seed)  # not part of Ax's snapshot
        optimizer._storage_synced = optimizer._storage_url is None
        optimizer._suggestions = [Suggestion(**s) for s in state["suggestions"]]
        optimizer._encoded = state["ax"]
        optimizer._encode_s = float(state.get("encode_s", 0.0))
        return optimizer

    @property
    def encode_s(self) -> float:
        """Seconds spent encoding the Ax experiment to JSON (snapshots and checkpoints)."""
        return self._encode_s

    # -------------------------------------------------------------------- private
    def _configured_client(self, caller: str) -> Client:
        if self._client is None:
            raise OptimizerStateError(f"{caller}: the optimizer is not configured; call configure() first")
        return self._client

    def _writable_client(self, caller: str) -> Client:
        """The client, saving to SQL storage (if any) from now on: for operations that change trials.

        After ``from_state`` the snapshot is the truth (it matches Tune's checkpoint); the database
        may be ahead of it, by the trials of a driver that stopped after the checkpoint. So the
        first change replaces the database's copy of the experiment with the snapshot's.
        """
        client = self._configured_client(caller)
        config = ax_adapter.storage_config(self._storage_url)  # binds Ax's engine to this search's database
        if self._storage_synced:
            return client
        ax_adapter.delete_stored_experiment(self._experiment.name)
        seed = ax_adapter.random_seed(client)
        client = ax_adapter.from_snapshot(
            json.loads(self._ax_json()), random_seed=seed, storage_config=config
        )
        self._client, self._storage_synced = client, True
        return client

    def _ax_json(self) -> str:
        """The Ax snapshot as JSON, encoded once per change of the experiment.

        Encoding is not cheap (about 2 s and 5 MB at 100 trials of 50 parameters: every trial
        carries its own copy of the search space), and both the snapshot written after a trial
        ends and Tune's next checkpoint need it.
        """
        if self._encoded is None:
            start = time.perf_counter()
            self._encoded = json.dumps(ax_adapter.to_snapshot(self._configured_client("snapshot")))
            self._encode_s += time.perf_counter() - start
        return self._encoded

    def _changed(self) -> None:
        self._encoded = None

    @property
    def _experiment(self) -> Experiment:
        return ax_adapter.experiment(self._configured_client("experiment"))

    def _running_trial(self, index: int, caller: str) -> None:
        trials = self._experiment.trials
        if index not in trials:
            raise KeyError(f"{caller}: no trial {index}; the experiment has trials 0..{len(trials) - 1}")
        if trials[index].status != TrialStatus.RUNNING:
            raise OptimizerStateError(
                f"{caller}: trial {index} is {trials[index].status.name}, only a RUNNING trial can end"
            )

    @contextlib.contextmanager
    def _torch_threads_set(self) -> Iterator[None]:
        if self._torch_threads is None:
            yield
            return
        previous = torch.get_num_threads()
        torch.set_num_threads(self._torch_threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)


def _outcome(name: str, value: float | tuple[float, float]) -> float | tuple[float, float]:
    """A reported metric as Ax takes it: a float, or ``(mean, standard error)``."""
    if not isinstance(value, tuple):
        return float(value)
    mean, sem = (float(v) for v in value)
    if not (math.isfinite(sem) and sem >= 0):
        raise ValueError(f"metrics: {name} has standard error {sem}; it must be finite and >= 0")
    return mean, sem


def _with_known_noise(
    name: str, outcome: float | tuple[float, float], earlier: Sequence[TrialRecord]
) -> float | tuple[float, float]:
    """``outcome``, with its standard error only if every ``earlier`` value of ``name`` has one.

    The GP cannot mix known and unknown noise in one metric. A search begun by a vitprune that
    reported no standard error, and resumed by one that does, keeps inferring the noise.
    """
    had = [name in record.sems for record in earlier if name in record.metrics]
    if not had:
        return outcome
    if isinstance(outcome, tuple):
        return outcome if all(had) else outcome[0]
    if any(had):
        raise ValueError(f"metrics: {name} comes without a standard error; earlier trials had one")
    return outcome


def _mean(outcome: float | tuple[float, float]) -> float:
    return outcome[0] if isinstance(outcome, tuple) else outcome
