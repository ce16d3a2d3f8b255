"""What Tune knows about failures and nothing else does: a Tune callback that makes them visible.

A trial that raised an infrastructure error (its worker or node died, it ran out of memory) is
retried by Tune (``trials.max_failures``); deterministic failures never reach here, the trainable
reports them itself (``failed_result``) so they are not retried. This callback logs each retry
and each final failure with the exception's type and message, and writes the message to the
trial's ``error.txt``, which ``trials.csv`` shows as the reason.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
from typing import Any

from ray import cloudpickle
from ray.tune import Callback

from vitprune.search.report import TRIAL_KEY
from vitprune.search.rundir import RunDir
from vitprune.spaces.errors import one_line
from vitprune.spaces.files import write_text_atomic

log = logging.getLogger("vitprune.search")


class TrialEvents(Callback):
    """Logs retries and failures of trials (Tune pickles it with the run and restores it on
    ``--resume``)."""

    def __init__(self, run: RunDir) -> None:
        self.run = run

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        log.warning(
            "trial %s failed and is retried (failure %d of %d allowed): %s",
            _index(trial),
            trial.num_failures,
            trial.max_failures,
            error_line(trial),
        )

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        reason = error_line(trial)
        index = _index(trial)
        log.warning("trial %s failed: %s", index, reason)
        if isinstance(index, int):
            write_text_atomic(self.run.trial(index) / "error.txt", reason + "\n")


def error_line(trial: Any) -> str:
    """``Type: message`` of the exception a Tune trial raised, from the error Tune just recorded
    in the trial's local folder (its storage copy is synced later)."""
    error = None
    with (
        contextlib.suppress(OSError, TypeError, EOFError, pickle.UnpicklingError),
        open(trial.pickled_error_file, "rb") as handle,
    ):
        error = cloudpickle.load(handle)
    if error is None:
        return "failed (no error recorded)"
    cause = getattr(error, "cause", None) or error  # RayTaskError wraps the trainable's exception
    return f"{type(cause).__name__}: {one_line(cause)}".rstrip(": ")


def _index(trial: Any) -> int | str:
    try:
        return int(trial.config[TRIAL_KEY])
    except (KeyError, TypeError, ValueError):
        return trial.trial_id
