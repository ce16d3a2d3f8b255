"""GP-EI against random (Sobol) search on the embedded default, same number of trials, several
seeds: best search-val accuracy, the best policy's test accuracy, wall time and the optimiser's
share of it.

    python benchmarks/gp_vs_random.py                     # 3 seeds × {gp_ei, random}, search.yaml
    python benchmarks/gp_vs_random.py --seeds 5 --config search.yaml
    python benchmarks/gp_vs_random.py --budget-macs 25%   # a budget where the policy matters more

The dense model is trained once (cached) before the timed runs. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import tempfile
from pathlib import Path

from vitprune.evaluators.io import load_pruned
from vitprune.evaluators.measure import accuracy
from vitprune.evaluators.trial import cached_context
from vitprune.search.lifecycle import Search
from vitprune.search.spec import load_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="search.yaml")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=["gp_ei", "random"])
    parser.add_argument("--budget-macs", help='override the MACs budget, e.g. "25%"')
    args = parser.parse_args()

    spec, _ = load_spec(args.config)
    if args.budget_macs:
        spec = spec.model_copy(update={"budget": spec.budget.model_copy(update={"macs": args.budget_macs})})
    context = cached_context(spec.model, spec.data, spec.dense_training)  # train once, outside the timings
    test_loader = context.data.eval_loader("test")
    print(
        f"# {args.config}: {spec.trials.total} trials, {spec.trials.concurrent} at a time, budget "
        f"{spec.budget.metric} {getattr(spec.budget, spec.budget.metric)}; dense test accuracy "
        f"{context.dense_test_accuracy:.4f}; {datetime.date.today()}"
    )
    print("| method | seed | best search-val | its test accuracy | MACs ratio | wall s | suggest s (share) |")
    print("|---|---|---|---|---|---|---|")
    summary: dict[str, list[tuple[float, float]]] = {method: [] for method in args.methods}
    with tempfile.TemporaryDirectory() as scratch:
        for seed in range(args.seeds):
            for method in args.methods:
                run_spec = spec.model_copy(
                    update={"seed": seed, "generation": spec.generation.model_copy(update={"method": method})}
                )
                run_dir = Path(scratch) / f"{method}-{seed}"
                outcome = Search(run_spec, run_dir=run_dir, progress=lambda line: None).run()
                best = json.loads((run_dir / "best_policy.json").read_text())
                model, _ = load_pruned(run_dir / "best_model")
                test = accuracy(model, test_loader).top1
                summary[method].append((best["metrics"]["accuracy"], test))
                print(
                    f"| {method} | {seed} | {best['metrics']['accuracy']:.4f} | {test:.4f} | "
                    f"{best['ratios']['macs']:.3f} | {outcome.wall_s:.0f} | {outcome.suggest_s:.1f} "
                    f"({outcome.suggest_s / outcome.wall_s:.1%}) |",
                    flush=True,
                )
    for method, results in summary.items():
        val = [v for v, _ in results]
        test = [t for _, t in results]
        spread = statistics.stdev(val) if len(val) > 1 else 0.0
        print(
            f"# {method}: best search-val {statistics.mean(val):.4f} ± {spread:.4f}, "
            f"test {statistics.mean(test):.4f} (mean over {len(results)} seeds)"
        )


if __name__ == "__main__":
    main()
