"""Dense vs pruned latency of a DeiT-S-sized ViT, pruned along each dimension alone and jointly.

Each family is projected onto the MACs budget (50 % of dense by default) with the same bisection
the search uses; where a dimension alone cannot reach the budget (heads, q/k, v), it is pruned as
far as it goes and its MACs ratio says so. Latencies are measured side by side in interleaved
rounds, so machine noise hits dense and pruned alike; ratios are what to read on CPU.

    python benchmarks/speedup.py                         # CPU, batch 1 and 32
    python benchmarks/speedup.py --device cuda --dtype bfloat16 --batch-sizes 1 32 256

Prints a Markdown table: MACs ratio, latency ratio (pruned / dense, median), speedup, and the
efficiency ``(dense/pruned latency) / (dense/pruned MACs)`` (1.0 = latency falls as fast as MACs).
"""

from __future__ import annotations

import argparse
import datetime
import platform
from collections.abc import Callable

import timm
import torch

from vitprune.evaluators import apply_policy, describe
from vitprune.evaluators.criteria import get_criterion
from vitprune.evaluators.measure import latency_side_by_side
from vitprune.spaces import Architecture, InputError, Policy, Scores, build_policy, macs, uniform_ratios
from vitprune.spaces.budget import fit_to_budget

Family = Callable[[float], Policy]


def families(base: Architecture, scores: Scores) -> dict[str, Family]:
    """Policy families ``s ↦ policy`` (``s = 1`` keeps everything), one per dimension and one joint."""
    L = base.depth

    def ratios(**kw: float) -> Family:
        def build(s: float) -> Policy:
            return build_policy(base, scores, uniform_ratios(L, **{k: v(s) for k, v in kw.items()}))

        return build

    def depth(s: float) -> Policy:  # remove activations first (cheap in accuracy), then attention layers
        removed = round((1 - s) * 2 * L)
        return build_policy(
            base, scores, uniform_ratios(L), drop_act=min(L, removed), drop_attn=max(0, removed - L)
        )

    def joint(s: float) -> Policy:
        r = s**0.5
        return build_policy(
            base,
            scores,
            uniform_ratios(L, heads=r, qk=r, v=r, mlp=r, token_keep=0.5 + 0.5 * r, token_start=3),
            drop_act=2,
        )

    return {
        "heads": ratios(heads=lambda s: s),
        "qk": ratios(qk=lambda s: s),
        "v": ratios(v=lambda s: s),
        "qk+v (equal widths)": ratios(qk=lambda s: s, v=lambda s: s),
        "mlp neurons": ratios(mlp=lambda s: s),
        "tokens": ratios(token_keep=lambda s: 0.5 + 0.5 * s),
        "depth (GELU, then attention)": depth,
        "joint (all six)": joint,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--budget", type=float, default=0.5, help="MACs budget as a fraction of dense")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="family names to run (default: all)")
    args = parser.parse_args()

    torch.manual_seed(0)
    dense = timm.create_model(args.model, pretrained=False).eval()  # random weights: latency only
    base = describe(dense, name=args.model)
    scores = get_criterion("magnitude")(dense, base=base)
    dense_macs = macs(Policy.keep_all(base))
    dtype = getattr(torch, args.dtype)

    print(f"# {args.model}, budget {args.budget:.0%} of dense MACs, device {args.device}, dtype {args.dtype}")
    print(
        f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, {datetime.date.today()}"
    )
    header = "| family | MACs ratio | batch | dense ms | pruned ms | latency ratio | speedup | efficiency |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for name, build in families(base, scores).items():
        if args.only and name not in args.only:
            continue
        try:
            policy = fit_to_budget(build, macs, args.budget * dense_macs).policy
        except InputError:  # this dimension alone cannot reach the budget: prune it as far as it goes
            policy = build(0.0)
        pruned = apply_policy(dense, policy)
        macs_ratio = macs(policy) / dense_macs
        for batch in args.batch_sizes:
            result = latency_side_by_side(
                {"dense": dense, "pruned": pruned},
                batch_size=batch,
                device=args.device,
                dtype=dtype,
                warmup=args.warmup,
                repeats=args.repeats,
            )
            d, p = result["dense"].median_ms, result["pruned"].median_ms
            speedup = d / p
            print(
                f"| {name} | {macs_ratio:.3f} | {batch} | {d:.1f} | {p:.1f} | {p / d:.3f} | "
                f"{speedup:.2f}× | {speedup * macs_ratio:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
