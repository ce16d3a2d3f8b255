"""Does the search beat random search and the uniform policy on *test*? (issues 5 and 13)

Per search seed, on ``search.yaml``'s spec at ``--budget-macs``, the same number of trials each:

- ``gp_ei``: the search as shipped (the start trials, then Sobol, then GP-EI, then the selection
  among finalists);
- ``random``: Sobol points only (``generation.method: random``, no start trials);
- ``uniform``: no search: the uniform policy of every enabled dimension (what trial 0 decodes to).

A search picks its best trial by search-val accuracy; that trial's own model is what ``export``
hands back, and its test accuracy is one fine-tune's. To compare *policies* rather than fine-tune
luck, each best policy (and the uniform one) is also fine-tuned again from the dense weights with
the race's recipe (``benchmarks/peers_recipe.py``: the spec's fine-tune, seeds 100, 101, …,
which no trial uses) and its test accuracy averaged over ``--recipe-seeds``.

    python benchmarks/gp_vs_random.py --budget-macs 25% --out gp.json   # 3 seeds, about 10 min
    python benchmarks/gp_vs_random.py --seeds 5 --methods gp_ei random
    python benchmarks/gp_vs_random.py --search-val-fraction 0.15        # the old, smaller split
    python benchmarks/gp_vs_random.py --test-seed 1 --out gp-t1.json     # other test images

Each refit keeps its per-image test results, so ``benchmarks/race_paired.py`` can set the methods
against one another on the same images, pooled over reports of several ``--test-seed``.

The dense model is trained once (cached) before the timed runs. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from peers_recipe import finetune_and_measure, mean_sd
from peers_setup import log, report_header, write_report
from peers_vitprune import criteria_scores, policy_record, run_search, trial_model_test, uniform_policy

from vitprune.argtypes import whole_number
from vitprune.evaluators.surgery import apply_policy
from vitprune.evaluators.trial import cached_context
from vitprune.search.spec import SearchSpec, load_spec
from vitprune.spaces import Policy, macs

METHODS = ("gp_ei", "random", "uniform")
RECIPE_SEED0 = 100  # trials fine-tune with the search seed; the recipe's seeds are others


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--config", default="search.yaml")
    add("--seeds", type=int, default=3, help="search seeds (0, 1, ...)")
    add("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    add("--budget-macs", help='override the MACs budget, e.g. "25%%"')
    add("--trials", type=int, help="trials per search (default: the config's)")
    add("--recipe-seeds", type=int, default=3, help="fine-tunes of each best policy (0: none)")
    add("--search-val-fraction", type=float, help="override data.search_val_fraction")
    add(
        "--test-seed",
        type=whole_number(low=0),
        default=0,
        help="digits: which stratified 20 %% is test (data.test_seed)",
    )
    add("--keep", type=Path, help="keep the run directories here (default: a temporary folder)")
    add("--out", type=Path, help="write every figure as JSON")
    add("--resume", action="store_true", help="keep the rows already in --out; run only the missing seeds")
    return parser.parse_args(argv)


def configured(args: argparse.Namespace) -> SearchSpec:
    spec, _ = load_spec(args.config)
    update: dict[str, Any] = {}
    if args.budget_macs:
        update["budget"] = spec.budget.model_copy(update={"macs": args.budget_macs})
    data = {"test_seed": args.test_seed}
    if args.search_val_fraction:
        data["search_val_fraction"] = args.search_val_fraction
    update["data"] = spec.data.model_copy(update=data)
    return spec.model_copy(update=update)


class Comparison:
    def __init__(self, spec: SearchSpec, args: argparse.Namespace, report: dict[str, Any]) -> None:
        self.spec, self.args, self.report = spec, args, report
        self.context = cached_context(spec.model, spec.data, spec.dense_training)
        self.rows: list[dict[str, Any]] = report.setdefault("rows", [])
        self.dense_macs = macs(self.context.dense_policy)
        self.fraction = spec.budget.limit(self.dense_macs) / self.dense_macs

    def recipe_test(self, policy: Policy) -> dict[str, Any]:
        """The policy fine-tuned from the dense weights once per recipe seed: test accuracy."""
        model = apply_policy(self.context.dense, policy)
        seeds = range(RECIPE_SEED0, RECIPE_SEED0 + self.args.recipe_seeds)
        configs = [self.spec.finetune.model_copy(update={"seed": seed}) for seed in seeds]
        runs = [finetune_and_measure(model, self.context, config) for config in configs]
        tests = [run["test"]["accuracy"] for run in runs]
        correct = [run["test"]["correct"] for run in runs]
        return mean_sd(tests) | {"runs": tests, "correct": correct} if tests else {}

    def search(self, method: str, seed: int, root: Path) -> dict[str, Any]:
        generation = self.spec.generation.model_copy(
            update={
                "method": method,
                "uniform_start": method == "gp_ei",
                "single_dimension_starts": method == "gp_ei",
            }
        )
        spec = self.spec.model_copy(update={"seed": seed, "generation": generation})
        found = run_search(
            spec,
            fraction=self.fraction,
            trials=self.args.trials or spec.trials.total,
            run_dir=root / f"{method}-{seed}",
            progress=lambda line: None,
        )
        record = found["record"]
        row = {
            "search_val": record["trial_search_val"],
            "best_trial": record["best_trial"],
            "trial_test": trial_model_test(found["trial_model"], self.context),
            "wall_s": record["wall_s"],
            "suggest_s": record["suggest_s"],
            "policy": found["policy"],
        }
        selection = record.get("selection")
        if selection:  # what the search would have returned without it: Ax's best, the first finalist
            first = selection["finalists"][0]["trial"]
            row["selection"] = selection
            if first != record["best_trial"]:
                trial = Path(record["run_dir"]) / "trials" / f"{first:04d}"
                policy = Policy.from_json((trial / "policy.json").read_text())
                row["without_selection"] = {"trial": first, "recipe_test": self.recipe_test(policy)}
        return row

    def uniform(self) -> dict[str, Any]:
        dimensions = list(self.spec.space.dimensions)
        scores = criteria_scores(self.spec, self.context, dimensions)
        limit = self.fraction * self.dense_macs
        fit = uniform_policy(self.context.base, scores, budget_macs=limit, dimensions=dimensions)
        return {"policy": fit.policy}

    def run(self, root: Path) -> None:
        uniform: dict[str, Any] | None = None
        done = {(row["method"], row["seed"]) for row in self.rows}
        for seed in range(self.args.seeds):
            for method in self.args.methods:
                if (method, seed) in done:
                    continue
                if method == "uniform":
                    if uniform is None:  # one policy, whatever the seed: measured once
                        uniform = self.uniform()
                        uniform["recipe_test"] = self.recipe_test(uniform["policy"])
                    row = dict(uniform)
                else:
                    row = self.search(method, seed, root)
                    row["recipe_test"] = self.recipe_test(row["policy"])
                policy = row.pop("policy")
                row |= {"method": method, "seed": seed, "macs_ratio": macs(policy) / self.dense_macs}
                row |= policy_record(policy)
                self.rows.append(row)
                log(f"{method} seed {seed}: {line(row)}")
                write_report(self.args.out, self.report)


def line(row: dict[str, Any]) -> str:
    parts = []
    if "search_val" in row:
        parts.append(f"best search-val {row['search_val']:.4f} (trial {row['best_trial']})")
        parts.append(f"its model's test {row['trial_test']:.4f}")
    if row.get("recipe_test"):
        parts.append(f"recipe test {row['recipe_test']['mean']:.4f} ± {row['recipe_test']['sd']:.4f}")
    return ", ".join(parts)


def tables(report: dict[str, Any]) -> str:
    rows = report["rows"]
    out = [
        f"# {report['command']} ({report['date']}): {report['trials']} trials per search, MACs budget "
        f"{report['budget']}, {report['search_val_images']} search-val and {report['test_images']} test "
        f"images, dense test {report['dense_test']:.4f}",
        "",
        "| method | seed | best search-val | its model's test | policy's test (recipe seeds) | MACs ratio "
        "| wall s | suggestions s |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def cell(row: dict[str, Any], key: str, fmt: str = "{:.4f}") -> str:
        return fmt.format(row[key]) if row.get(key) is not None else "–"

    for row in rows:
        recipe = row.get("recipe_test") or {}
        recipe_cell = f"{recipe['mean']:.4f} ± {recipe['sd']:.4f}" if recipe else "–"
        out.append(
            f"| {row['method']} | {row['seed']} | {cell(row, 'search_val')} | {cell(row, 'trial_test')} | "
            f"{recipe_cell} | {row['macs_ratio']:.3f} | {cell(row, 'wall_s', '{:.0f}')} | "
            f"{cell(row, 'suggest_s', '{:.1f}')} |"
        )
    out += ["", "| method | best search-val | its model's test | policy's test | seeds |"]
    out += ["|---|---|---|---|---|"]
    by_method: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_method.setdefault(row["method"], []).append(row)
    notes: list[str] = []

    def summary(values: list[float]) -> str:
        if not values:
            return "–"
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):.4f} ± {spread:.4f}"

    for method, group in by_method.items():
        selected = [row for row in group if row.get("selection")]
        moved = [row for row in group if row.get("without_selection")]
        if selected:
            gains = [
                row["recipe_test"]["mean"] - row["without_selection"]["recipe_test"]["mean"] for row in moved
            ]
            deltas = f"; policy's test, chosen − Ax's best: {', '.join(f'{g:+.4f}' for g in gains)}"
            notes.append(
                f"- {method}: the selection chose another trial than Ax's best in {len(moved)} of "
                f"{len(selected)} searches{deltas if gains else ''}"
            )
    for method, group in by_method.items():
        seeds = sorted({row["seed"] for row in group})
        unique = group[:1] if method == "uniform" else group
        out.append(
            f"| {method} | {summary([r['search_val'] for r in unique if 'search_val' in r])} | "
            f"{summary([r['trial_test'] for r in unique if 'trial_test' in r])} | "
            f"{summary([r['recipe_test']['mean'] for r in unique if r.get('recipe_test')])} | {len(seeds)} |"
        )
    out.append("")
    for other in ("random", "uniform"):
        pairs = _paired(by_method, "gp_ei", other)
        if pairs:
            wins, ties = sum(d > 0 for d in pairs), sum(d == 0 for d in pairs)
            deltas = ", ".join(f"{d:+.4f}" for d in pairs)
            out.append(
                f"- GP-EI − {other}, policy's test, per seed: {deltas} "
                f"(GP-EI ahead in {wins}, tied in {ties} of {len(pairs)})"
            )
    return "\n".join([*out, *notes])


def _paired(by_method: dict[str, list[dict[str, Any]]], a: str, b: str) -> list[float]:
    if a not in by_method or b not in by_method:
        return []
    b_rows = {row["seed"]: row for row in by_method[b]}
    fallback = by_method[b][0] if b == "uniform" else None
    pairs = []
    for row in by_method[a]:
        other = b_rows.get(row["seed"], fallback)
        if other is not None and row.get("recipe_test") and other.get("recipe_test"):
            pairs.append(row["recipe_test"]["mean"] - other["recipe_test"]["mean"])
    return pairs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    previous: list[dict[str, Any]] = []
    if args.resume:
        if args.out is None or not args.out.exists():
            print("gp_vs_random: error: --resume needs an existing --out report", file=sys.stderr)
            return 2
        previous = json.loads(args.out.read_text())["rows"]
    spec = configured(args)
    started = time.perf_counter()
    report: dict[str, Any] = {
        **report_header("gp_vs_random", 2, argv),
        "trials": args.trials or spec.trials.total,
        "recipe": spec.finetune.model_dump(mode="json")
        | {"seeds": list(range(RECIPE_SEED0, RECIPE_SEED0 + args.recipe_seeds))},
        "rows": previous,
    }
    torch.set_num_threads(1)  # the searches' trials run one thread each; so does the recipe
    comparison = Comparison(spec, args, report)
    report |= {
        "budget": f"{comparison.fraction:.0%}",
        "dense_test": comparison.context.dense_test_accuracy,
        "test_seed": spec.data.test_seed,
        "search_val_images": len(comparison.context.data.search_val),
        "test_images": len(comparison.context.data.test),
    }
    try:
        with tempfile.TemporaryDirectory() as scratch:
            comparison.run(args.keep or Path(scratch))
    finally:
        if "ray" in sys.modules:  # the private Ray the searches started
            import ray

            ray.shutdown()
    report["wall_s"] = time.perf_counter() - started
    write_report(args.out, report)
    print(tables(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
