"""Where decoded policies land on their budget: cost / budget over random points of the search space.

The search decodes every point the optimiser proposes onto the budget; a trial that lands far
under it wastes capacity the user paid for. This script decodes seeded random points (as Sobol
proposes them) on the embedded digits model and a DeiT-S-sized model (random scores: landing
depends on the counts, not on which units are kept) and prints the distribution of cost / budget.

    python benchmarks/budget_landing.py                      # MACs at 50 % and 25 %, both spaces
    python benchmarks/budget_landing.py --metric params --points 500

It needs only the architectures (``meta`` device): it runs in seconds on a CPU.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import timm
import torch

from vitprune.evaluators import describe, models  # noqa: F401  (registers the digits ViT)
from vitprune.spaces import Architecture, Policy, macs, params
from vitprune.spaces.scores import random_scores
from vitprune.spaces.space import Budget, SearchSpace, decode

MODELS = {"digits": "vitprune_digits_vit", "DeiT-S": "deit_small_patch16_224"}


def architecture(name: str) -> Architecture:
    with torch.device("meta"):
        model = timm.create_model(name)
    return describe(model, name=name, model_args={})


def landing(base: Architecture, *, kind: str, metric: str, fraction: float, points: int, seed: int) -> dict:
    measure = {"macs": macs, "params": params}[metric]
    budget = Budget(metric, fraction * measure(Policy.keep_all(base)))
    space = SearchSpace(kind, depth=base.depth)
    scores = random_scores(base, seed=seed)
    rng = random.Random(seed)
    ratios, started = [], time.perf_counter()
    for _ in range(points):
        point = {name: rng.random() for name in space.parameters()}
        fit = decode(point, space=space, base=base, scores=scores, budget=budget, measure=measure)
        ratios.append(fit.cost / budget.limit)
    ratios.sort()
    return {
        "min": ratios[0],
        "p10": ratios[len(ratios) // 10],
        "median": statistics.median(ratios),
        "within_1pct": sum(r >= 0.99 for r in ratios) / len(ratios),
        "within_3pct": sum(r >= 0.97 for r in ratios) / len(ratios),
        "over": sum(r > 1 for r in ratios),
        "decode_ms": (time.perf_counter() - started) / points * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--metric", choices=["macs", "params"], default="macs")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.25])
    parser.add_argument("--points", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(
        "| model | space | budget | min | p10 | median | within 1 % | within 3 % | over budget | decode ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, name in MODELS.items():
        base = architecture(name)
        for kind in ("compact", "per_layer"):
            for fraction in args.fractions:
                r = landing(
                    base, kind=kind, metric=args.metric, fraction=fraction, points=args.points, seed=args.seed
                )
                print(
                    f"| {label} | {kind} | {fraction:.0%} {args.metric} | {r['min']:.3f} | {r['p10']:.3f} | "
                    f"{r['median']:.3f} | {r['within_1pct']:.0%} | {r['within_3pct']:.0%} | {r['over']} | "
                    f"{r['decode_ms']:.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
