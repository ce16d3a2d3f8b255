"""The Ray Tune trainable: one trial decodes its point onto the budget, builds and fine-tunes the
pruned model, measures it, saves it, and reports.

What every trial shares (the :class:`~vitprune.search.plan.Plan`: dense weights, scores, budget,
latency model, spec) is computed once by the driver and handed to the workers through Ray's object
store (``tune.with_parameters``), so no worker recomputes it and no worker needs the driver's disk.
Each worker process builds its :class:`TrialContext` (dense model and data) once and reuses it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from ray import tune

from vitprune.evaluators.data import load_data
from vitprune.evaluators.describe import create_dense
from vitprune.evaluators.finetune import EpochMetrics
from vitprune.evaluators.io import save_pruned
from vitprune.evaluators.measure import accuracy
from vitprune.evaluators.trial import TrialContext, evaluate_policy, shared_context
from vitprune.search.plan import Plan
from vitprune.search.report import TRIAL_KEY, failed_result, final_result
from vitprune.spaces.errors import one_line
from vitprune.spaces.files import write_text_atomic
from vitprune.spaces.space import decode

log = logging.getLogger(__name__)

# Metrics Ax sees: the objective, tracked costs (and the latency constraint).
REPORTED = ("accuracy", "macs", "params", "latency_ms")


def worker_context(plan: Plan) -> TrialContext:
    """The trial context of ``plan`` (dense model and data), built once per worker process."""

    def build() -> TrialContext:
        dense = create_dense(plan.base, device="meta")
        dense.load_state_dict(plan.dense_state, strict=True, assign=True)
        return TrialContext(
            dense=dense.eval(),
            base=plan.base,
            data=load_data(plan.spec.data, plan.base),
            dense_test_accuracy=plan.dense_test_accuracy,
        )

    return shared_context(("plan", plan.run.root, plan.spec.digest()), build)


def _finished_result(directory: Path, point: dict[str, float]) -> dict[str, Any] | None:
    """The metrics a finished run of this trial saved (``metrics.json`` is written last), if any."""
    try:
        saved = json.loads((directory / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    if saved.pop("point", None) != point:
        return None  # another search's trial in a reused folder: never mix them up
    saved.pop("trial", None)
    return saved


# Failures worth another attempt: the same trial may fit once memory is free. A node or worker
# that dies never reaches the trainable; Tune retries those too (trials.max_failures).
RETRIED = (torch.OutOfMemoryError, MemoryError)


def run_trial(config: dict[str, Any], plan: Plan) -> None:
    """Tune function trainable: ``config`` is the point (floats in [0, 1]) plus its Ax index.

    A deterministic failure (a NaN loss, a policy the model cannot take, a bad image) is reported
    as the trial's final result, with its type and message, so Tune does not run it again; out of
    memory is raised, and Tune retries it.
    """
    index = int(config[TRIAL_KEY])
    try:
        _run_trial(config, plan, index)
    except RETRIED:
        raise
    except Exception as error:
        reason = f"{type(error).__name__}: {one_line(error)}".rstrip(": ")
        log.warning("trial %d failed: %s", index, reason)
        write_text_atomic(plan.run.trial(index) / "error.txt", reason + "\n")
        tune.report(failed_result(reason))


def _run_trial(config: dict[str, Any], plan: Plan, index: int) -> None:
    spec = plan.spec
    torch.set_num_threads(max(1, int(spec.resources.cpu)))  # never more threads than cores granted
    point = {name: float(config[name]) for name in plan.parameters}
    directory = plan.run.trial(index)
    finished = _finished_result(directory, point)
    if finished is not None:  # resumed after the driver died: this trial had already finished
        log.info("trial %d finished before the resume: reporting its saved result", index)
        tune.report(final_result(finished))
        return
    context = worker_context(plan)
    started = time.perf_counter()
    fit = decode(
        point,
        space=plan.space,
        base=plan.base,
        scores=plan.scores,
        budget=plan.budget,
        measure=plan.measure(),
    )
    decode_seconds = time.perf_counter() - started

    on_epoch = None
    if spec.early_stopping.enabled:
        search_val = context.data.eval_loader("search-val")

        def on_epoch(metrics: EpochMetrics, model: torch.nn.Module) -> None:
            # Intermediate reports (no final flag) feed ASHA; Ax never sees them.
            score = accuracy(model, search_val, device=next(model.parameters()).device).top1
            tune.report(
                {"epoch": metrics.epoch, "search_val_accuracy": score, "train_loss": metrics.train_loss}
            )

    result = evaluate_policy(
        fit.policy,
        context,
        finetune_config=spec.finetune,
        latency_config=spec.budget.latency,
        # timed beside the dense model: concurrent trials slowed each other's timing by 6 % on
        # average, up to a third (BENCHMARKS.md, section 4)
        latency_reference_ms=plan.dense_cost if plan.budget.metric == "latency_ms" else None,
        device=spec.budget.device,
        on_epoch=on_epoch,
    )
    metrics: dict[str, Any] = {
        **{key: value for key, value in result.metrics.items() if isinstance(value, int | float)},
        "budget_cost": fit.cost,
        "budget_ratio": fit.cost / plan.budget.limit,
        "budget_scale": fit.scale,
        "budget_filled": fit.filled,
        "decode_seconds": decode_seconds,
        **{f"structure_{key}": value for key, value in fit.policy.summary().items()},
    }
    if fit.shortfall is not None:
        metrics["budget_shortfall"] = fit.shortfall
        log.warning("trial %d landed below the budget: %s", index, fit.shortfall)
    save_pruned(result.model.cpu(), fit.policy, directory)
    write_text_atomic(
        directory / "metrics.json", json.dumps({"trial": index, "point": point, **metrics}, indent=2)
    )
    tune.report(final_result(metrics))
