"""Progress of a running search, as log lines: trials done / running / failed, best so far, ETA.

A Tune callback, so Tune pickles it with the run and restores it on ``--resume``; it logs to the
``vitprune.search`` logger, which the CLI renders on the console.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ray.tune import Callback

from vitprune.search.report import FINAL_KEY

log = logging.getLogger("vitprune.search")


class ProgressCallback(Callback):
    """Logs one line whenever a trial ends.

    Args:
        total: trials planned.
        concurrent: trials run at once (for the ETA).
        feasible_latency_ms: for latency budgets, the limit a trial's measured latency must meet
            to count as best so far (Ax makes the final choice).
    """

    def __init__(self, *, total: int, concurrent: int, feasible_latency_ms: float | None = None) -> None:
        self.total = total
        self.concurrent = concurrent
        self.feasible_latency_ms = feasible_latency_ms
        self.started = time.monotonic()
        self.completed = 0
        self.failed = 0
        self.best: tuple[float, str, dict[str, Any]] | None = None

    def __setstate__(self, state: dict[str, Any]) -> None:  # a resumed run restarts the clock
        self.__dict__.update(state)
        self.started = time.monotonic()

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        self.completed += 1
        if result.get(FINAL_KEY) is True and self._feasible(result):
            accuracy = float(result.get("accuracy", float("nan")))
            if self.best is None or accuracy > self.best[0]:
                self.best = (accuracy, trial.trial_id, result)
        self._log(trials, ended=trial)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.failed += 1
        self._log(trials, ended=trial)

    def _feasible(self, result: dict[str, Any]) -> bool:
        return (
            self.feasible_latency_ms is None
            or result.get("latency_ms", float("inf")) <= self.feasible_latency_ms
        )

    def _log(self, trials: list[Any], *, ended: Any) -> None:
        # Tune still lists the trial that just ended as running when it calls back.
        running = sum(trial.status == "RUNNING" and trial is not ended for trial in trials)
        done, failed = self.completed, self.failed
        finished = done + failed
        elapsed = time.monotonic() - self.started
        remaining = max(0, self.total - finished)
        eta = elapsed / finished * remaining if finished else float("nan")
        best = ""
        if self.best is not None:
            accuracy, _, result = self.best
            best = f" · best accuracy {accuracy:.4f} (MACs {result.get('macs', 0) / 1e6:.2f} M)"
        log.info(
            "trials %d/%d done, %d running, %d failed%s · %.0f s elapsed, ETA %s",
            done,
            self.total,
            running,
            failed,
            best,
            elapsed,
            f"{eta:.0f} s" if eta == eta else "?",
        )
