"""The engine commands of ``vitprune``: policy, cost, apply, train-dense, evaluate, schema.

Each takes the parsed arguments (see ``vitprune.cli``), prints machine-readable results (JSON) on
stdout and human-readable lines on stderr, and raises :class:`InputError` for bad input. Torch is
imported inside the commands, so that ``vitprune --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console

from vitprune.spaces import InputError, Policy, cost

console = Console(stderr=True, highlight=False, soft_wrap=True)


def _summary(policy: Policy) -> str:
    pruned, dense = cost(policy), cost(Policy.keep_all(policy.base))
    return (
        f"MACs {pruned.macs / 1e9:.3f} G ({pruned.macs / dense.macs:.1%} of dense), "
        f"params {pruned.params / 1e6:.2f} M ({pruned.params / dense.params:.1%})"
    )


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
        "embed": args.keep_embed,
    }
    return frozenset(dim for dim, value in given.items() if value is not None)


def cmd_policy(args: argparse.Namespace) -> None:
    from vitprune.evaluators.dense import load_dense
    from vitprune.spaces import build_policy, default_token_start, macs, params, uniform_ratios
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
    token_start = default_token_start(base.depth) if args.token_start is None else args.token_start
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
    embed = 1.0 if args.keep_embed is None else args.keep_embed
    scores = _criterion_scores(args, model, base)
    dense = Policy.keep_all(base)
    if budget_given:
        metric, value, measure = (
            ("macs", args.budget_macs, macs)
            if args.budget_macs is not None
            else ("params", args.budget_params, params)
        )
        proposal = Proposal(
            ratios=ratios,
            free=requested,
            embed=embed,
            drop_attn=drop_attn,
            drop_act=drop_act,
            token_start=token_start,
        )
        budget = Budget(metric, _budget_limit(value, measure(dense)))
        fit = project(proposal, base=base, scores=scores, budget=budget, measure=measure, align=args.align)
        if "tokens" in requested and fit.token_start != token_start:
            console.print(
                f"budget: tokens drop from layer {fit.token_start}, not {token_start}: "
                "no later start reaches the budget"
            )
        if fit.shortfall:
            console.print(f"budget: {fit.shortfall}")
        policy = fit.policy
    else:
        policy = build_policy(
            base, scores, ratios, drop_attn=drop_attn, drop_act=drop_act, align=args.align, embed=embed
        )
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
    from vitprune.spaces.policy_json import json_schema

    print(json.dumps(json_schema(), indent=2))
