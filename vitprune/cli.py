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

from vitprune import __version__
from vitprune.spaces import InputError, Policy, cost
from vitprune.spaces.errors import one_line

console = Console(stderr=True, highlight=False, soft_wrap=True)

Command = Callable[[argparse.Namespace], int | None]

# The registered criteria (vitprune.evaluators.criteria.criterion_names(), which imports torch):
# named here so that `vitprune --help` answers at once; a test keeps the two equal.
CRITERIA = ("depth", "hsic", "magnitude", "random", "snp", "star", "taylor")


def _ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a ratio in [0, 1], got {text}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _budget(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"must be a fraction of dense in (0, 1] or an absolute count > 1, got {text}"
        )
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


def _criterion_scores(args: argparse.Namespace, model: Any, base: Any) -> Any:
    """Scores of ``--criterion`` for the dimensions it scores, magnitude for the others."""
    from vitprune.evaluators.config import DataConfig, parse_section
    from vitprune.evaluators.criteria import calibration_batches, compute_scores
    from vitprune.evaluators.data import load_data
    from vitprune.evaluators.dense import cache_root
    from vitprune.spaces import Scores
    from vitprune.spaces.scores import DIMENSIONS

    batches = None
    if args.criterion not in ("magnitude", "random"):
        data = load_data(parse_section(DataConfig, args.data, "--data"), base)
        batches = calibration_batches(data.calibration_loader(seed=0), args.calibration_batches)
    cache_dir = cache_root() / "scores"
    chosen = compute_scores(args.criterion, model, base=base, data=batches, cache_dir=cache_dir)
    if args.criterion == "magnitude":
        return chosen
    fallback = compute_scores("magnitude", model, base=base, cache_dir=cache_dir)
    by_dimension = {
        dim: chosen if any(getattr(chosen, f) is not None for f in fields) else fallback
        for dim, fields in DIMENSIONS.items()
    }
    others = sorted(dim for dim, scores in by_dimension.items() if scores is fallback and dim != "tokens")
    if others:
        console.print(f"{args.criterion} does not score {', '.join(others)}: magnitude ranks those")
    return Scores.combine(by_dimension)


def _budget_limit(value: float, dense: float) -> float:
    """A budget given as a fraction of dense (<= 1) or as an absolute count (> 1)."""
    return value * dense if value <= 1 else value


def _requested(args: argparse.Namespace) -> frozenset[str]:
    """The dimensions the user asked to prune: the budget projection may move only these."""
    given = {
        "heads": args.keep_heads,
        "qk": args.keep_qk,
        "v": args.keep_v,
        "mlp": args.keep_mlp,
        "tokens": args.token_keep,
        "depth": args.drop_attn if args.drop_attn is not None else args.drop_act,
    }
    return frozenset(dim for dim, value in given.items() if value is not None)


def cmd_policy(args: argparse.Namespace) -> None:
    from vitprune.evaluators.dense import load_dense
    from vitprune.spaces import build_policy, macs, params, uniform_ratios
    from vitprune.spaces.budget import Budget, Proposal, project
    from vitprune.spaces.files import write_text_atomic

    requested = _requested(args)
    budget_given = args.budget_macs is not None or args.budget_params is not None
    if budget_given and not requested:
        raise InputError(
            "--budget-macs/--budget-params: say what to prune (--keep-*, --token-keep, --drop-*)"
        )
    model, base = load_dense(
        args.model, checkpoint=args.checkpoint, pretrained=args.pretrained, model_args=dict(args.model_arg)
    )
    token_start = base.depth // 3 if args.token_start is None else args.token_start
    ratios = uniform_ratios(
        base.depth,
        heads=1.0 if args.keep_heads is None else args.keep_heads,
        qk=1.0 if args.keep_qk is None else args.keep_qk,
        v=1.0 if args.keep_v is None else args.keep_v,
        mlp=1.0 if args.keep_mlp is None else args.keep_mlp,
        token_keep=1.0 if args.token_keep is None else args.token_keep,
        token_start=token_start,
    )
    drop_attn, drop_act = args.drop_attn or 0, args.drop_act or 0
    scores = _criterion_scores(args, model, base)
    dense = Policy.keep_all(base)
    if budget_given:
        metric, value, measure = (
            ("macs", args.budget_macs, macs)
            if args.budget_macs is not None
            else ("params", args.budget_params, params)
        )
        proposal = Proposal(ratios=ratios, free=requested, drop_attn=drop_attn, drop_act=drop_act)
        budget = Budget(metric, _budget_limit(value, measure(dense)))
        fit = project(proposal, base=base, scores=scores, budget=budget, measure=measure, align=args.align)
        if fit.shortfall:
            console.print(f"budget: {fit.shortfall}")
        policy = fit.policy
    else:
        policy = build_policy(base, scores, ratios, drop_attn=drop_attn, drop_act=drop_act, align=args.align)
    write_text_atomic(args.output, policy.to_json())
    console.print(f"wrote {args.output}: {base.model}, {scores.criterion}; {_summary(policy)}")


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


