"""Where a searched policy's batch-1 CPU time goes, and what padding q/k to v's width costs. (issue 13)

``PrunedAttention`` pads the narrower of the q/k and v head widths to the wider one so that
``F.scaled_dot_product_attention`` can run a fused kernel. The cost model counts the unpadded
MACs, so a policy with q/k much narrower than v is charged less than its attention costs.

1. ``--search-runs DIR``: the best points of ``DIR/search-{50,25}pct`` (as ``peers.py --latency
   --search-runs`` reads them) decoded onto DeiT-S (random weights), next to the uniform widths-only
   policy and the dense model at batch 1; ``torch.profiler`` self CPU time per pass of the largest
   operators.
2. Always: one attention call, fused with padding against the unfused math (``softmax(q·kᵀ)·v`` at the
   true widths), median of interleaved repeats.

    python benchmarks/attention_padding.py --search-runs DIR
    python benchmarks/attention_padding.py               # the kernels alone

Prints Markdown tables. No timing here is asserted anywhere.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from peers_latency import random_dense
from peers_vitprune import UNIFORM, kept_search_point, search_point_policy, uniform_policy
from torch.profiler import profile

from vitprune.evaluators import apply_policy
from vitprune.evaluators.criteria import get_criterion
from vitprune.spaces import Policy, macs

# (tokens, heads, q/k width, v width) per call; batch 1 and 32
SHAPES = ((197, 6, 64, 64), (197, 5, 16, 56), (197, 5, 32, 48), (197, 12, 64, 56), (17, 6, 40, 48))
OPERATORS = 6


def _median_ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):  # interleaved: load on a shared machine hits every variant alike
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e3 for name, values in times.items()}


def fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``PrunedAttention``'s call: the narrower widths zero-padded, a fused kernel, the padding cut."""
    if q.shape[-1] == v.shape[-1]:  # as the module: equal widths need no copy
        return F.scaled_dot_product_attention(q, k, v, scale=0.125)
    width = max(q.shape[-1], v.shape[-1])
    padded = (F.pad(t, (0, width - t.shape[-1])) for t in (q, k, v))
    return F.scaled_dot_product_attention(*padded, scale=0.125)[..., : v.shape[-1]]


def math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The same attention unfused, at the true widths: ``softmax(q·kᵀ·scale)·v``."""
    return ((q * 0.125) @ k.transpose(-2, -1)).softmax(-1) @ v


def kernels(repeats: int) -> list[str]:
    lines = [
        "| batch | tokens | heads | q/k | v | fused, padded ms | math, unpadded ms | math ÷ fused |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for batch in (1, 32):
        for tokens, heads, qk, v in SHAPES:
            q, k = (torch.randn(batch, heads, tokens, qk) for _ in range(2))
            value = torch.randn(batch, heads, tokens, v)
            fns = {
                "fused": functools.partial(fused, q, k, value),
                "math": functools.partial(math, q, k, value),
            }
            with torch.inference_mode():
                ms = _median_ms(fns, repeats)
            lines.append(
                f"| {batch} | {tokens} | {heads} | {qk} | {v} | {ms['fused']:.3f} | {ms['math']:.3f} | "
                f"{ms['math'] / ms['fused']:.2f} |"
            )
    return lines


def points(search_runs: Path, passes: int) -> list[str]:
    dense, base = random_dense("deit_small_patch16_224", {})
    scores = get_criterion("magnitude")(dense, base=base)
    dense_macs = macs(Policy.keep_all(base))
    models: dict[str, torch.nn.Module] = {"dense": dense}
    for budget in (0.5, 0.25):
        kept = kept_search_point(search_runs, budget)
        if kept is None:
            continue
        fit = search_point_policy(kept, base, scores, budget_macs=budget * dense_macs)
        widths = uniform_policy(
            base, scores, budget_macs=budget * dense_macs, dimensions=UNIFORM["uniform-widths"]
        )
        models[f"search's point @ {budget:g}"] = apply_policy(dense, fit.policy).eval()
        models[f"uniform-widths @ {budget:g}"] = apply_policy(dense, widths.policy).eval()
    image = torch.randn(1, 3, 224, 224)
    lines = ["| model | total ms per pass | largest operators, self CPU ms per pass |", "|---|---|---|"]
    for name, model in models.items():
        with torch.inference_mode():
            for _ in range(3):
                model(image)
            with profile() as profiler:
                for _ in range(passes):
                    model(image)
        events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events) / passes / 1e3
        top = ", ".join(f"{e.key} {e.self_cpu_time_total / passes / 1e3:.1f}" for e in events[:OPERATORS])
        lines.append(f"| {name} | {total:.1f} | {top} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--search-runs", type=Path, help="profile the best points of the searches kept here")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=40, help="timed calls per kernel")
    parser.add_argument("--passes", type=int, default=20, help="profiled forward passes per model")
    args = parser.parse_args(argv)
    if args.search_runs and not args.search_runs.is_dir():
        print(f"attention_padding: error: --search-runs {args.search_runs}: no such folder", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    if args.search_runs:
        print("\n".join(points(args.search_runs, args.passes)) + "\n")
    print("\n".join(kernels(args.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
