"""What a trial reports, kept free of Ax and torch imports: Tune's workers import this module.

A trainable's last report must say that it is final, because Tune marks a result ``done`` both
when the trainable returns and when a scheduler (ASHA) or a stopper cuts it short. Only final
results become observations in Ax; a trial cut short is abandoned (see ``AxSearcher``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from ray import tune

FINAL_KEY = "vitprune_final"
"""Result key that marks a trial's final report; see ``final_result``."""

FAILED_KEY = "vitprune_failed"
"""Result key of a final report that says the trial failed, and why; see ``failed_result``."""

TRIAL_KEY = "vitprune_trial"
"""Config key holding the trial's Ax index (next to the point's parameters), for its artefacts."""

Evaluate = Callable[[dict[str, float]], Mapping[str, float] | None]


def final_result(metrics: Mapping[str, float]) -> dict[str, Any]:
    """The last report of a trial: its metrics plus ``FINAL_KEY: True``.

    Example:
        >>> tune.report(final_result({"accuracy": 0.81, "macs": 1.2e9, "latency_ms": 11.0}))
    """
    return {**metrics, FINAL_KEY: True}


def failed_result(reason: str) -> dict[str, Any]:
    """The last report of a trial that failed deterministically (a NaN loss, a bad input): the
    searcher marks it FAILED with ``reason`` and Tune does not retry it, as it would an exception.

    Example:
        >>> tune.report(failed_result("TrainingDiverged: loss is nan at step 12"))
    """
    return {FAILED_KEY: reason, FINAL_KEY: True}


def as_trainable(evaluate: Evaluate) -> Callable[[dict[str, Any]], None]:
    """A Tune function trainable that runs ``evaluate`` on the trial's point.

    ``evaluate(point)`` either returns the final metrics, which are reported with
    ``final_result``, or returns ``None`` after reporting with ``tune.report`` itself (the last
    report wrapped in ``final_result``). An exception marks the trial failed (after retries).
    The trainable keeps ``evaluate``'s name, which ``Tuner.restore`` checks.
    """

    @functools.wraps(evaluate)
    def trainable(config: dict[str, Any]) -> None:
        metrics = evaluate({name: value for name, value in config.items() if name != TRIAL_KEY})
        if metrics is not None:
            tune.report(final_result(metrics))

    return trainable