def cmd_train_dense(args: argparse.Namespace) -> None:
    import shutil
    import tempfile
    from pathlib import Path

    from vitprune.evaluators.config import (
        DataConfig,
        DenseTrainingConfig,
        ModelConfig,
        parse_section,
        read_spec,
    )
    from vitprune.evaluators.dense import prepare_dense

    spec, prefix = read_spec(args.config)
    model = parse_section(ModelConfig, spec.get("model"), f"{prefix}model")
    data = parse_section(DataConfig, spec.get("data"), f"{prefix}data")
    training = parse_section(DenseTrainingConfig, spec.get("dense_training"), f"{prefix}dense_training")
    console.print(f"dense {model.name} on {data.source}: training or loading from the cache …")
    dense, _ = prepare_dense(model, data, training)
    report = {
        "model": dense.base.model,
        "test_accuracy": dense.test_accuracy,
        "train_seconds": dense.trained_seconds,
        "directory": str(dense.directory),
    }
    if args.out is not None and dense.directory.is_dir():
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        shutil.copytree(dense.directory, staging, dirs_exist_ok=True)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
        report["directory"] = str(out)
    print(json.dumps(report, indent=2))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from vitprune.evaluators import create_dense, load_pruned
    from vitprune.evaluators.config import DataConfig, FinetuneConfig, LatencyConfig, parse_section
    from vitprune.evaluators.data import load_data
    from vitprune.evaluators.dense import load_dense
    from vitprune.evaluators.trial import evaluate

    model, policy = load_pruned(args.model_dir)
    data = load_data(parse_section(DataConfig, args.data, "--data"), policy.base)
    if data.num_classes != policy.base.num_classes:
        raise InputError(
            f"--data: {data.num_classes} classes, but the model predicts {policy.base.num_classes}"
        )
    teacher = None
    if args.dense is not None:
        teacher, _ = load_dense(
            None if (args.dense / "policy.json").exists() else policy.base.model,
            checkpoint=args.dense,
            model_args=policy.base.model_args,
        )
    result = evaluate(
        model,
        policy,
        data=data,
        teacher=teacher if teacher is not None else create_dense(policy.base),  # latency reference
        finetune_config=(
            FinetuneConfig(epochs=args.finetune_epochs, kd={} if teacher is not None else None)
            if args.finetune_epochs
            else None
        ),
        latency_config=LatencyConfig(batch_size=args.batch_size, device=args.device),
        splits=(args.split,),
        compare_dense=True,
        device=args.device,
    )
    m, split = result.metrics, args.split.replace("-", "_")
    dense_cost = cost(Policy.keep_all(policy.base))
    report = {
        "split": args.split,
        "accuracy": m["accuracy"],
        "top5": m["top5"],
        "macs": m["macs"],
        "params": m["params"],
        "latency_ms": m["latency_ms"],
        "macs_ratio": m["macs_ratio"],
        "params_ratio": m["params_ratio"],
        "latency_ratio": m["latency_ratio"],
        "dense": {"macs": dense_cost.macs, "params": dense_cost.params, "latency_ms": m["dense_latency_ms"]},
        "latency": {key: m[key] for key in ("latency_ms", "latency_min_ms", "latency_max_ms")},
    }
    if teacher is not None:  # a random dense model's accuracy means nothing
        report["dense"]["accuracy"] = m[f"dense_{split}_accuracy"]
        report["accuracy_ratio"] = m["accuracy"] / m[f"dense_{split}_accuracy"]
    print(json.dumps(report, indent=2))


def cmd_schema(args: argparse.Namespace) -> None:
    from vitprune.spaces.policy import json_schema

    print(json.dumps(json_schema(), indent=2))


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
            f"--keep-{name}", type=_ratio, metavar="R", help=f"fraction of {what} kept (default: all)"
        )
    p.add_argument(
        "--drop-attn", type=_count, metavar="N", help="attention sub-layers to remove (default: 0)"
    )
    p.add_argument(
        "--drop-act", type=_count, metavar="N", help="MLP activations to remove (fc1·fc2 merge; default: 0)"
    )
    p.add_argument(
        "--token-keep",
        type=_ratio,
        metavar="R",
        help="fraction of patch tokens kept at each layer from --token-start on (default: all)",
    )
    p.add_argument(
        "--token-start",
        type=int,
        default=None,
        metavar="L",
        help="first layer that prunes tokens (default: depth // 3)",
    )
    p.add_argument("--align", type=int, default=8, help="round widths to multiples of this (default: 8)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument(
        "--budget-macs",
        type=_budget,
        metavar="B",
        help="move the asked-for dimensions so MACs land just under B (a fraction of dense if <= 1)",
    )
    budget.add_argument("--budget-params", type=_budget, metavar="B", help="the same for parameters")
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
        "--data", default="digits", help="digits | imagefolder:PATH | cifar10:PATH | cifar100:PATH"
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
