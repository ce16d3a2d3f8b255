"""Which importance criteria help? Search-val accuracy of policies at the same MACs budget on the
embedded digits model, per criterion, zero-shot and after the brief fine-tune.

Every row of a group uses the same proposal (the same keep ratios and depth counts) projected
onto the same budget; only the ranking of *what* to keep differs. Random rankings are averaged
over several seeds.

    python benchmarks/criteria.py                     # budget 50 % of dense MACs, 3 fine-tune epochs
    python benchmarks/criteria.py --budget 0.4 --finetune-epochs 5

Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time

import torch

from vitprune.evaluators.config import DataConfig, DenseTrainingConfig, FinetuneConfig, ModelConfig
from vitprune.evaluators.criteria import calibration_batches, compute_scores
from vitprune.evaluators.dense import cache_root
from vitprune.evaluators.measure import accuracy
from vitprune.evaluators.surgery import apply_policy
from vitprune.evaluators.trial import cached_context, evaluate_policy
from vitprune.spaces import LayerRatios, Policy, Scores, macs
from vitprune.spaces.budget import Budget, Proposal, project
from vitprune.spaces.scores import DIMENSIONS


def rankings(scores: dict[str, Scores], seeds: int) -> dict[str, dict[str, list[Scores]]]:
    """Per experiment group: criterion label → the Scores to rank with (several for random)."""
    magnitude, random = scores["magnitude"], [scores[f"random-{s}"] for s in range(seeds)]

    def mix(by_dim: dict[str, Scores]) -> Scores:
        return Scores.combine({dim: by_dim.get(dim, magnitude) for dim in DIMENSIONS})

    return {
        "widths": {
            "magnitude (L1)": [magnitude],
            f"random (mean of {seeds})": random,
            "taylor": [mix({d: scores["taylor"] for d in ("heads", "qk", "v", "mlp")})],
            "hsic (heads, mlp)": [mix({"heads": scores["hsic"], "mlp": scores["hsic"]})],
            "snp (heads, qk, v)": [mix({d: scores["snp"] for d in ("heads", "qk", "v")})],
            "hsic + snp": [
                mix({"heads": scores["hsic"], "mlp": scores["hsic"], "qk": scores["snp"], "v": scores["snp"]})
            ],
        },
        "tokens": {
            "class-token attention only": [magnitude],
            "star (fused prior)": [mix({"tokens": scores["star"]})],
        },
        "depth": {
            "magnitude": [magnitude],
            f"random (mean of {seeds})": [mix({"depth": r}) for r in random],
            "depth (BoundaryDPT)": [mix({"depth": scores["depth"]})],
        },
        "embed": {
            "magnitude (L1, coupled weights)": [magnitude],
            f"random (mean of {seeds})": [mix({"embed": r}) for r in random],
            "taylor (coupled weights)": [mix({"embed": scores["taylor"]})],
        },
    }


def proposals(depth: int) -> dict[str, Proposal]:
    """The same shape for every criterion of a group; the projection scales it onto the budget."""
    widths = tuple(LayerRatios(heads=0.7, qk=0.7, v=0.7, mlp=0.7) for _ in range(depth))
    tokens = tuple(LayerRatios(tokens=0.8 if i >= 1 else 1.0) for i in range(depth))
    deep = tuple(LayerRatios(heads=0.9, qk=0.9, v=0.9, mlp=0.9) for _ in range(depth))
    width_dims = frozenset({"heads", "qk", "v", "mlp"})
    return {
        "widths": Proposal(widths, free=width_dims),
        "tokens": Proposal(tokens, free=frozenset({"tokens"})),
        "depth": Proposal(deep, free=width_dims, drop_attn=2, drop_act=3),  # which layers, not how many
        "embed": Proposal(tuple(LayerRatios() for _ in range(depth)), free=frozenset({"embed"}), embed=0.7),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=0.5, help="MACs budget as a fraction of dense")
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3, help="random rankings to average")
    parser.add_argument("--finetune-seeds", type=int, default=3, help="fine-tunes to average per policy")
    parser.add_argument("--calibration-batches", type=int, default=4)
    parser.add_argument(
        "--groups", nargs="+", default=["widths", "tokens", "depth", "embed"], help="which groups to run"
    )
    args = parser.parse_args()

    started = time.perf_counter()
    context = cached_context(ModelConfig(), DataConfig(), DenseTrainingConfig())
    base, dense = context.base, context.dense
    batches = calibration_batches(context.data.calibration_loader(seed=0), args.calibration_batches)
    cache_dir = cache_root() / "scores"
    scores = {
        name: compute_scores(name, dense, base=base, data=batches, cache_dir=cache_dir)
        for name in ("magnitude", "taylor", "hsic", "snp", "star", "depth")
    }
    scores |= {f"random-{s}": compute_scores("random", dense, base=base, seed=s) for s in range(args.seeds)}
    budget = Budget("macs", args.budget * macs(Policy.keep_all(base)))
    search_val = context.data.eval_loader("search-val")
    finetunes = [FinetuneConfig(epochs=args.finetune_epochs, seed=s) for s in range(args.finetune_seeds)]

    print(
        f"# digits ViT (dense search-val {accuracy(dense, search_val).top1:.3f}, "
        f"test {context.dense_test_accuracy:.3f}); budget {args.budget:.0%} of dense MACs; "
        f"fine-tune {args.finetune_epochs} epochs with distillation, mean of {args.finetune_seeds} seeds; "
        f"{datetime.date.today()}"
    )
    print("| group | criterion | MACs ratio | zero-shot search-val | fine-tuned search-val (mean ± sd) |")
    print("|---|---|---|---|---|")
    for group, by_criterion in rankings(scores, args.seeds).items():
        if group not in args.groups:
            continue
        proposal = proposals(base.depth)[group]
        for label, candidates in by_criterion.items():
            zero, tuned, ratio = [], [], []
            for candidate in candidates:
                policy = project(proposal, base=base, scores=candidate, budget=budget, measure=macs).policy
                zero.append(accuracy(apply_policy(dense, policy), search_val).top1)
                for finetune in finetunes:
                    result = evaluate_policy(policy, context, finetune_config=finetune, device="cpu")
                    tuned.append(result.metrics["accuracy"])
                ratio.append(macs(policy) / macs(Policy.keep_all(base)))
            spread = statistics.stdev(tuned) if len(tuned) > 1 else 0.0
            print(
                f"| {group} | {label} | {statistics.mean(ratio):.3f} | {statistics.mean(zero):.3f} | "
                f"{statistics.mean(tuned):.3f} ± {spread:.3f} |",
                flush=True,
            )
    print(
        f"# {time.perf_counter() - started:.0f} s, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )


if __name__ == "__main__":
    main()
