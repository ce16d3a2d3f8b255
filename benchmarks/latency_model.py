"""How well does the latency model predict measured latency? Fit it as a latency-budget search
does (sub-layer grid + whole-model correction), then compare predictions with end-to-end
measurements of held-out policies decoded from random points at several budgets.

    python benchmarks/latency_model.py                                   # digits ViT and DeiT-S, CPU
    python benchmarks/latency_model.py --device cuda --dtype bfloat16 --batch-size 64

Prints a Markdown table. Calibration and held-out policies are measured together, twice, with the
dense model. On the first measurement the whole-model correction is fitted four ways, each scored
on the held-out policies (mean and max relative error): the power law ``β·raw^γ`` on the
calibration policies and the dense model (what a search fits since 2026-11-29); one factor on the
same; one factor on the calibration policies alone (before); one factor on the dense model alone.
Then the dense model as the power law and the first factor predict it, over its measurement (a
percentage budget is a share of the dense latency); the noise floor (the held-out policies' two
measurements: how far apart they are); and the time. Threads default to 1, as in a search trial
with ``resources.cpu: 1``.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from dataclasses import replace

import timm
import torch

from vitprune.evaluators import describe
from vitprune.evaluators.criteria import get_criterion
from vitprune.evaluators.latency_model import (
    fit_latency_model,
    measure_policies,
    power_law,
    relative_factor,
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["vitprune_digits_vit", "deit_small_patch16_224"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--holdout", type=int, default=12, help="held-out policies per model")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (a trial uses its CPU allocation)"
    )
    parser.add_argument("--repeats", type=int, default=10, help="timed passes per end-to-end measurement")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    print(
        f"# {device_name(device)}, {args.dtype}, batch {args.batch_size}, torch {torch.__version__}, "
        f"{datetime.date.today()}"
    )
    print(
        "| model | held-out policies | mean (max) error: power law, calibration + dense "
        "| factor, calibration + dense | factor, calibration alone | factor, dense alone "
        "| dense: predicted ÷ measured (power law, factor) | noise floor (mean) | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        dense = timm.create_model(name, pretrained=False).eval()
        base = describe(dense, name=name)
        scores = get_criterion("magnitude")(dense, base=base)
        space = SearchSpace("compact", depth=base.depth)
        started = time.perf_counter()
        calibration = policies(base, scores, space, seed=1, count=6)
        model = fit_latency_model(base, batch_size=args.batch_size, device=device, dtype=dtype)
        dense_policy = Policy.keep_all(base)
        held_out = policies(base, scores, space, seed=2, count=args.holdout)
        together = [dense_policy, *calibration, *held_out]
        first, second = (
            measure_policies(
                together, batch_size=args.batch_size, device=device, dtype=dtype, repeats=args.repeats
            )
            for _ in range(2)
        )
        dense_ms, measured_cal = first[0], first[1 : 1 + len(calibration)]
        measured_held, again = first[1 + len(calibration) :], second[1 + len(calibration) :]
        both = [dense_policy, *calibration], [dense_ms, *measured_cal]
        beta, gamma = power_law(model, *both)
        fits = [
            replace(model, correction=(0.0, beta), exponent=gamma),
            replace(model, correction=(0.0, relative_factor(model, *both))),
            replace(model, correction=(0.0, relative_factor(model, calibration, measured_cal))),
            replace(model, correction=(0.0, relative_factor(model, [dense_policy], [dense_ms]))),
        ]
        cells = []
        for fit in fits:
            errors = [abs(fit(p) - ms) / ms for p, ms in zip(held_out, measured_held, strict=True)]
            cells.append(f"{statistics.mean(errors):.1%} ({max(errors):.0%})")
        noise = statistics.mean(abs(a - b) / b for a, b in zip(measured_held, again, strict=True))
        dense_cell = f"{fits[0](dense_policy) / dense_ms:.2f}, {fits[1](dense_policy) / dense_ms:.2f}"
        print(
            f"| {name} | {len(held_out)} | {' | '.join(cells)} | {dense_cell} | {noise:.1%} "
            f"| {time.perf_counter() - started:.0f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
