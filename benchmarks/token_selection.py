"""What token selection costs at inference (issue 13): DeiT-S (random weights) pruned by the
uniform policy of every dimension, timed side by side with the same model whose token selections
are replaced by static slices: keeping the first tokens, no scoring, no copy of chosen rows. That
is the floor any selection of the same counts can reach (same MACs, not the same accuracy), so
the gap between the two is what selecting tokens costs.

All models of one batch size run in interleaved rounds (``latency_side_by_side``), so the ratios
to dense are comparable within a run.

    python benchmarks/token_selection.py                      # 50 % and 25 % MACs, batch 1 and 32
    python benchmarks/token_selection.py --budgets 0.25 --batch-sizes 1 --repeats 20
    python benchmarks/token_selection.py --quick                 # a tiny DeiT, seconds (the tests)
"""

from __future__ import annotations

import argparse
import copy
import datetime
import sys

import torch
from peers_latency import random_dense
from peers_setup import QUICK_LATENCY_ARGS
from peers_vitprune import uniform_policy
from torch import Tensor, nn

from vitprune.evaluators import apply_policy
from vitprune.evaluators.criteria import get_criterion
from vitprune.evaluators.measure import latency_side_by_side
from vitprune.evaluators.modules import KeepTokens
from vitprune.spaces import Policy, macs
from vitprune.spaces.space import ALL_DIMENSIONS, WIDTHS


class StaticSlice(nn.Module):
    def __init__(self, keep: int, prefix: int) -> None:
        super().__init__()
        self.keep, self.prefix = keep, prefix

    @classmethod
    def like(cls, selection: KeepTokens) -> StaticSlice:
        return cls(selection.keep, selection.num_prefix_tokens)

    def forward(self, x: Tensor, positions: Tensor | None, cls_attention: Tensor | None):
        return x[:, : self.prefix + self.keep], positions


def replaced(model: nn.Module, make) -> nn.Module:
    """A copy of ``model`` with every :class:`KeepTokens` swapped for ``make(old)``."""
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, KeepTokens):
                if child.prior is not None:
                    raise SystemExit("token_selection: the uniform policy has a STAR prior; expected none")
                setattr(module, name, make(child))
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.25])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="a tiny DeiT, 1 warm-up, 2 rounds")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    if args.quick:
        args.batch_sizes, args.warmup, args.repeats = [1, 2], 1, 2
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        print_table(args)
    finally:
        torch.set_num_threads(threads)
    return 0


def print_table(args: argparse.Namespace) -> None:
    dense, base = random_dense(args.model, QUICK_LATENCY_ARGS if args.quick else {})
    scores = get_criterion("magnitude")(dense, base=base)
    dense_macs = macs(Policy.keep_all(base))
    models: dict[str, nn.Module] = {"dense": dense}
    ratios = {"dense": 1.0}
    for budget in args.budgets:
        limit = budget * dense_macs
        policy = uniform_policy(base, scores, budget_macs=limit, dimensions=ALL_DIMENSIONS).policy
        widths = uniform_policy(base, scores, budget_macs=limit, dimensions=WIDTHS).policy
        pruned = apply_policy(dense, policy).eval()
        label = f"{budget:.0%}, uniform-all ({policy.summary()['tokens_final']} tokens left)"
        for name, model, counted in (
            (f"{label}: token selection", pruned, policy),
            (f"{label}: static slice (floor)", replaced(pruned, StaticSlice.like), policy),
            (f"{budget:.0%}, uniform-widths (no token pruned)", apply_policy(dense, widths), widths),
        ):
            models[name], ratios[name] = model, macs(counted) / dense_macs
    print(f"# python benchmarks/token_selection.py {' '.join(args.argv)}")
    print(f"# {args.model}, random weights, fp32 CPU, {args.threads} threads, {datetime.date.today()}\n")
    print("| batch | model | MACs ratio | ms | latency ratio | latency ÷ MACs |")
    print("|---|---|---|---|---|---|")
    for batch in args.batch_sizes:
        timed = latency_side_by_side(models, batch_size=batch, warmup=args.warmup, repeats=args.repeats)
        reference = timed["dense"].median_ms
        for name, latency in timed.items():
            ratio = latency.median_ms / reference
            print(
                f"| {batch} | {name} | {ratios[name]:.3f} | {latency.median_ms:.1f} | {ratio:.3f} "
                f"| {ratio / ratios[name]:.2f} |"
            )


if __name__ == "__main__":
    sys.exit(main())
