"""The final choice of a search: the best few trials fine-tuned again, the best chosen by the mean.

Each trial is one short fine-tune scored on search-val, and that score is noisy: on the embedded
task one fine-tune seed moves test accuracy by about 0.5 %, as much as the gap between the policies
near the top (BENCHMARKS.md, sections 7 and 8). Picking the single highest score can pick a lucky
fine-tune over a better policy. With ``selection.finalists: K`` and ``selection.seeds: S``
(off in the schema, ``seeds: 0``; on in ``search.yaml``: on digits it never changed the choice,
on Fashion-MNIST at 50 % of MACs it chose a policy 0.34 test points better; BENCHMARKS.md),
the K best feasible trials (Ax's best first) are fine-tuned S more times from the dense weights,
with fine-tune seeds ``finetune.seed + 1 … + S``, and the finalist with the highest mean search-val
accuracy over its 1 + S fine-tunes is the search's best; ties go to the better single score.

The fine-tunes run as Ray tasks with a trial's resources, ``trials.concurrent`` at a time. Each
result is written to ``trials/NNNN/selection/seed-S.json`` as it arrives, so a resumed search
repeats none. The best trial's own model (its first fine-tune) is what ``best_model/`` holds; the
scores of every finalist go to ``best_policy.json`` under ``selection``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

from vitprune.search.monitor import Monitor
from vitprune.search.plan import Plan
from vitprune.spaces.errors import one_line
from vitprune.spaces.files import write_text_atomic

log = logging.getLogger("vitprune.search")


@dataclass(frozen=True)
class Finalist:
    """A trial fine-tuned again: its search-val accuracy per fine-tune seed (its own seed first)."""

    trial: int
    accuracies: dict[int, float]

    @property
    def mean(self) -> float:
        return fmean(self.accuracies.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial": self.trial,
            "mean_accuracy": self.mean,
            "accuracies": {str(seed): value for seed, value in self.accuracies.items()},
        }


def enabled(plan: Plan) -> bool:
    return plan.spec.selection.on and not plan.spec.pareto


def finalists(rows: Sequence[dict[str, Any]], *, best: int, count: int, plan: Plan) -> list[int]:
    """Ax's best trial, then the next best feasible completed trials by observed accuracy."""
    limit = plan.budget.limit if plan.budget.metric == "latency_ms" else None
    feasible = [
        row
        for row in rows
        if row["status"] == "COMPLETED"
        and row.get("accuracy") is not None
        and (limit is None or float(row["latency_ms"]) <= limit)
    ]
    ranked = sorted(feasible, key=lambda row: (-float(row["accuracy"]), int(row["trial"])))
    others = [int(row["trial"]) for row in ranked if int(row["trial"]) != best]
    return [best, *others][:count]


def choose(candidates: Sequence[Finalist]) -> Finalist:
    """The finalist with the highest mean; ties to the higher first score, then the earlier trial."""
    first = {c.trial: next(iter(c.accuracies.values())) for c in candidates}
    return max(candidates, key=lambda c: (round(c.mean, 12), first[c.trial], -c.trial))


def refit(plan: Plan, trial: int, seed: int) -> float:
    """Search-val accuracy of ``trial``'s policy fine-tuned from the dense weights with ``seed``."""
    import torch

    from vitprune.evaluators.trial import evaluate_policy
    from vitprune.search.trainable import worker_context
    from vitprune.spaces import Policy

    spec = plan.spec
    torch.set_num_threads(max(1, int(spec.resources.cpu)))
    policy = Policy.from_json((plan.run.trial(trial) / "policy.json").read_text())
    result = evaluate_policy(
        policy,
        worker_context(plan),
        finetune_config=spec.finetune.model_copy(update={"seed": seed}),
        device=spec.budget.device,
    )
    return float(result.metrics["accuracy"])


def select(
    plan: Plan,
    rows: Sequence[dict[str, Any]],
    *,
    best: int,
    monitor: Monitor | None = None,
) -> tuple[Finalist, list[Finalist]]:
    """Fine-tune the finalists again (on Ray, or reusing saved results) and choose among them.

    Returns:
        The chosen finalist and every finalist, in the order of their first scores.
    """
    spec = plan.spec
    trials = finalists(rows, best=best, count=spec.selection.finalists, plan=plan)
    own = {int(row["trial"]): float(row["accuracy"]) for row in rows if int(row["trial"]) in trials}
    seeds = [spec.finetune.seed + k for k in range(1, spec.selection.seeds + 1)]
    done: dict[tuple[int, int], float | None] = {}
    for trial in trials:
        for seed in seeds:
            saved = _saved(plan.run.refit(trial, seed), plan, trial)
            if saved is not None:
                done[trial, seed] = saved
    todo = [(trial, seed) for trial in trials for seed in seeds if (trial, seed) not in done]
    if monitor is not None:
        monitor.phase("selection", total=len(trials) * len(seeds), unit="fine-tunes")
        monitor.advance(len(done))
    log.info(
        "selection: trials %s fine-tuned %d more times each (%d saved from before)",
        ", ".join(map(str, trials)),
        len(seeds),
        len(done),
    )
    for (trial, seed), value in _run(plan, todo):
        done[trial, seed] = value
        if value is not None:
            write_text_atomic(
                plan.run.refit(trial, seed),
                json.dumps({"trial": trial, "seed": seed, "point": _point(plan, trial), "accuracy": value}),
            )
        if monitor is not None:
            monitor.advance(len(done))
    candidates = [
        Finalist(
            trial,
            {
                spec.finetune.seed: own[trial],
                **{s: done[trial, s] for s in seeds if done.get((trial, s)) is not None},
            },
        )
        for trial in trials
    ]
    chosen = choose(candidates)
    log.info(
        "selection: trial %d, mean search-val accuracy %.4f over %d fine-tunes (%s)",
        chosen.trial,
        chosen.mean,
        len(chosen.accuracies),
        "; ".join(f"trial {c.trial}: {c.mean:.4f}" for c in candidates),
    )
    return chosen, candidates


def _run(plan: Plan, todo: list[tuple[int, int]]) -> Iterator[tuple[tuple[int, int], float | None]]:
    """Yield ``((trial, seed), accuracy or None)`` as the fine-tunes end, ``trials.concurrent`` at
    a time; a fine-tune that raises is logged and left out of its finalist's mean."""
    if not todo:
        return
    import ray

    resources = plan.spec.resources
    retries = plan.spec.trials.max_failures
    task = ray.remote(num_cpus=resources.cpu, num_gpus=resources.gpu, max_retries=retries)(refit)
    shared = ray.put(plan)
    waiting, running = list(todo), {}
    while waiting or running:
        while waiting and len(running) < plan.spec.trials.concurrent:
            trial, seed = waiting.pop(0)
            running[task.remote(shared, trial, seed)] = (trial, seed)
        (ready,), _ = ray.wait(list(running), num_returns=1)
        key = running.pop(ready)
        value: float | None = None
        try:
            value = float(ray.get(ready))
        except Exception as error:  # one failed fine-tune must not lose the others
            cause = getattr(error, "cause", None) or error
            log.warning("selection: trial %d, seed %d failed: %s", *key, one_line(cause))
        yield key, value


def _point(plan: Plan, trial: int) -> dict[str, float] | None:
    return (plan.run.trial_metrics(trial) or {}).get("point")


def _saved(path: Path, plan: Plan, trial: int) -> float | None:
    """A fine-tune saved before a resume, if it belongs to this trial's point."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return float(saved["accuracy"]) if saved.get("point") == _point(plan, trial) else None
