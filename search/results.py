"""What a finished search leaves: ``trials.csv``, then the best feasible trial with its model (one
objective; chosen among finalists fine-tuned again when ``selection`` is on) or the feasible Pareto
front with its models (several objectives). Rewritten whole, atomically, by every ``finish``."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from vitprune.search import selection
from vitprune.search.monitor import Monitor
from vitprune.search.plan import Plan, provenance
from vitprune.search.rundir import RunDir
from vitprune.spaces import Policy, macs, params
from vitprune.spaces.files import write_text_atomic

log = logging.getLogger("vitprune.search")


def finalize(
    run: RunDir, optimizer: Any, plan: Plan, *, monitor: Monitor | None = None
) -> tuple[dict[str, Any] | None, list[dict[str, Any]] | None, int]:
    """Write ``trials.csv``, then the best feasible trial (``best_policy.json``, ``best_model/``),
    chosen among the finalists fine-tuned again when ``selection`` is on, or, for a Pareto
    objective, the feasible front (``pareto_front.json``, ``pareto_front/NNNN/``)."""
    from vitprune.search.records import NoFeasibleTrialError
    from vitprune.search.tables import write_trials_csv

    rows = write_trials_csv(run, optimizer.trials(), dense=plan.dense_policy)
    _log_landing(rows)
    completed = sum(row["status"] == "COMPLETED" for row in rows)
    try:
        chosen = optimizer.pareto_frontier() if optimizer.multi_objective else [optimizer.best()]
    except NoFeasibleTrialError:
        return None, ([] if optimizer.multi_objective else None), completed
    documents = [trial_document(run, point.index, plan) for point in chosen]
    if optimizer.multi_objective:
        front = {
            "format": "vitprune.pareto/1",
            "objectives": ["accuracy", "-latency_ms"],
            "trials": documents,
            "provenance": provenance(plan),
        }
        write_text_atomic(run.pareto_front, json.dumps(front, indent=2))
        _replace_tree(run.pareto_models, {f"{d['trial']:04d}": run.trial(d["trial"]) for d in documents})
        return None, documents, completed
    (best,) = documents
    if selection.enabled(plan):
        picked, finalists = selection.select(plan, rows, best=best["trial"], monitor=monitor)
        best = trial_document(run, picked.trial, plan) | {
            "selection": {
                "chosen_by": f"mean search-val accuracy over {1 + plan.spec.selection.seeds} fine-tunes",
                "finalists": [finalist.to_dict() for finalist in finalists],
            }
        }
    write_text_atomic(
        run.best_policy,
        json.dumps({"format": "vitprune.best/1", **best, "provenance": provenance(plan)}, indent=2),
    )
    _replace_tree(run.best_model, run.trial(best["trial"]))
    return best, None, completed


def trial_document(run: RunDir, index: int, plan: Plan) -> dict[str, Any]:
    """A finished trial as results report it: metrics, ratios to dense, structure, policy."""
    source = run.trial(index)
    policy = Policy.from_json((source / "policy.json").read_text())
    metrics = json.loads((source / "metrics.json").read_text())
    dense = plan.dense_policy
    ratios = {"macs": macs(policy) / macs(dense), "params": params(policy) / params(dense)}
    if plan.budget.metric == "latency_ms":
        ratios["latency_ms"] = metrics["latency_ms"] / plan.dense_cost
    return {
        "trial": index,
        "metrics": metrics,
        "ratios": ratios,
        "structure": policy.summary(),
        "policy": policy.to_dict(),
    }


def _replace_tree(target: Path, sources: Path | dict[str, Path]) -> None:
    """Copy ``sources`` (one folder, or name → folder) to ``target``, replacing it atomically."""
    staging = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    if isinstance(sources, Path):
        shutil.copytree(sources, staging)
    else:
        staging.mkdir()
        for name, source in sources.items():
            shutil.copytree(source, staging / name)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def _log_landing(rows: list[dict[str, Any]]) -> None:
    ratios = sorted(row["budget_ratio"] for row in rows if row.get("budget_ratio") is not None)
    if not ratios:
        return
    short = [row for row in rows if row.get("budget_shortfall")]
    log.info(
        "budget landing over %d trials: cost/budget min %.3f, median %.3f, max %.3f; %d below 99 %%%s",
        len(ratios),
        ratios[0],
        ratios[len(ratios) // 2],
        ratios[-1],
        len(short),
        f" (trials {', '.join(str(row['trial']) for row in short)}: see budget_shortfall in trials.csv)"
        if short
        else "",
    )
