"""Can search-val tell a search's best policies apart? (issue 13) Each named trial's policy of a
finished search is fine-tuned again from the dense weights with the race's recipe
(``benchmarks/peers_recipe.py``: the search's own fine-tune, seeds 0, 1, …) and measured on
search-val and on test, so the two rankings can be compared with fine-tune noise averaged out.

The dense model, data and fine-tune are the run's own (its ``spec.json``; the dense model comes
from ``$VITPRUNE_CACHE``, trained once if missing).

    python benchmarks/refit_trials.py RUN_DIR --trials 21 10 1 --seeds 5 --out refit.json
    python benchmarks/refit_trials.py RUN_DIR --seeds 3 --seed0 100   # every completed trial

Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from peers_recipe import finetune_and_measure, mean_sd
from peers_setup import log, report_header, trial_rows, write_report

from vitprune.evaluators.surgery import apply_policy
from vitprune.evaluators.trial import cached_context
from vitprune.search.rundir import RunDir
from vitprune.search.spec import SearchSpec
from vitprune.spaces import InputError, Policy


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished search's run directory")
    parser.add_argument("--trials", type=int, nargs="+", help="trial indices (default: every completed one)")
    parser.add_argument("--seeds", type=int, default=5, help="fine-tune seeds per policy")
    parser.add_argument("--seed0", type=int, default=0, help="the first fine-tune seed (then seed0 + 1, ...)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1, as the race's fine-tunes: tiny models on 2 loaded cores "
        "slow down badly with a second thread)",
    )
    parser.add_argument("--out", type=Path, help="write every figure as JSON")
    return parser.parse_args(argv)


def completed_trials(run: RunDir) -> list[int]:
    """The indices of the run's trials that completed (their row in ``trials.csv``)."""
    return [int(row["trial"]) for row in trial_rows(run, status="COMPLETED")]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = RunDir(args.run_dir)
    try:  # every input checked before the dense model is loaded
        spec = SearchSpec.model_validate_json(run.spec.read_text())
        trials = args.trials if args.trials is not None else completed_trials(run)
        policies = {t: Policy.from_json((run.trial(t) / "policy.json").read_text()) for t in trials}
    except (OSError, ValueError, InputError) as error:
        print(f"refit_trials: {run.root}: {error}".splitlines()[0], file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    context = cached_context(spec.model, spec.data, spec.dense_training)
    report = report_header("refit_trials", 1, argv) | {"run_dir": str(run.root), "trials": {}}
    lines = ["| trial | structure | search-val | test |", "|---|---|---|---|"]
    for trial, policy in policies.items():
        model = apply_policy(context.dense, policy)
        seeds = range(args.seed0, args.seed0 + args.seeds)
        configs = [spec.finetune.model_copy(update={"seed": seed}) for seed in seeds]
        runs = [finetune_and_measure(model, context, config) for config in configs]
        scores = {split: mean_sd([r[split]["accuracy"] for r in runs]) for split in ("search-val", "test")}
        report["trials"][str(trial)] = {"structure": policy.summary(), "seeds": list(seeds), **scores}
        write_report(args.out, report)
        cells = [f"{scores[s]['mean']:.4f} ± {scores[s]['sd']:.4f}" for s in ("search-val", "test")]
        lines.append(f"| {trial} | {policy.summary()} | {' | '.join(cells)} |")
        log(lines[-1])
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
