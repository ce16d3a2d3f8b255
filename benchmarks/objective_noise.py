"""Which search objective resolves real differences between policies? (issue 13)

A search trial fine-tunes a policy once and scores it on search-val (216 digits images: one image
is 0.46 %). This study measures, on one fixed set of decoded policies at one MACs budget, how
well each candidate objective ranks the policies as their *test* accuracy does:

- truth: each policy's test accuracy, the mean over ``--truth-seeds`` fine-tunes whose seeds no
  objective uses (seeds ``k … k+T−1`` after the ``k = --objective-seeds`` the objectives use);
- candidates, from the same fine-tunes a trial would run: search-val accuracy (the objective
  today), search-val cross-entropy, KL to the dense model and top-1 agreement with it, on one
  fine-tune seed or the mean of ``k``; KL to the dense model on the un-augmented training images
  (larger, but seen in training); zero-shot search-val accuracy and KL (no fine-tune at all);
  and each of these with a larger search-val split (``--search-val-fractions``: the dense model
  is trained again on the smaller train split, the policies decoded from the same points);
- for reference, not a candidate: the test accuracy of seed 0 (what fine-tune noise alone allows).

Reported per candidate: Spearman's ρ with the truth (± its bootstrap sd over policies), how it
compares with today's objective on the same resampled policy sets (paired), the truth of the
policy it ranks first against the best truth, and what it costs per trial. And the
noise itself: per policy, the sd over all seeds of search-val and of test accuracy, next to the
spread of the truth between policies.

    python benchmarks/objective_noise.py --out noise.json                 # 16 Sobol points, 25 % MACs
    python benchmarks/objective_noise.py --points-from RUN_DIR --policies 16   # a search's trials
    python benchmarks/objective_noise.py --quick --out /tmp/noise.json    # tiny settings (the tests)
    python benchmarks/objective_noise.py --analyse noise.json             # the tables of a saved run

Prints Markdown tables; ``--out`` writes every figure as JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from peers_recipe import finetune_and_measure
from peers_setup import log, quick_spec, report_header, write_report
from peers_vitprune import criteria_scores
from scipy.stats import spearmanr

from vitprune.evaluators.surgery import apply_policy
from vitprune.evaluators.trial import cached_context
from vitprune.search.spec import SearchSpec, load_spec
from vitprune.spaces import Policy, macs
from vitprune.spaces.budget import Budget
from vitprune.spaces.space import decode

# name → (split, metric, sign): higher sign·value ranks a policy higher.
STATISTICS = {
    "accuracy": ("search-val", "accuracy", 1),
    "cross-entropy": ("search-val", "cross_entropy", -1),
    "KL to dense": ("search-val", "kl_to_dense", -1),
    "agreement with dense": ("search-val", "agreement", 1),
    "train KL to dense": ("train", "kl_to_dense", -1),
}
ZERO_SHOT = {"zero-shot accuracy": ("accuracy", 1), "zero-shot KL to dense": ("kl_to_dense", -1)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="search.yaml")
    parser.add_argument("--budget", type=float, default=0.25, help="MACs budget, fraction of dense")
    parser.add_argument("--policies", type=int, default=16)
    parser.add_argument("--points-from", type=Path, help="a search's run directory: its trials' points")
    parser.add_argument("--objective-seeds", type=int, default=2)
    parser.add_argument("--truth-seeds", type=int, default=3)
    parser.add_argument("--search-val-fractions", type=float, nargs="+", default=[0.15, 0.3])
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="Sobol points and bootstrap")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--analyse", type=Path, help="a saved report: recompute its analysis and tables only")
    args = parser.parse_args(argv)
    if args.quick:
        args.policies, args.objective_seeds, args.truth_seeds = min(args.policies, 3), 2, 1
        args.bootstrap = min(args.bootstrap, 50)
    return args


def sobol_points(parameters: tuple[str, ...], count: int, seed: int) -> list[dict[str, float]]:
    engine = torch.quasirandom.SobolEngine(len(parameters), scramble=True, seed=seed)
    return [dict(zip(parameters, map(float, row), strict=True)) for row in engine.draw(count)]


def run_points(run_dir: Path, count: int) -> list[dict[str, float]]:
    """The points of the last ``count`` trials of a search (by index: the GP's, near its optimum)."""
    found = []
    for path in sorted((run_dir / "trials").glob("*/metrics.json")):
        saved = json.loads(path.read_text())
        if "point" in saved and "accuracy" in saved:
            found.append((saved["trial"], saved["point"]))
    if not found:
        raise SystemExit(f"objective_noise: error: {run_dir}: no finished trials with a point")
    return [point for _, point in sorted(found)[-count:]]


def measure_setup(spec: SearchSpec, fraction: float, points: list[dict], args: argparse.Namespace) -> dict:
    """Dense model, scores and policies for one search-val fraction; every policy fine-tuned with
    every seed and measured on search-val, test and the clean training images."""
    spec = spec.model_copy(update={"data": spec.data.model_copy(update={"search_val_fraction": fraction})})
    started = time.perf_counter()
    context = cached_context(spec.model, spec.data, spec.dense_training)
    dense_s = time.perf_counter() - started
    space = spec.space.build(context.base.depth)
    scores = criteria_scores(spec, context, sorted(space.dimensions))
    dense_macs = macs(Policy.keep_all(context.base))
    budget = Budget("macs", args.budget * dense_macs)
    seeds = range(args.objective_seeds + args.truth_seeds)
    policies = []
    for index, point in enumerate(points):
        fit = decode(point, space=space, base=context.base, scores=scores, budget=budget, measure=macs)
        model = apply_policy(context.dense, fit.policy)
        runs = []
        for seed in seeds:
            config = spec.finetune.model_copy(update={"seed": seed})
            runs.append(finetune_and_measure(model, context, config, splits=("search-val", "test", "train")))
        policies.append(
            {
                "point": point,
                "macs_ratio": fit.cost / dense_macs,
                "structure": fit.policy.summary(),
                "runs": runs,
            }
        )
        truth = statistics.fmean(r["test"]["accuracy"] for r in runs[args.objective_seeds :])
        log(f"search-val {fraction:g}: policy {index + 1}/{len(points)}: truth (test) {truth:.4f}")
    return {
        "search_val_fraction": fraction,
        "search_val_images": len(context.data.search_val),
        "train_images": len(context.data.train),
        "dense_test": context.dense_test_accuracy,
        "dense_s": dense_s,
        "policies": policies,
    }


def candidates(setup: dict, k: int) -> dict[str, list[float]]:
    """Each candidate objective's value per policy (higher is better), plus the seed-0 test reference."""
    values: dict[str, list[float]] = {}
    for name, (split, metric, sign) in STATISTICS.items():
        values[f"{name}, seed 0"] = [sign * p["runs"][0][split][metric] for p in setup["policies"]]
        if k > 1 and split != "train":
            values[f"{name}, mean of {k} seeds"] = [
                sign * statistics.fmean(run[split][metric] for run in p["runs"][:k])
                for p in setup["policies"]
            ]
    for name, (metric, sign) in ZERO_SHOT.items():
        values[name] = [sign * p["runs"][0]["zero_shot"][metric] for p in setup["policies"]]
    values["reference: test accuracy, seed 0"] = [p["runs"][0]["test"]["accuracy"] for p in setup["policies"]]
    return values


BASELINE = "accuracy, seed 0"  # the objective a trial reports today


def resamples(size: int, count: int, seed: int) -> list[list[int]]:
    """``count`` bootstrap resamples of ``range(size)`` (with replacement), seeded."""
    rng = random.Random(seed)
    return [[rng.randrange(size) for _ in range(size)] for _ in range(count)]


def agreement(
    values: list[float],
    truth: list[float],
    *,
    resampled: list[list[int]],
    baseline: list[float] | None = None,
) -> dict[str, float]:
    """How well ``values`` rank the policies as ``truth`` does.

    Returns:
        ``spearman`` (ρ; nan when either is constant) and its sd over the ``resampled`` policy
        sets; ``first_choice_truth``, the truth of the policy ``values`` ranks first (ties: the
        first policy), and ``regret``, the best truth minus it. With ``baseline`` (another
        objective's values on the same policies): ``delta_rho``, ρ minus the baseline's, and
        ``p_better``, the share of resamples where ρ exceeds the baseline's (ties count half).
    """

    def rho(x: list[float], picks: list[int]) -> float:
        return _spearman([x[i] for i in picks], [truth[i] for i in picks])

    booted = [rho(values, picks) for picks in resampled]
    finite = [r for r in booted if r == r]
    first = max(range(len(values)), key=lambda i: (values[i], -i))
    result = {
        "spearman": _spearman(values, truth),
        "spearman_sd": statistics.stdev(finite) if len(finite) > 1 else float("nan"),
        "first_choice_truth": truth[first],
        "regret": max(truth) - truth[first],
    }
    if baseline is not None:
        pairs = [(a, rho(baseline, picks)) for a, picks in zip(booted, resampled, strict=True)]
        pairs = [(a, b) for a, b in pairs if a == a and b == b]
        result["delta_rho"] = result["spearman"] - _spearman(baseline, truth)
        wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs)
        result["p_better"] = wins / len(pairs) if pairs else float("nan")
    return result


