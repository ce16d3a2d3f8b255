"""How well does the latency model predict measured latency? Fit it as a latency-budget search
does (sub-layer grid + whole-model correction), then compare predictions with end-to-end
measurements of held-out policies decoded from random points at several budgets.

    python benchmarks/latency_model.py                                   # digits ViT and DeiT-S, CPU
    python benchmarks/latency_model.py --device cuda --dtype bfloat16 --batch-size 64

Prints a Markdown table: mean and max relative error on the held-out policies, the noise floor
(the same policies measured twice: how far apart two measurements are), and the fit time.
Threads default to 1, as in a search trial with ``resources.cpu: 1``.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time

import timm
import torch

from vitprune.evaluators import describe
from vitprune.evaluators.criteria import get_criterion
from vitprune.evaluators.latency_model import (
    fit_latency_model,
    holdout_errors,
    measure_policies,
    sample_policies,
)
from vitprune.evaluators.measure import device_name
from vitprune.spaces import Policy, macs
from vitprune.spaces.budget import Budget
from vitprune.spaces.space import SearchSpace, decode


def policies(base, scores, space, *, seed: int, count: int) -> list[Policy]:
    """Policies decoded from seeded random points of ``space``, spread over fractions of dense
    MACs exactly as a latency-budget search samples its calibration and held-out policies."""
    dense_macs = macs(Policy.keep_all(base))

    def build(point: dict[str, float], fraction: float) -> Policy:
        budget = Budget("macs", fraction * dense_macs)
        return decode(point, space=space, base=base, scores=scores, budget=budget, measure=macs).policy

    return sample_policies(build, space.parameters(), count, seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["vitprune_digits_vit", "deit_small_patch16_224"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--holdout", type=int, default=12, help="held-out policies per model")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (a trial uses its CPU allocation)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    print(
        f"# {device_name(device)}, {args.dtype}, batch {args.batch_size}, torch {torch.__version__}, "
        f"{datetime.date.today()}"
    )
    print("| model | held-out policies | mean error | max error | noise floor (mean) | fit + check s |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        dense = timm.create_model(name, pretrained=False).eval()
        base = describe(dense, name=name)
        scores = get_criterion("magnitude")(dense, base=base)
        space = SearchSpace("compact", depth=base.depth)
        started = time.perf_counter()
        calibration = policies(base, scores, space, seed=1, count=6)
        model = fit_latency_model(
            base, batch_size=args.batch_size, device=device, dtype=dtype, calibration=calibration
        )
        held_out = policies(base, scores, space, seed=2, count=args.holdout)
        errors = holdout_errors(model, held_out, device=device, dtype=dtype, repeats=10)
        first = measure_policies(held_out, batch_size=args.batch_size, device=device, dtype=dtype, repeats=10)
        second = measure_policies(
            held_out, batch_size=args.batch_size, device=device, dtype=dtype, repeats=10
        )
        noise = statistics.mean(abs(a - b) / b for a, b in zip(first, second, strict=True))
        print(
            f"| {name} | {len(held_out)} | {statistics.mean(errors):.1%} | {max(errors):.1%} | {noise:.1%} | "
            f"{time.perf_counter() - started:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
