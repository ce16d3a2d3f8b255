"""Where a latency-budget search's trials land on *measured* latency.

A trial is projected onto the budget with the latency model, fine-tuned, and timed in its Ray
worker while other trials train; Ax judges it feasible on that time. This script times every
completed trial's saved model again, side by side with the search's dense model in interleaved
rounds, and scales each ratio to the dense latency the plan measured. Per trial: the latency the
model predicted (where the projection put it), the one timed in the trial, and the one timed
here; then how many of each are within the limit, and the model's error near the budget.

    python benchmarks/latency_landing.py RUN_DIR [--repeats 20] [--threads 1]

Prints Markdown. A directory that is not a latency-budget search with completed trials is one
line and status 2. No timing here is asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from vitprune import load_pruned
from vitprune.evaluators.measure import latency_side_by_side
from vitprune.search.rundir import RunDir
from vitprune.search.spec import SearchSpec


def _completed(run: RunDir) -> dict[int, dict[str, Any]]:
    """Trial index → its ``metrics.json``, for every trial that finished (wrote its model)."""
    found = {}
    for folder in sorted((run.root / "trials").glob("[0-9][0-9][0-9][0-9]")):
        metrics = run.trial_metrics(int(folder.name))
        if metrics is not None and "latency_ms" in metrics and "budget_cost" in metrics:
            found[int(folder.name)] = metrics
    return found


def _problem(run: RunDir) -> str | None:
    try:
        plan = json.loads(run.plan.read_text())
    except (OSError, ValueError):
        return "holds no prepared search (no readable plan.json)"
    if plan.get("budget", {}).get("metric") != "latency_ms":
        return f"its budget is {plan.get('budget', {}).get('metric')!r}, not latency_ms"
    if not _completed(run):
        return "holds no completed trial"
    return None


def landing(run: RunDir, *, repeats: int) -> list[dict[str, Any]]:
    """One row per completed trial: modelled, in-trial and re-measured latency (ms)."""
    plan = json.loads(run.plan.read_text())
    spec = SearchSpec.model_validate(plan["spec"])
    trials = _completed(run)
    models = {"dense": load_pruned(run.dense)[0]}
    models |= {f"{index:04d}": load_pruned(run.trial(index))[0] for index in trials}
    times = latency_side_by_side(
        models,
        batch_size=spec.budget.batch_size,
        device="cpu",
        dtype=getattr(torch, spec.budget.dtype),
        warmup=3,
        repeats=repeats,
    )
    scale = plan["dense_cost"] / times["dense"].median_ms
    return [
        {
            "trial": index,
            "modelled_ms": metrics["budget_cost"],
            "in_trial_ms": metrics["latency_ms"],
            "again_ms": times[f"{index:04d}"].median_ms * scale,
        }
        for index, metrics in trials.items()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--repeats", type=int, default=20, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a trial's resources.cpu)")
    args = parser.parse_args(argv)
    run = RunDir(args.run_dir)
    problem = _problem(run)
    if problem:
        print(f"latency_landing: error: {args.run_dir}: {problem}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    limit = json.loads(run.plan.read_text())["budget"]["limit"]
    rows = landing(run, repeats=args.repeats)
    print(f"budget: latency_ms <= {limit:.3f} ms (CPU; re-measured with {args.threads} thread(s))\n")
    print("| trial | modelled ms | timed in the trial ms | timed again ms | model error |")
    print("|---|---|---|---|---|")
    errors = []
    for row in rows:
        error = row["modelled_ms"] / row["again_ms"] - 1
        errors.append(abs(error))
        cells = (row["trial"], row["modelled_ms"], row["in_trial_ms"], row["again_ms"])
        print(f"| {cells[0]} | {cells[1]:.3f} | {cells[2]:.3f} | {cells[3]:.3f} | {error:+.1%} |")
    within = {key: sum(row[key] <= limit for row in rows) for key in ("in_trial_ms", "again_ms")}
    drift = statistics.fmean(row["in_trial_ms"] / row["again_ms"] - 1 for row in rows)
    print(
        f"\n{len(rows)} trials; within the limit: {within['in_trial_ms']} as timed in the trial, "
        f"{within['again_ms']} timed again; model error near the budget mean {statistics.fmean(errors):.1%}, "
        f"max {max(errors):.1%}; in-trial time against timed again {drift:+.1%} on average"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
