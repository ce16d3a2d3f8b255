"""A Ray Tune ``Searcher`` around vitprune's Ax ``Optimizer``.

Ray's own ``AxSearch`` does not work with Ax 1.3, and it would not batch suggestions or keep
early-stopped trials out of the GP anyway. ``AxSearcher``:

- maps each Tune trial id to one Ax trial index, for good: a trial that Tune retries
  (``FailureConfig(max_failures=...)``) or resumes after the driver restarts keeps its id, so it
  keeps its Ax trial; only its final outcome reaches Ax;
- batches suggestions: when Tune asks and nothing is queued, it asks Ax for a batch of
  ``max_concurrent`` trials (one ``get_next_trials`` call, one GP fit, the running trials as
  pending points) and hands them out one by one as slots free up; it never creates more than
  ``max_trials`` Ax trials;
- with ``synchronous_from=n``, once the experiment has ``n`` trials (the Sobol budget: from then
  on the GP proposes the points), asks Ax only once every running trial has ended: each GP batch
  is then fitted on the observations of every earlier trial, whatever order they finished in, so
  a search whose trials are deterministic (CPU fine-tunes under a seed) proposes the same points
  when run again. Otherwise the GP sees whichever trials happened to finish first, and two runs
  of one spec part ways at the first trial that finishes in another order. Sobol points do not
  depend on observations, so the trials before ``n`` never wait;
- ends every Ax trial exactly once, in ``on_trial_complete``:

  ====================================================  ==========================
  Tune reports                                          Ax trial becomes
  ====================================================  ==========================
  ``error=True`` (raised after all retries)             FAILED
  a final result with ``FAILED_KEY`` (the reason)       FAILED, not retried
  no result, or a last result without ``FINAL_KEY``     ABANDONED (no data)
  a last result with ``result[FINAL_KEY] is True``      COMPLETED with its metrics
  ====================================================  ==========================

  Tune sets ``done=True`` both when a trainable returns and when a scheduler (ASHA) or a stopper
  stops it, so ``done`` cannot tell a final result from a partial one: a trainable marks its
  final report itself, with ``vitprune.search.report.final_result(metrics)``. Intermediate
  reports never reach Ax (the GP would otherwise fit the partial accuracy of running trials as
  if it were final);
- writes the Ax snapshot after every batch it creates and every trial that ends, and saves its
  whole state (Ax experiment, id ↔ index map, queue) in Tune's experiment checkpoint, so
  ``Tuner.restore`` continues the same Ax experiment.

Resume semantics (a killed driver loses no finished trial and runs none twice): Tune saves its
trial table and this searcher's state in one experiment checkpoint, at most every few seconds.
The searcher also writes its whole state to ``searcher.json`` (beside ``experiment.json``) every
time it hands a trial to Tune and every time one ends. ``restore`` starts from Tune's checkpoint
and, when ``searcher.json`` ran ahead of it (the driver died between the two), takes the Ax
experiment from ``searcher.json``:

- trials that *ended* after the checkpoint keep their outcome. Tune resumes those it had seen
  running; their second result is ignored (``run_trial`` returns the saved result without
  fine-tuning again). Those Tune never saw are simply done;
- trials *running* at the kill that Tune never saw go back to the front of the queue: the next
  Tune trials run those same Ax trials (the same points), so no Ax trial is left RUNNING for
  ever, and one that had finished and saved its model before the kill reports what it saved
  (``run_trial``) instead of a new point overwriting its folder;
- trials created but not yet handed out stay in the queue.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher

from vitprune.search.optimizer import Optimizer
from vitprune.search.records import NoFeasibleTrialError, OptimizerStateError
from vitprune.search.report import FAILED_KEY, FINAL_KEY, TRIAL_KEY
from vitprune.spaces.files import write_text_atomic

logger = logging.getLogger(__name__)

_STATE_VERSION = 1
LATEST_STATE = "searcher.json"  # beside the snapshot: the state as of the last trial handed out or ended
PROGRESS = "progress.json"  # beside the snapshot: the search's progress, rewritten as trials start and end


class AxSearcher(Searcher):
    """Tune ``Searcher`` that asks vitprune's ``Optimizer`` (Ax) for points.

    Args:
        optimizer: A configured optimizer; the searcher owns it from now on.
        max_trials: Ax trials to create in all, failed and abandoned ones included. The searcher
            answers ``FINISHED`` once they all exist and none is queued (``run_tune`` lets it
            decide when the search is done).
        snapshot_path: Where the Ax snapshot (``experiment.json``) is rewritten after every batch
            created and every trial that ends; made absolute, since Tune changes working
            directories.
        start: Ax trials already created by hand (``Optimizer.attach``), handed out first.
        synchronous_from: From this many trials on, ask Ax for a new batch only when no trial is
            running (see the module doc): reproducible searches, for the idle workers of a batch's
            slowest trial. ``None``: never wait.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        max_trials: int,
        snapshot_path: str | os.PathLike[str] | None = None,
        start: Sequence[int] = (),
        synchronous_from: int | None = None,
    ) -> None:
        if max_trials < 1:
            raise ValueError(f"max_trials: must be at least 1, got {max_trials}")
        super().__init__(metric=None, mode=None)
        self._optimizer = optimizer
        self.max_trials = max_trials
        self.snapshot_path = Path(snapshot_path).absolute() if snapshot_path is not None else None
        self.synchronous_from = synchronous_from
        self._max_concurrent: int | None = None
        self._queue: list[int] = list(start)  # Ax trials created, not yet given to Tune (a batch, starts)
        self._live: dict[str, int] = {}  # Tune trial id → Ax index, handed out and not ended
        self._ended: dict[str, int] = {}  # Tune trial id → Ax index, ended in Ax
        self._rerunning: set[str] = set()  # resumed by Tune, though their Ax trial ended: see restore
        self._waiting = False  # Ax wants observations first: do not ask again until a trial ends
        self._warned_partial = False
        self._session_started = time.time()  # this driver session (a resume starts a new one)
        self._session_ended = 0

    # -------------------------------------------------------------------- Tune hooks
    def set_max_concurrency(self, max_concurrent: int) -> bool:
        """Take over ``max_concurrent_trials`` from Tune's ``ConcurrencyLimiter``: it sizes batches."""
        self._max_concurrent = max_concurrent
        return True

    def suggest(self, trial_id: str) -> dict[str, float] | str | None:
        """A point for a new Tune trial, ``None`` to be asked later, or ``Searcher.FINISHED``."""
        if trial_id in self._live:  # Tune never asks twice for one id; answer consistently if it did
            return self.config(self._live[trial_id])
        if (
            self._max_concurrent is not None
            and len(self._live) + len(self._rerunning) >= self._max_concurrent
        ):
            return None
        if not self._queue:
            remaining = self.max_trials - self._optimizer.num_trials
            if remaining <= 0:
                return Searcher.FINISHED
            if self._waiting or (self._live and self._synchronous_now()):
                return None
            # A full batch per GP fit even when one slot is free: the points the next slots will run
            # are proposed now, with the running trials as pending points. With short trials the GP
            # fit would otherwise cost as much as a trial (measured: 21 % of the embedded default's
            # wall time with one fit per trial).
            size = 1 if self._max_concurrent is None else self._max_concurrent
            batch = self._optimizer.suggest(min(size, remaining))
            if not batch:
                self._waiting = True
                return None
            self._queue.extend(sorted(batch))
        index = self._queue.pop(0)
        self._live[trial_id] = index
        logger.debug("Tune trial %s runs Ax trial %d", trial_id, index)
        # Before Tune runs it: a trial that finishes and saves its model before the driver dies
        # must be the same Ax trial (same point) after a resume, not a new point in its folder.
        # The dashboard also draws a running trial's structure from its point.
        self._write_snapshot()
        self._write_progress()
        return self.config(index)

    def config(self, index: int) -> dict[str, float | int]:
        """The Tune config of Ax trial ``index``: its point, and its index under ``TRIAL_KEY``."""
        return {**self._optimizer.parameters(index), TRIAL_KEY: index}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """Intermediate results are not observations: Ax never sees them."""

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        """End the Ax trial of ``trial_id``: FAILED, ABANDONED or COMPLETED (see module doc)."""
        if trial_id in self._rerunning:
            self._rerunning.discard(trial_id)
            logger.info("Tune trial %s ended again after a resume; its first outcome stands", trial_id)
            return
        index = self._live.pop(trial_id, None)
        if index is None:
            logger.warning("Tune trial %s has no running Ax trial (ended already?): ignored", trial_id)
            return
        self._ended[trial_id] = index
        self._waiting = False
        optimizer = self._optimizer
        if optimizer.status(index) != "RUNNING":
            logger.warning("Ax trial %d is already %s: ignored", index, optimizer.status(index))
        elif error:
            optimizer.fail(index, f"Tune trial {trial_id} raised after its retries (see its error.txt)")
        elif result and result.get(FINAL_KEY) is True and result.get(FAILED_KEY):
            logger.warning("trial %d failed: %s", index, result[FAILED_KEY])
            optimizer.fail(index, str(result[FAILED_KEY]))
        elif not result:
            optimizer.abandon(index, "stopped before it reported anything")
        elif result.get(FINAL_KEY) is not True:
            iteration = result.get("training_iteration")
            optimizer.abandon(
                index, f"stopped early (last report: iteration {iteration}); partial results are not final"
            )
            if not self._warned_partial:  # a trainable that forgets the flag loses every trial
                self._warned_partial = True
                logger.warning(
                    "Ax trial %d abandoned: its last report has no %r. Early-stopped trials end this "
                    "way; a trainable must send its final report as final_result(metrics).",
                    index,
                    FINAL_KEY,
                )
        else:
            # A metric's standard error, when the trial reports one (``accuracy_sem``), goes with it.
            metrics = {
                name: (result[name], result[f"{name}_sem"]) if f"{name}_sem" in result else result[name]
                for name in optimizer.metric_names
                if name in result
            }
            try:
                optimizer.complete(index, metrics)
            except (ValueError, TypeError) as problem:
                optimizer.fail(index, f"bad final report: {problem}")
        self._session_ended += 1
        self._write_snapshot()
        self._log_progress()

    # -------------------------------------------------------------------- inspect
    @property
    def optimizer(self) -> Optimizer:
        return self._optimizer

    @property
    def trial_indices(self) -> dict[str, int]:
        """Tune trial id → Ax trial index, for every trial handed out so far."""
        return {**self._ended, **self._live}

    # -------------------------------------------------------------------- persist
    def get_state(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "optimizer": self._optimizer.state(),
            "max_trials": self.max_trials,
            "snapshot_path": str(self.snapshot_path) if self.snapshot_path is not None else None,
            "max_concurrent": self._max_concurrent,
            "synchronous_from": self.synchronous_from,
            "queue": list(self._queue),
            "live": dict(self._live),
            "ended": dict(self._ended),
            "rerunning": sorted(self._rerunning),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"searcher state: version {state.get('version')!r}, expected {_STATE_VERSION}")
        self._optimizer = Optimizer.from_state(state["optimizer"])
        self.max_trials = int(state["max_trials"])
        self.snapshot_path = Path(state["snapshot_path"]) if state["snapshot_path"] is not None else None
        self._max_concurrent = state["max_concurrent"]
        self.synchronous_from = state.get("synchronous_from")  # None in states saved before it existed
        self._queue = [int(i) for i in state["queue"]]
        self._live = {str(k): int(v) for k, v in state["live"].items()}
        self._ended = {str(k): int(v) for k, v in state["ended"].items()}
        self._rerunning = set(state.get("rerunning", ()))
        self._waiting = False
        self._warned_partial = False
        self._session_started = time.time()
        self._session_ended = 0

    def save(self, checkpoint_path: str) -> None:
        """Called by Tune at each experiment checkpoint (it renames the file into place itself)."""
        Path(checkpoint_path).write_text(json.dumps(self.get_state()))

    def restore(self, checkpoint_path: str) -> None:
        """Called by ``Tuner.restore``: continue the Ax experiment from Tune's checkpoint, or from
        ``searcher.json`` where that ran ahead of it (see the module docstring)."""
        checkpoint = json.loads(Path(checkpoint_path).read_text())
        self.set_state(checkpoint)
        latest = self._latest_state()
        if latest is not None and _ran_ahead(latest, of=checkpoint):
            self.set_state(latest)
            known = set(checkpoint["live"]) | set(checkpoint["ended"])  # the Tune trials Tune restores
            orphans = sorted(index for trial_id, index in self._live.items() if trial_id not in known)
            self._live = {trial_id: index for trial_id, index in self._live.items() if trial_id in known}
            self._queue = orphans + self._queue
            self._rerunning |= {trial_id for trial_id in checkpoint["live"] if trial_id in self._ended}
            logger.info(
                "%s ran ahead of Tune's checkpoint: kept %d trial(s) that ended after it; %d running "
                "Ax trial(s) Tune never saw go back to the queue",
                LATEST_STATE,
                len(self._ended) - len(checkpoint["ended"]),
                len(orphans),
            )
        logger.info(
            "Restored the Ax experiment: %d of %d trials created, %d running, %d queued",
            self._optimizer.num_trials,
            self.max_trials,
            len(self._live) + len(self._rerunning),
            len(self._queue),
        )
        self._write_snapshot()  # experiment.json and searcher.json now match the restored state

    @classmethod
    def from_experiment_dir(cls, path: str | os.PathLike[str]) -> AxSearcher:
        """The searcher as Tune last checkpointed it in the experiment folder ``path``."""
        checkpoints = sorted(Path(path).glob(cls.CKPT_FILE_TMPL.format("*")))
        if not checkpoints:
            raise FileNotFoundError(
                f"{path}: no {cls.CKPT_FILE_TMPL.format('*')}; is it a Tune experiment folder?"
            )
        searcher = cls.__new__(cls)
        searcher.__setstate__(json.loads(checkpoints[-1].read_text()))  # newest session sorts last
        return searcher

    # Tune pickles the searcher into tuner.pkl when the Tuner is built: pickle the JSON state.
    def __getstate__(self) -> dict[str, Any]:
        return self.get_state()

    def __setstate__(self, state: dict[str, Any]) -> None:
        Searcher.__init__(self, metric=None, mode=None)
        self.set_state(state)

    def progress(self) -> dict[str, Any]:
        """The whole search as of now (not only this driver session): trials planned, created,
        done, failed, running and queued, the best feasible trial so far, this session's pace."""
        records = self._optimizer.trials()
        statuses = [record.status for record in records]
        done, failed = statuses.count("COMPLETED"), statuses.count("FAILED") + statuses.count("ABANDONED")
        finished = done + failed
        elapsed = time.time() - self._session_started
        remaining = max(0, self.max_trials - finished)
        rate = elapsed / self._session_ended if self._session_ended else None
        running = sorted(self._live.values()) + sorted(self._live_rerunning())
        return {
            "planned": self.max_trials,
            "created": len(records),
            "completed": done,
            "failed": failed,
            "running": running,
            "queued": list(self._queue),
            "best": self._best(),
            "session_started": self._session_started,
            "session_ended": self._session_ended,
            "session_elapsed_s": elapsed,
            "eta_s": None if rate is None else rate * remaining,
            "suggest_s": self._optimizer.timing().total_s,
            "updated": time.time(),
        }

    # -------------------------------------------------------------------- private
    def _synchronous_now(self) -> bool:
        return self.synchronous_from is not None and self._optimizer.num_trials >= self.synchronous_from

    def _live_rerunning(self) -> list[int]:
        return [self._ended[trial_id] for trial_id in self._rerunning if trial_id in self._ended]

    def _best(self) -> dict[str, Any] | None:
        """The best feasible trial by observed value (one objective), or the Pareto front's size."""
        try:
            if self._optimizer.multi_objective:
                front = self._optimizer.pareto_frontier()
                return {"front": [point.index for point in front]}
            best = self._optimizer.best()
        except NoFeasibleTrialError:
            return None
        return {"trial": best.index, "metrics": best.metrics}

    def _log_progress(self) -> None:
        state = self.progress()
        best = state["best"]
        shown = ""
        if best is not None and "front" in best:
            shown = f" · Pareto front: {len(best['front'])} trials"
        elif best is not None:
            (name,) = self._optimizer.objective_names
            shown = f" · best {name} {best['metrics'].get(name, float('nan')):.4f} (trial {best['trial']})"
        eta = state["eta_s"]
        logger.info(
            "trials %d/%d done, %d running, %d failed%s · %.0f s this session, ETA %s",
            state["completed"],
            state["planned"],
            len(state["running"]),
            state["failed"],
            shown,
            state["session_elapsed_s"],
            "?" if eta is None else f"{eta:.0f} s",
        )
        self._write_progress(state)

    def _write_progress(self, state: dict[str, Any] | None = None) -> None:
        """``progress.json`` beside the snapshot: what the dashboard and ``status`` show live."""
        if self.snapshot_path is None:
            return
        try:
            write_text_atomic(self.snapshot_path.with_name(PROGRESS), json.dumps(state or self.progress()))
        except OSError as problem:
            logger.error("Could not write %s: %s", PROGRESS, problem)

    def _write_snapshot(self) -> None:
        """Write ``experiment.json`` (plain Ax) and ``searcher.json`` (this whole state),
        atomically: when a trial is handed to Tune and when one ends (see ``restore``)."""
        if self.snapshot_path is None:
            return
        try:
            self._optimizer.snapshot(self.snapshot_path)
            write_text_atomic(self.snapshot_path.with_name(LATEST_STATE), json.dumps(self.get_state()))
        except (OSError, OptimizerStateError) as problem:  # never stop a search for a snapshot
            logger.error("Could not write the Ax snapshot %s: %s", self.snapshot_path, problem)

    def _latest_state(self) -> dict[str, Any] | None:
        path = None if self.snapshot_path is None else self.snapshot_path.with_name(LATEST_STATE)
        if path is None or not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as problem:  # written atomically, so only a foreign file
            logger.warning("Ignoring %s: %s", path, problem)
            return None


def _ran_ahead(latest: dict[str, Any], *, of: dict[str, Any]) -> bool:
    """Whether ``latest`` continues checkpoint ``of``: later, and the same trials before.

    ``searcher.json`` is written each time a trial is handed out and each time one ends, and both
    counts only grow, so (trials ended, trials handed out) ordered in turn says which state is
    later. A state from another search (another run directory's file) has other trial ids.
    """
    ended, before = latest["ended"], of["ended"]
    return (
        latest.get("version") == of.get("version")
        and latest["max_trials"] == of["max_trials"]
        and _events(latest) > _events(of)
        and all(ended.get(trial_id) == index for trial_id, index in before.items())
        and all(
            ended.get(trial_id, latest["live"].get(trial_id)) == index
            for trial_id, index in of["live"].items()
        )
    )


def _events(state: dict[str, Any]) -> tuple[int, int]:
    """(trials ended, trials handed to Tune) of a saved searcher state: both only grow in a run."""
    return len(state["ended"]), len(state["ended"]) + len(state["live"])