def _spearman(x: list[float], y: list[float]) -> float:
    if len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def analyse(setups: list[dict], *, objective_seeds: int, bootstrap: int, seed: int) -> dict[str, Any]:
    """Every candidate of every setup against that setup's truth; the noise of each setup."""
    k = objective_seeds
    rows, noise = [], []
    for setup in setups:
        policies = setup["policies"]
        truth = [statistics.fmean(r["test"]["accuracy"] for r in p["runs"][k:]) for p in policies]
        values_by_name = candidates(setup, k)
        resampled = resamples(len(policies), bootstrap, seed)
        for name, values in values_by_name.items():
            seeds = k if "mean of" in name else (0 if "zero-shot" in name else 1)
            rows.append(
                {
                    "objective": name,
                    "search_val_fraction": setup["search_val_fraction"],
                    "search_val_images": setup["search_val_images"],
                    "finetunes_per_trial": seeds,
                }
                | agreement(values, truth, resampled=resampled, baseline=values_by_name[BASELINE])
            )

        noise.append(
            {
                "search_val_fraction": setup["search_val_fraction"],
                "search_val_images": setup["search_val_images"],
                "search_val_sd_over_seeds": _sd_over_seeds(policies, "search-val"),
                "test_sd_over_seeds": _sd_over_seeds(policies, "test"),
                "truth_sd_over_policies": statistics.pstdev(truth),
                "truth_range": [min(truth), max(truth)],
                "finetune_s": statistics.fmean(r["finetune_s"] for p in policies for r in p["runs"]),
                "dense_test": setup["dense_test"],
            }
        )
    return {"objectives": rows, "noise": noise}


