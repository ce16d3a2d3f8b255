"""The ``vitprune`` command line. Bad input is one line on stderr and exit status 2.

Commands print machine-readable results (JSON) on stdout and human-readable progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console

from vitprune import __version__, argtypes
from vitprune.argtypes import ratio, whole_number
from vitprune.commands import (
    cmd_apply,
    cmd_cost,
    cmd_evaluate,
    cmd_policy,
    cmd_schema,
    cmd_train_dense,
)
from vitprune.spaces import InputError
from vitprune.spaces.errors import one_line

console = Console(stderr=True, highlight=False, soft_wrap=True)

Command = Callable[[argparse.Namespace], int | None]

# The registered criteria (vitprune.evaluators.criteria.criterion_names(), which imports torch):
# named here so that `vitprune --help` answers at once; a test keeps the two equal.
CRITERIA = ("depth", "hsic", "magnitude", "random", "snp", "star", "taylor")
count = whole_number(low=0)


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


# -- parser ---------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line too (``vitprune policy: error: ...``), with where to find help."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vitprune", description="Prune Vision Transformers under a compute budget.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    parser.add_argument("--version", action="version", version=f"vitprune {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

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
        metavar="NAME",
        help=f"what to keep: {', '.join(CRITERIA)} (default: magnitude)",
    )
    for name, what in (
        ("heads", "attention heads"),
        ("qk", "query/key dims per head"),
        ("v", "value dims per head"),
        ("mlp", "MLP neurons"),
    ):
        p.add_argument(
            f"--keep-{name}", type=ratio, metavar="R", help=f"fraction of {what} kept (default: all)"
        )
    p.add_argument(
        "--keep-embed",
        type=ratio,
        metavar="R",
        help="fraction of the residual (embedding) width kept, in every layer (default: all)",
    )
    p.add_argument("--drop-attn", type=count, metavar="N", help="attention sub-layers to remove (default: 0)")
    p.add_argument(
        "--drop-act", type=count, metavar="N", help="MLP activations to remove (fc1·fc2 merge; default: 0)"
    )
    p.add_argument(
        "--token-keep",
        type=ratio,
        metavar="R",
        help="fraction of patch tokens kept at each layer from --token-start on (default: all)",
    )
    p.add_argument(
        "--token-start",
        type=int,
        default=None,
        metavar="L",
        help="first layer that prunes tokens (default: ⌈depth/4⌉, where EViT starts)",
    )
    p.add_argument("--align", type=int, default=8, help="round widths to multiples of this (default: 8)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument(
        "--budget-macs",
        type=argtypes.budget,
        metavar="B",
        help="move the asked-for dimensions so MACs land just under B (a fraction of dense if <= 1)",
    )
    budget.add_argument("--budget-params", type=argtypes.budget, metavar="B", help="the same for parameters")
    p.add_argument(
        "--data", default="digits", help="calibration data for data-driven criteria (default: digits)"
    )
    p.add_argument(
        "--calibration-batches", type=int, default=4, metavar="N", help="calibration batches (default: 4)"
    )
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

    p = commands.add_parser("train-dense", help="train (once, cached) or load the dense model of a config")
    p.add_argument(
        "config", metavar="CONFIG.yaml", help="a search spec or Ray cluster YAML (metadata.vitprune)"
    )
    p.add_argument("--out", metavar="DIR", help="also write the dense model directory here")
    p.set_defaults(func=cmd_train_dense)

    p = commands.add_parser("evaluate", help="accuracy, MACs, params and latency of a pruned model (JSON)")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument(
        "--data",
        default="digits",
        help="digits | imagefolder:PATH | cifar10:PATH | cifar100:PATH | mnist:PATH | fashion-mnist:PATH",
    )
    p.add_argument(
        "--dense", type=Path, metavar="DIR", help="the dense model: teacher, accuracy and latency ratios"
    )
    p.add_argument("--finetune-epochs", type=int, default=0, metavar="N", help="fine-tune first (default: 0)")
    p.add_argument("--split", default="search-val", choices=["search-val", "test"])
    p.add_argument("--batch-size", type=int, default=32, help="latency batch size (default: 32)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_evaluate)

    from vitprune.search.commands import add_commands

    add_commands(commands)

    p = commands.add_parser("schema", help="print the JSON Schema of policy files")
    p.set_defaults(func=cmd_schema)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # BoTorch and GPyTorch still call torch.jit.script, which torch 2.15 deprecates at import time.
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.script.*")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    func: Command = args.func
    try:
        return func(args) or 0
    except InputError as error:
        console.print(f"vitprune: error: {one_line(error) or type(error).__name__}", markup=False)
        return 2
    except KeyboardInterrupt:
        console.print("vitprune: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
