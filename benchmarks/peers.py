"""The race against Torch-Pruning (issue 13): vitprune and Torch-Pruning 1.6 side by side in one run.

Accuracy, on the embedded digits model (``search.yaml``'s model, data and dense training, cached
under ``$VITPRUNE_CACHE``; ``--config benchmarks/fashion-mnist.yaml`` runs it on Fashion-MNIST's
10,000 test images), at each MACs budget; every contender starts from the dense weights,
lands at or below the budget, and is fine-tuned with the same recipe (``search.yaml``'s
``finetune``: 5 epochs, soft distillation T=2 α=0.5, AdamW lr 1e-3 cosine) once per seed:

- ``torch-pruning``: its timm ViT recipe and the variants of its example script (L1/L2/Taylor ×
  head dims / whole heads / bottleneck), each fine-tuned with the first seed; the variant with
  the best search-val accuracy (then the lowest search-val loss) gets every seed;
- ``uniform-all``: one keep ratio for every dimension the search space knows, by the criteria;
- ``uniform-widths``: the same over heads, q/k, v and MLP only;
- ``matched``: ``uniform-all`` at the MACs Torch-Pruning's staircase actually landed on;
- ``uniform-schedules``: ``uniform-all`` with each token schedule (tokens dropped from each layer
  on in turn, or not at all), every seed, recorded as ``uniform-all/SCHEDULE``; the schedule with
  the best search-val at the first seed (Torch-Pruning's rule for its variants) is recorded again
  as ``uniform-schedules``;
- ``torch-pruning-slack``: for information, Torch-Pruning chosen the same way but allowed
  ``--tp-slack`` (1 %) over the budget: its staircase often has a step just above it;
- ``search``: a full search (GP-EI, ``search.yaml``'s trials), whose best *policy* is fine-tuned
  again from the dense weights with the common recipe.

Latency, on DeiT-S with random weights (fp32, CPU): see ``peers_latency.py``.

    python benchmarks/peers.py --out peers.json                 # everything (about 1.5 h on 2 cores)
    python benchmarks/peers.py --accuracy --contenders torch-pruning uniform-all --seeds 3
    python benchmarks/peers.py --latency --batch-sizes 1 32
    python benchmarks/peers.py --quick --out /tmp/peers.json    # tiny models, seconds (the tests)

Prints Markdown tables; ``--out`` writes every figure as JSON (rewritten after each contender).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import gpu_torch_pruning as recipe
import peers_torch_pruning as tp
import torch
from peers_recipe import finetune_and_measure, summarise
from peers_setup import QUICK_LATENCY_ARGS, log, quick_spec, report_header, write_report
from peers_tables import goals, markdown
from peers_vitprune import (
    criteria_scores,
    kept_search_point,
    policy_record,
    run_search,
    token_schedules,
    trial_model_test,
    uniform_policy,
)

from vitprune.argtypes import whole_number
from vitprune.evaluators.criteria import calibration_batches
from vitprune.evaluators.surgery import apply_policy
from vitprune.evaluators.trial import cached_context
from vitprune.search.spec import SearchSpec, load_spec
from vitprune.spaces import Scores
from vitprune.spaces.budget import Fit
from vitprune.spaces.space import ALL_DIMENSIONS, WIDTHS

CONTENDERS = (
    "torch-pruning",
    "uniform-all",
    "uniform-widths",
    "matched",
    "uniform-schedules",
    "torch-pruning-slack",
    "search",
)
QUICK_VARIANTS = ("l1/head_dims", "l2/heads", "taylor/bottleneck")
SELECTION = "Torch-Pruning variant: best search-val accuracy at seed 0, then lowest search-val loss"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--config", default="search.yaml")
    add("--accuracy", action="store_true", help="the accuracy race on the config's data (default: both)")
    add("--latency", action="store_true", help="the DeiT-S latency race (default: both parts)")
    add("--budgets", type=float, nargs="+", default=[0.5, 0.25], help="fractions of dense MACs")
    add("--seeds", type=int, default=3, help="fine-tune seeds per contender (0, 1, ...)")
    add(
        "--test-seed",
        type=whole_number(low=0),
        default=0,
        help="digits: which stratified 20 %% is test (data.test_seed)",
    )
    add("--epochs", type=int, help="fine-tune epochs (default: the config's)")
    add("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    add("--tp-variants", nargs="+", default=[v.key for v in tp.ALL_VARIANTS], help="IMPORTANCE/STRUCTURE")
    add("--tp-max-evaluations", type=int, default=12, help="prunes per search on Torch-Pruning's ratio")
    add("--tp-slack", type=float, default=0.01, help="torch-pruning-slack: allowed share over the budget")
    add("--search-trials", type=int, help="trials per search (default: the config's)")
    add("--search-dir", type=Path, help="keep the search runs here (default: a new temporary folder)")
    add("--search-dimensions", nargs="+", choices=list(ALL_DIMENSIONS), help="default: the config's space")
    add("--search-runs", type=Path, help="--latency alone: time the best points of the searches kept here")
    add("--dimensions", nargs="+", default=list(ALL_DIMENSIONS), help="of uniform-all (default: all)")
    add("--train-threads", type=int, default=1, help="torch threads while fine-tuning")
    add("--latency-model", default="deit_small_patch16_224")
    add("--latency-tp-structures", nargs="+", choices=list(tp.STRUCTURES), help="default: recipe + chosen")
    add("--batch-sizes", type=int, nargs="+", default=[1, 32])
    add("--threads", type=int, default=2, help="torch threads while timing")
    add("--warmup", type=int, default=3)
    add("--repeats", type=int, default=10)
    add("--quick", action="store_true", help="tiny models and settings (the tests)")
    add("--out", type=Path, help="write the JSON report here")
    args = parser.parse_args(argv)
    if not (args.accuracy or args.latency):
        args.accuracy = args.latency = True
    if args.quick:
        args.seeds = min(args.seeds, 1)
        if args.tp_variants == [v.key for v in tp.ALL_VARIANTS]:
            args.tp_variants = list(QUICK_VARIANTS)
        args.tp_max_evaluations = min(args.tp_max_evaluations, 6)
        args.batch_sizes, args.warmup, args.repeats = [1, 2], 1, 2
    try:
        args.tp_variants = [tp.Variant.parse(text) for text in args.tp_variants]
    except ValueError as error:
        parser.error(f"--tp-variants: {error}")
    return args


def label(budget: float) -> str:
    return f"{budget:.0%}"


class Race:
    """The accuracy race: contenders at every budget, fine-tuned alike, checkpointed to JSON."""

    def __init__(self, spec: SearchSpec, args: argparse.Namespace, report: dict[str, Any]) -> None:
        self.spec, self.args, self.report = spec, args, report
        epochs = {} if args.epochs is None else {"epochs": args.epochs}
        self.finetune = spec.finetune.model_copy(update=epochs)
        self.context = cached_context(spec.model, spec.data, spec.dense_training)
        self.dense_macs = recipe.count_macs(self.context.dense)
        self.seeds = range(args.seeds)
        self.out = report.setdefault("accuracy", {})
        self.out |= {
            "model": spec.model.name,
            "model_args": spec.model.args,
            "data": {
                "source": spec.data.source,
                "path": None if spec.data.path is None else str(spec.data.path),
                "images": {
                    split: len(getattr(self.context.data, split.replace("-", "_")))
                    for split in ("train", "search-val", "test")
                },
            },
            "dense": {"test": self.context.dense_test_accuracy, "macs": self.dense_macs},
            "test_seed": spec.data.test_seed,
            "recipe": json.loads(self.finetune.model_dump_json()) | {"seeds": list(self.seeds)},
            "selection": SELECTION,
            "budgets": {},
        }

    def tune(self, model: torch.nn.Module, seeds: range) -> list[dict[str, Any]]:
        """The recipe, once per seed, each from ``model``'s own weights."""
        configs = [self.finetune.model_copy(update={"seed": seed}) for seed in seeds]
        return [finetune_and_measure(model, self.context, config) for config in configs]

    def record(self, budget: float, name: str, model: torch.nn.Module, runs: list, **extra: Any) -> None:
        entry = {"macs_ratio": recipe.count_macs(model) / self.dense_macs, "runs": runs}
        entry |= summarise(runs) | extra
        self.out["budgets"][label(budget)]["contenders"][name] = entry
        macs_ratio, test = entry["macs_ratio"], entry["test"]
        log(f"{label(budget)} {name}: MACs {macs_ratio:.3f}, test {test['mean']:.4f} ± {test['sd']:.4f}")
        write_report(self.args.out, self.report)

    def policy(self, budget: float, name: str, fit: Fit, **extra: Any) -> None:
        model = apply_policy(self.context.dense, fit.policy)
        self.record(
            budget, name, model, self.tune(model, self.seeds), **extra, **policy_record(fit.policy, fit)
        )

    def run(self) -> None:
        args, base = self.args, self.context.base
        dimensions = list(args.dimensions)
        scores = criteria_scores(self.spec, self.context, sorted(set(dimensions) | set(WIDTHS)))
        for budget in args.budgets:
            limit = budget * self.dense_macs
            self.out["budgets"][label(budget)] = {"target": budget, "contenders": {}}
            landed = None
            if "torch-pruning" in args.contenders:
                landed = self.torch_pruning(budget, limit, name="torch-pruning")
            for name, dims in (("uniform-all", dimensions), ("uniform-widths", list(WIDTHS))):
                if name in args.contenders:
                    fit = uniform_policy(base, scores, budget_macs=limit, dimensions=dims)
                    self.policy(budget, name, fit, dimensions=dims)
            if "matched" in args.contenders and landed is not None:
                fit = uniform_policy(base, scores, budget_macs=landed, dimensions=dimensions)
                self.policy(budget, "matched", fit, dimensions=dimensions)
            if "uniform-schedules" in args.contenders:
                self.uniform_schedules(budget, limit, scores, dimensions)
            if "torch-pruning-slack" in args.contenders:
                self.torch_pruning(budget, limit * (1 + args.tp_slack), name="torch-pruning-slack")
            if "search" in args.contenders:
                self.search(budget)

    def uniform_schedules(self, budget: float, limit: float, scores: Scores, dimensions: list[str]) -> None:
        """The uniform policy with each token schedule of :func:`token_schedules`, every seed,
        recorded as ``uniform-all/SCHEDULE``; then the schedule chosen by Torch-Pruning's rule for
        its variants (best search-val accuracy at the first seed, then the lowest search-val loss;
        never test) again as ``uniform-schedules``."""
        candidates = []
        for schedule, (dims, start) in token_schedules(self.context.base.depth, dimensions).items():
            fit = uniform_policy(
                self.context.base, scores, budget_macs=limit, dimensions=dims, token_start=start
            )
            model = apply_policy(self.context.dense, fit.policy)
            runs = self.tune(model, self.seeds)
            extra = {
                "schedule": schedule,
                "dimensions": list(dims),
                "token_start": fit.token_start,
                "keep_tokens": [layer.keep_tokens for layer in fit.policy.layers],
            } | policy_record(fit.policy, fit)
            self.record(budget, f"uniform-all/{schedule}", model, runs, **extra)
            search_val = runs[0]["search-val"]
            candidates.append(((search_val["accuracy"], -search_val["cross_entropy"]), model, runs, extra))
        _, model, runs, extra = max(candidates, key=lambda candidate: candidate[0])  # ties: the first
        self.record(budget, "uniform-schedules", model, runs, **extra)

    def torch_pruning(self, budget: float, limit: float, *, name: str) -> float | None:
        """Every variant at the first seed, the best by search-val at every seed, recorded as
        ``name``; the MACs it landed on. Each variant's row goes to ``<name>_variants``."""
        dense, args = self.context.dense, self.args
        calibration = calibration_batches(
            self.context.data.calibration_loader(seed=self.spec.seed), self.spec.criteria.calibration_batches
        )
        rows = self.out["budgets"][label(budget)].setdefault(f"{name.replace('-', '_')}_variants", [])
        found: dict[str, recipe.Pruned] = {}
        candidates = []
        for variant in args.tp_variants:
            if variant.structure not in found:  # MACs depend on the structure, not on the importance
                build = functools.partial(tp.prune, dense, variant=tp.Variant("l1", variant.structure))
                found[variant.structure] = tp.prune_to_macs(
                    build, limit, dense_macs=self.dense_macs, max_evaluations=args.tp_max_evaluations
                )
            pruned = found[variant.structure]
            row = {
                "variant": variant.key,
                "label": variant.label,
                "ratio": pruned.ratio,
                "reached": pruned.reached,
            }
            if not pruned.reached:
                rows.append(
                    row | {"macs_ratio": pruned.macs / self.dense_macs, "note": "cannot reach the budget"}
                )
                continue
            model = tp.prune(dense, pruned.ratio, variant, calibration=calibration)
            runs = self.tune(model, self.seeds[:1])
            macs_ratio = recipe.count_macs(model) / self.dense_macs
            rows.append(row | {"macs_ratio": macs_ratio, "structure": tp.structure(model), "runs": runs})
            search_val = runs[0]["search-val"]
            candidates.append(((search_val["accuracy"], -search_val["cross_entropy"]), variant, model, runs))
            accuracy = search_val["accuracy"]
            log(f"{label(budget)} {name} {variant.key}: MACs {macs_ratio:.3f}, search-val {accuracy:.4f}")
            write_report(args.out, self.report)
        if not candidates:
            return None
        _, variant, model, runs = max(candidates, key=lambda candidate: candidate[0])  # ties: the first
        runs = runs + self.tune(model, self.seeds[1:])
        extra = {"variant": variant.key, "variant_label": variant.label, "structure": tp.structure(model)}
        self.record(budget, name, model, runs, limit_ratio=limit / self.dense_macs, **extra)
        return recipe.count_macs(model)

    def search(self, budget: float) -> None:
        """A search at ``budget``; its best policy, fine-tuned again from the dense weights."""
        trials = self.args.search_trials or self.spec.trials.total
        root = self.args.search_dir or Path(tempfile.mkdtemp(prefix="vitprune-peers-"))
        run_dir = root / f"search-{budget * 100:g}pct"
        log(f"{label(budget)} search: {trials} trials in {run_dir}")
        spec = self.spec
        if self.args.search_dimensions:
            space = spec.space.model_copy(update={"dimensions": list(self.args.search_dimensions)})
            spec = spec.model_copy(update={"space": space})
        found = run_search(spec, fraction=budget, trials=trials, run_dir=run_dir, progress=log)
        model = apply_policy(self.context.dense, found["policy"])
        record = found["record"] | {"trial_model_test": trial_model_test(found["trial_model"], self.context)}
        runs = self.tune(model, self.seeds)
        self.record(budget, "search", model, runs, search=record, **policy_record(found["policy"]))


