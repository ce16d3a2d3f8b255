"""The ``vitprune`` command line. Bad input is one line on stderr and exit status 2.

Commands print machine-readable results (JSON) on stdout and human-readable progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console

from vitprune.spaces import InputError, Policy, cost

console = Console(stderr=True, highlight=False, soft_wrap=True)

Command = Callable[[argparse.Namespace], int | None]


def _ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a ratio in [0, 1], got {text}")
    return value


def _model_arg(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def _add_weights(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--checkpoint", metavar="CKPT", help="dense weights: safetensors, torch state dict or model dir"
    )
    source.add_argument("--pretrained", action="store_true", help="download timm's pretrained weights")


def _summary(policy: Policy) -> str:
    pruned, dense = cost(policy), cost(Policy.keep_all(policy.base))
    return (
        f"MACs {pruned.macs / 1e9:.3f} G ({pruned.macs / dense.macs:.1%} of dense), "
        f"params {pruned.params / 1e6:.2f} M ({pruned.params / dense.params:.1%})"
    )


# -- commands -------------------------------------------------------------------------------------


def cmd_policy(args: argparse.Namespace) -> None:
    from vitprune.evaluators.criteria import get_criterion
    from vitprune.evaluators.dense import load_dense
    from vitprune.spaces import build_policy, uniform_ratios
    from vitprune.spaces.files import write_text_atomic

    criterion = get_criterion(args.criterion)
    model, base = load_dense(
        args.model, checkpoint=args.checkpoint, pretrained=args.pretrained, model_args=dict(args.model_arg)
    )
    token_start = base.depth // 3 if args.token_start is None else args.token_start
    ratios = uniform_ratios(
        base.depth,
        heads=args.keep_heads,
        qk=args.keep_qk,
        v=args.keep_v,
        mlp=args.keep_mlp,
        token_keep=args.token_keep,
        token_start=token_start,
    )
    scores = criterion(model, base=base)
    policy = build_policy(
        base, scores, ratios, drop_attn=args.drop_attn, drop_act=args.drop_act, align=args.align
    )
    write_text_atomic(args.output, policy.to_json())
    console.print(f"wrote {args.output}: {base.model}, {scores.criterion} criterion; {_summary(policy)}")


def cmd_cost(args: argparse.Namespace) -> None:
    from vitprune.evaluators.io import read_policy

    policy = read_policy(args.policy)
    pruned, dense = cost(policy), cost(Policy.keep_all(policy.base))
    report = {
        "model": policy.base.model,
        "macs": pruned.macs,
        "params": pruned.params,
        "macs_ratio": pruned.macs / dense.macs,
        "params_ratio": pruned.params / dense.params,
        "dense": {"macs": dense.macs, "params": dense.params},
        **{key: value for key, value in pruned.to_dict().items() if key not in ("macs", "params")},
    }
    print(json.dumps(report, indent=2))


def cmd_apply(args: argparse.Namespace) -> None:
    import torch

    from vitprune.evaluators import apply_policy, create_dense, save_pruned
    from vitprune.evaluators.dense import load_dense
    from vitprune.evaluators.io import read_policy

    policy = read_policy(args.policy)
    base = policy.base
    if args.checkpoint or args.pretrained:
        dense, _ = load_dense(
            base.model, checkpoint=args.checkpoint, pretrained=args.pretrained, model_args=base.model_args
        )
    else:
        console.print("no --checkpoint or --pretrained: random weights (for latency studies)")
        torch.manual_seed(args.seed)
        dense = create_dense(base)
    save_pruned(apply_policy(dense, policy), policy, args.out)
    console.print(f"wrote {args.out}: {_summary(policy)}")


def cmd_schema(args: argparse.Namespace) -> None:
    from vitprune.spaces.policy import json_schema

    print(json.dumps(json_schema(), indent=2))


# -- parser ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitprune", description="Prune Vision Transformers under a compute budget."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from vitprune.evaluators.criteria import criterion_names

    p = commands.add_parser("policy", help="write a uniform policy from keep ratios")
    p.add_argument(
        "model", nargs="?", help="timm model name (optional with a vitprune --checkpoint directory)"
    )
    _add_weights(p)
    p.add_argument(
        "--model-arg",
        type=_model_arg,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="timm.create_model override, e.g. img_size=64 (repeatable)",
    )
    p.add_argument(
        "--criterion",
        default="magnitude",
        choices=criterion_names(),
        help="what to keep (default: magnitude)",
    )
    for name, what in (
        ("heads", "attention heads"),
        ("qk", "query/key dims per head"),
        ("v", "value dims per head"),
        ("mlp", "MLP neurons"),
    ):
        p.add_argument(
            f"--keep-{name}", type=_ratio, default=1.0, metavar="R", help=f"fraction of {what} kept"
        )
    p.add_argument("--drop-attn", type=int, default=0, metavar="N", help="attention sub-layers to remove")
    p.add_argument(
        "--drop-act", type=int, default=0, metavar="N", help="MLP activations to remove (fc1·fc2 merge)"
    )
    p.add_argument(
        "--token-keep",
        type=_ratio,
        default=1.0,
        metavar="R",
        help="fraction of patch tokens kept at each layer from --token-start on",
    )
    p.add_argument(
        "--token-start",
        type=int,
        default=None,
        metavar="L",
        help="first layer that prunes tokens (default: depth // 3)",
    )
    p.add_argument("--align", type=int, default=8, help="round widths to multiples of this (default: 8)")
    p.add_argument("-o", "--output", required=True, metavar="POLICY.json")
    p.set_defaults(func=cmd_policy)

    p = commands.add_parser("cost", help="MACs and parameters of a policy, total and per layer (JSON)")
    p.add_argument("policy", metavar="POLICY.json")
    p.set_defaults(func=cmd_cost)

    p = commands.add_parser("apply", help="build the pruned model of a policy and save it")
    p.add_argument("policy", metavar="POLICY.json")
    _add_weights(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights when no weights are given")
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=cmd_apply)

    p = commands.add_parser("schema", help="print the JSON Schema of policy files")
    p.set_defaults(func=cmd_schema)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    func: Command = args.func
    try:
        return func(args) or 0
    except InputError as error:
        console.print(f"vitprune: error: {error}", markup=False)
        return 2
    except KeyboardInterrupt:
        console.print("vitprune: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
