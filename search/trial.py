"""The Ray Tune trainable: one trial decodes its point onto the budget, builds and fine-tunes the
pruned model, measures it, saves it, and reports.

What every trial shares (the dense weights, the criteria scores, the latency model, the spec) is
computed once by the driver and handed to the workers through Ray's object store
(``tune.with_parameters``), so no worker recomputes it and no worker needs the driver's disk.
Each worker process builds its :class:`TrialContext` once and reuses it for later trials.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ray import tune

from vitprune.evaluators.data import load_data
from vitprune.evaluators.describe import create_dense
from vitprune.evaluators.finetune import EpochMetrics
from vitprune.evaluators.io import save_pruned
from vitprune.evaluators.latency_model import LatencyModel
from vitprune.evaluators.measure import accuracy
from vitprune.evaluators.trial import TrialContext, evaluate_policy
from vitprune.search.config import SearchSpec
from vitprune.search.report import TRIAL_KEY, final_result
from vitprune.spaces import Policy, Scores, macs, params
from vitprune.spaces.files import write_text_atomic
from vitprune.spaces.space import Budget, decode

log = logging.getLogger(__name__)

# Metrics Ax sees: the objective, tracked costs (and the latency constraint).
REPORTED = ("accuracy", "macs", "params", "latency_ms")


@dataclass(frozen=True)
class Shared:
    """What the driver computes once and every trial reads (through Ray's object store)."""

    run_dir: str
    spec_json: str
    dense_policy_json: str
    dense_state: dict[str, torch.Tensor]
    dense_test_accuracy: float
    scores_json: str
    budget_metric: str
    budget_limit: float
    latency_model_json: str | None
    parameters: tuple[str, ...]

    @property
    def spec(self) -> SearchSpec:
        return SearchSpec.model_validate_json(self.spec_json)

    def measure(self) -> Any:
        """The cost function of the budget's metric (the latency model for latency budgets)."""
        if self.budget_metric == "latency_ms":
            return LatencyModel.from_json(self.latency_model_json)
        return {"macs": macs, "params": params}[self.budget_metric]


_CONTEXTS: dict[str, TrialContext] = {}


def worker_context(shared: Shared) -> TrialContext:
    """The trial context of ``shared``, built once per worker process."""
    key = f"{shared.run_dir}|{hash(shared.spec_json)}"
    if key not in _CONTEXTS:
        base = Policy.from_json(shared.dense_policy_json).base
        dense = create_dense(base, device="meta")
        dense.load_state_dict(shared.dense_state, strict=True, assign=True)
        data = load_data(shared.spec.data, base)
        _CONTEXTS[key] = TrialContext(
            dense=dense.eval(), base=base, data=data, dense_test_accuracy=shared.dense_test_accuracy
        )
    return _CONTEXTS[key]


def trial_dir(run_dir: str | Path, index: int) -> Path:
    return Path(run_dir) / "trials" / f"{index:04d}"


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


def run_trial(config: dict[str, Any], shared: Shared) -> None:
    """Tune function trainable: ``config`` is the point (floats in [0, 1]) plus its Ax index."""
    spec = shared.spec
    torch.set_num_threads(max(1, int(spec.resources.cpu)))  # never more threads than cores granted
    index = int(config[TRIAL_KEY])
    point = {name: float(config[name]) for name in shared.parameters}
    finished = _finished_result(trial_dir(shared.run_dir, index), point)
    if finished is not None:  # resumed after the driver died: this trial had already finished
        log.info("trial %d finished before the resume: reporting its saved result", index)
        tune.report(final_result(finished))
        return
    context = worker_context(shared)
    space = spec.space.build(context.base.depth)
    scores = Scores.from_json(shared.scores_json)
    measure = shared.measure()
    started = time.perf_counter()
    fit = decode(
        point,
        space=space,
        base=context.base,
        scores=scores,
        budget=Budget(shared.budget_metric, shared.budget_limit),
        measure=measure,
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
        device=spec.budget.device,
        on_epoch=on_epoch,
    )
    metrics = {
        **{key: value for key, value in result.metrics.items() if isinstance(value, int | float)},
        "budget_cost": fit.cost,
        "budget_scale": fit.scale,
        "decode_seconds": decode_seconds,
        **{f"structure_{key}": value for key, value in fit.policy.summary().items()},
    }
    directory = trial_dir(shared.run_dir, index)
    save_pruned(result.model.cpu(), fit.policy, directory)
    write_text_atomic(
        directory / "metrics.json", json.dumps({"trial": index, "point": point, **metrics}, indent=2)
    )
    tune.report(final_result(metrics))