def latency(args: argparse.Namespace, report: dict[str, Any]) -> dict[str, Any]:
    """The DeiT-S race, with the search's points and Torch-Pruning's chosen structures if any."""
    from peers_latency import race_latency

    spec, _ = load_spec(args.config)
    budgets = report.get("accuracy", {}).get("budgets", {}).values()
    points = {}
    for entry in budgets:  # the searches of this run
        found = entry["contenders"].get("search", {}).get("search", {})
        if found.get("point"):
            space = spec.space.model_copy(update={"dimensions": found["dimensions"]})
            points[entry["target"]] = (space, found["point"])
    for budget in args.budgets if args.search_runs and not points else []:  # or of an earlier run
        kept = kept_search_point(args.search_runs, budget)
        if kept:
            points[budget] = kept
    chosen = [
        e["contenders"]["torch-pruning"]["variant"] for e in budgets if "torch-pruning" in e["contenders"]
    ]
    structures = args.latency_tp_structures or [
        tp.RECIPE.structure,
        *(tp.Variant.parse(v).structure for v in chosen),
    ]
    if recipe.version() is None:
        log("latency: torch-pruning is not installed: timing vitprune's policies only")
        structures = []
    return race_latency(
        model_name=args.latency_model,
        model_args=QUICK_LATENCY_ARGS if args.quick else {},
        budgets=args.budgets,
        batch_sizes=args.batch_sizes,
        dimensions=args.dimensions,
        structures=list(dict.fromkeys(structures)),
        search_points=points,
        warmup=args.warmup,
        repeats=args.repeats,
        tp_max_evaluations=args.tp_max_evaluations,
        log=log,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spec, _ = load_spec(args.config)
    spec = quick_spec(spec) if args.quick else spec
    spec = spec.model_copy(update={"data": spec.data.model_copy(update={"test_seed": args.test_seed})})
    if (
        {"torch-pruning", "torch-pruning-slack"} & set(args.contenders)
        and args.accuracy
        and not recipe.version()
    ):
        print(
            "peers: error: --contenders: torch-pruning is not installed "
            "(pip install 'vitprune[benchmarks]', or leave it out of --contenders)",
            file=sys.stderr,
        )
        return 2
    started = time.perf_counter()
    report: dict[str, Any] = {
        **report_header("peers", 1, argv),
        "quick": args.quick,
        "budgets": args.budgets,
    }
    threads, ray_was_up = torch.get_num_threads(), _ray_up()
    try:
        if args.accuracy:
            torch.set_num_threads(args.train_threads)
            Race(spec, args, report).run()
        if args.latency:
            torch.set_num_threads(args.threads)
            report["latency"] = latency(args, report)
    finally:
        torch.set_num_threads(threads)
        if not ray_was_up and _ray_up():  # the private Ray a search of this process started
            import ray

            ray.shutdown()
    report["goals"] = goals(report)
    report["wall_s"] = time.perf_counter() - started
    report["environment"]["load_average_end"] = os.getloadavg()
    write_report(args.out, report)
    print(markdown(report))
    return 0


def _ray_up() -> bool:
    if "ray" not in sys.modules:
        return False
    import ray

    return ray.is_initialized()


if __name__ == "__main__":
    sys.exit(main())