def _sd_over_seeds(policies: list[dict], split: str) -> float:
    """Mean over policies of the accuracy's sd over fine-tune seeds (population sd)."""
    return statistics.fmean(statistics.pstdev([r[split]["accuracy"] for r in p["runs"]]) for p in policies)


def markdown(report: dict[str, Any]) -> str:
    quick = ", --quick" if report["quick"] else ""
    lines = [
        f"# Search objectives against test accuracy ({report['date']}{quick}): {report['policies']} policies "
        f"at {report['budget']:.0%} MACs ({report['points']}), truth = mean test accuracy over "
        f"{report['truth_seeds']} other fine-tune seeds",
        "",
        "| search-val images | search-val acc sd over seeds | test acc sd over seeds | truth sd over "
        "policies | truth range | fine-tune s | dense test |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in report["analysis"]["noise"]:
        lines.append(
            f"| {n['search_val_images']} | {n['search_val_sd_over_seeds']:.4f} | "
            f"{n['test_sd_over_seeds']:.4f} | {n['truth_sd_over_policies']:.4f} | "
            f"{n['truth_range'][0]:.4f}–{n['truth_range'][1]:.4f} | {n['finetune_s']:.1f} | "
            f"{n['dense_test']:.4f} |"
        )
    lines += [
        "",
        "| search-val images | objective | fine-tunes per trial | Spearman ρ with test | Δρ vs "
        f"{BASELINE} (share of resamples better) | its first choice's test (regret) |",
        "|---|---|---|---|---|---|",
    ]
    rows = report["analysis"]["objectives"]
    for row in sorted(rows, key=lambda r: (r["search_val_images"], -_sortable(r["spearman"]))):
        lines.append(
            f"| {row['search_val_images']} | {row['objective']} | {row['finetunes_per_trial']} | "
            f"**{row['spearman']:.2f}** ± {row['spearman_sd']:.2f} | {row['delta_rho']:+.2f} "
            f"({row['p_better']:.0%}) | {row['first_choice_truth']:.4f} ({row['regret']:.4f}) |"
        )
    return "\n".join(lines)


def _sortable(value: float) -> float:
    return value if value == value else -2.0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.analyse is not None:  # no fine-tuning: the figures of a saved run, analysed again
        report = json.loads(args.analyse.read_text())
        report["analysis"] = analyse(
            report["setups"],
            objective_seeds=report["objective_seeds"],
            bootstrap=args.bootstrap,
            seed=args.seed,
        )
        write_report(args.out, report)
        print(markdown(report))
        return 0
    spec, _ = load_spec(args.config)
    if args.quick:
        spec = quick_spec(spec)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    if args.points_from is not None:
        points, source = run_points(args.points_from, args.policies), f"the last trials of {args.points_from}"
    else:
        space = spec.space.build(cached_context(spec.model, spec.data, spec.dense_training).base.depth)
        points, source = (
            sobol_points(space.parameters(), args.policies, args.seed),
            f"Sobol, seed {args.seed}",
        )
    report: dict[str, Any] = {
        **report_header("objective_noise", 1, argv),
        "quick": args.quick,
        "budget": args.budget,
        "policies": len(points),
        "points": source,
        "objective_seeds": args.objective_seeds,
        "truth_seeds": args.truth_seeds,
        "finetune": json.loads(spec.finetune.model_dump_json()),
    }
    setups = report.setdefault("setups", [])
    for fraction in args.search_val_fractions:
        setups.append(measure_setup(spec, fraction, points, args))
        report["analysis"] = analyse(
            setups, objective_seeds=args.objective_seeds, bootstrap=args.bootstrap, seed=args.seed
        )
        report["wall_s"] = time.perf_counter() - started
        write_report(args.out, report)  # after every setup: a run cut short keeps what finished
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
