"""Run (or resume) the trials of a search: Ray Tune dispatches the points ``AxSearcher`` proposes.

    >>> searcher = AxSearcher(optimizer, max_trials=40, snapshot_path="out/experiment.json")
    >>> run = run_tune(
    ...     as_trainable(evaluate),  # evaluate(point) -> {"accuracy": ..., "macs": ..., ...}
    ...     searcher,
    ...     storage_path="out/tune",
    ...     max_concurrent_trials=2,
    ...     resources={"cpu": 1, "gpu": 0.5},
    ...     max_failures=1,
    ... )
    >>> run.optimizer.best()
    >>> # after Ctrl-C or a killed driver:
    >>> run = resume_tune(run.path, as_trainable(evaluate), resources={"cpu": 1, "gpu": 0.5})

Ray is not started here: call ``ray.init`` first to choose the cluster (Tune starts a local one
otherwise).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune import Callback, ResultGrid
from ray.tune.schedulers import TrialScheduler

from vitprune.search.optimizer import Optimizer
from vitprune.search.searcher import AxSearcher

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TuneRun:
    """What ``run_tune`` / ``resume_tune`` hand back.

    Attributes:
        path: Tune's experiment folder (pass it to ``resume_tune``).
        searcher: The searcher as Tune last checkpointed it.
        results: Tune's view of the trials (Ax's view is ``searcher.optimizer``).
        wall_s: Wall time of this ``fit`` call.
        suggest_s: Seconds spent in Ax suggestions during this call (blocking the driver).
        encode_s: Seconds spent encoding the Ax experiment for snapshots and checkpoints during
            this call (blocking the driver too).
    """

    path: Path
    searcher: AxSearcher
    results: ResultGrid
    wall_s: float
    suggest_s: float
    encode_s: float

    @property
    def optimizer(self) -> Optimizer:
        return self.searcher.optimizer

    @property
    def trials_s(self) -> float:
        """Seconds the trials ran (Tune's ``time_total_s``), over every session of the search."""
        return sum(float((r.metrics or {}).get("time_total_s", 0.0)) for r in self.results)

    @property
    def suggest_fraction(self) -> float:
        """Share of the wall time the driver spent in Ax (goal: at most 0.1)."""
        return self.suggest_s / self.wall_s if self.wall_s > 0 else 0.0


def run_tune(
    trainable: Callable[[dict[str, Any]], None],
    searcher: AxSearcher,
    *,
    storage_path: str | os.PathLike[str],
    name: str = "search",
    max_concurrent_trials: int = 1,
    resources: Mapping[str, float] | None = None,
    max_failures: int = 0,
    scheduler: TrialScheduler | None = None,
    stop: Mapping[str, float] | Callable[[str, dict[str, Any]], bool] | None = None,
    callbacks: Sequence[Callback] = (),
    reuse_actors: bool = False,
    verbose: int = 1,
) -> TuneRun:
    """Run ``searcher.max_trials`` trials of ``trainable`` with Ray Tune.

    The searcher, not Tune's sample count, says when the search is done: it answers ``FINISHED``
    once every planned Ax trial exists and none is waiting to be handed out. (Tune's counter also
    counts trials created just before a killed driver's last checkpoint, which a resumed search
    must still run.)

    Args:
        trainable: A Tune function trainable (see ``as_trainable``).
        searcher: Proposes the points and decides when the search is done.
        storage_path: Folder under which Tune writes the experiment folder ``name``.
        name: Experiment folder name.
        max_concurrent_trials: Trials running at once; also the size of suggestion batches.
        resources: Per-trial resources, e.g. ``{"cpu": 1, "gpu": 0.5}`` (fractions allowed).
        max_failures: Retries of a trial that raised, before it counts as failed.
        scheduler: A Tune scheduler, e.g. ASHA for early stopping (its stopped trials are
            abandoned in Ax, not completed).
        stop: Tune stopping criteria per trial (same treatment as the scheduler's stops).
        callbacks: Tune callbacks.
        reuse_actors: Run the next trial in a finished trial's worker process (saves its start-up).
        verbose: Tune's console verbosity (0 to 3).
    """
    tuner = tune.Tuner(
        tune.with_resources(trainable, dict(resources or {"cpu": 1})),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=-1,  # until the searcher says FINISHED
            max_concurrent_trials=max_concurrent_trials,
            scheduler=scheduler,
            reuse_actors=reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(Path(storage_path).absolute()),
            failure_config=tune.FailureConfig(max_failures=max_failures),
            stop=stop,
            callbacks=list(callbacks),
            verbose=verbose,
        ),
    )
    path = Path(storage_path).absolute() / name
    return _fit(tuner, path, searcher.optimizer)


def resume_tune(
    path: str | os.PathLike[str],
    trainable: Callable[[dict[str, Any]], None],
    *,
    resources: Mapping[str, float] | None = None,
) -> TuneRun:
    """Finish an interrupted search: the same Ax experiment, none lost, none run twice.

    Trials that were running when the driver stopped start again under their Tune ids and
    complete their Ax trials; trials that had failed stay failed.

    Args:
        path: The experiment folder (``TuneRun.path``).
        trainable: The same trainable as the interrupted run (Tune checks its name).
        resources: The same per-trial resources as the interrupted run.
    """
    path = Path(path).absolute()
    tuner = tune.Tuner.restore(
        str(path),
        trainable=tune.with_resources(trainable, dict(resources or {"cpu": 1})),
        resume_unfinished=True,
        resume_errored=False,
    )
    return _fit(tuner, path, AxSearcher.from_experiment_dir(path).optimizer)


def _fit(tuner: tune.Tuner, path: Path, before: Optimizer) -> TuneRun:
    """Run ``tuner``; ``before`` is the optimizer as it was, to time this session alone."""
    suggest_s, encode_s = before.timing().total_s, before.encode_s
    start = time.perf_counter()
    results = tuner.fit()
    wall_s = time.perf_counter() - start
    searcher = AxSearcher.from_experiment_dir(path)  # the state Tune saved when fit() ended
    run = TuneRun(
        path=path,
        searcher=searcher,
        results=results,
        wall_s=wall_s,
        suggest_s=searcher.optimizer.timing().total_s - suggest_s,
        encode_s=searcher.optimizer.encode_s - encode_s,
    )
    logger.info(
        "%d of %d Ax trials created; %.1f s wall: %.1f s (%.1f %%) suggesting, %.1f s encoding "
        "snapshots; %.1f s in trials",
        searcher.optimizer.num_trials,
        searcher.max_trials,
        run.wall_s,
        run.suggest_s,
        100 * run.suggest_fraction,
        run.encode_s,
        run.trials_s,
    )
    return run
