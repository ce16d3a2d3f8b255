"""Does a search find better policies, and does it pick the best it found? (issue 13)

Every completed trial of finished searches is fine-tuned again from the dense weights with seeds
that no trial used (``benchmarks/refit_trials.py RUN --seeds 3 --seed0 100 --out REFIT.json``,
the recipe of ``gp_vs_random.py``), and its mean test accuracy over those fine-tunes stands for
the policy's worth. This script reads those files and, per search, sets the trial the search
picked against the pool it picked from:

- *pick*: the worth of the trial with the best search-val score (Ax's best, ``best_policy.json``);
- *oracle*: the best worth of any trial in the pool; *top 5*: the mean worth of the 5 best;
- ρ: Spearman correlation of the trials' search-val scores with their worth;
- the trials that two other rules would pick, from the same scores: the highest posterior mean
  of a GP fitted to the points and scores (BoTorch's ``SingleTaskGP`` as Ax fits it, outcomes
  standardised), with the noise inferred, or with the noise known (each score's binomial variance
  ``p (1 − p) / n`` over the ``n`` search-val images).

    python benchmarks/pick_vs_pool.py REFIT.json ... --out pool.json

Prints a Markdown table per search and a summary per method.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from peers_setup import report_header, trial_rows, write_report
from scipy.stats import spearmanr

from vitprune.search.rundir import RunDir

RULES = ("search-val", "GP mean, noise inferred", "GP mean, noise known")
TOP = 5


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("refits", type=Path, nargs="+", help="refit_trials.py JSON files, one per search")
    parser.add_argument("--out", type=Path, help="write every figure as JSON")
    return parser.parse_args(argv)


def load(refit_path: Path) -> dict[str, Any]:
    """One search: per completed trial its point, search-val score and worth (refit test mean)."""
    refit = json.loads(refit_path.read_text())
    run = RunDir(Path(refit["run_dir"]))
    spec = json.loads(run.spec.read_text())
    rows = {int(row["trial"]): row for row in trial_rows(run, status="COMPLETED")}
    missing = sorted(set(rows) - {int(t) for t in refit["trials"]})
    if missing:
        raise ValueError(f"{refit_path}: trials {missing} of {run.root} were not fine-tuned again")
    names = [key for key in next(iter(rows.values())) if key.startswith("point_")]
    trials = sorted(rows)
    return {
        "name": run.root.name,
        "method": spec["generation"]["method"],
        "picked": json.loads((run.root / "best_policy.json").read_text())["trial"],
        "trials": trials,
        "points": [[float(rows[t][name]) for name in names] for t in trials],
        "scores": [float(rows[t]["accuracy"]) for t in trials],
        "nodes": [rows[t]["node"] for t in trials],
        "worth": [refit["trials"][str(t)]["test"]["mean"] for t in trials],
        "search_val_images": search_val_images(run),
    }


def search_val_images(run: RunDir) -> int:
    """How many images the run's search-val split holds (from its dense model's data)."""
    from vitprune.evaluators.trial import cached_context
    from vitprune.search.spec import SearchSpec

    spec = SearchSpec.model_validate_json(run.spec.read_text())
    context = cached_context(spec.model, spec.data, spec.dense_training)
    return len(context.data.search_val)


def gp_mean(points: list[list[float]], scores: list[float], *, images: int | None) -> list[float]:
    """Posterior mean at the trials' points of a GP fitted to their scores; ``images`` set: the
    noise is each score's binomial variance over that many images, else it is inferred."""
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms import Standardize
    from gpytorch.mlls import ExactMarginalLogLikelihood

    x = torch.tensor(points, dtype=torch.float64)
    y = torch.tensor(scores, dtype=torch.float64).unsqueeze(-1)
    noise = {}
    if images is not None:
        p = y.clamp(1 / images, 1 - 1 / images)
        noise["train_Yvar"] = p * (1 - p) / images
    torch.manual_seed(0)
    model = SingleTaskGP(x, y, outcome_transform=Standardize(m=1), **noise)
    fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    with torch.no_grad():
        return model.posterior(x).mean.squeeze(-1).tolist()


def analyse(search: dict[str, Any]) -> dict[str, Any]:
    worth, scores, trials = search["worth"], search["scores"], search["trials"]
    by_rule = {
        "search-val": scores,
        "GP mean, noise inferred": gp_mean(search["points"], scores, images=None),
        "GP mean, noise known": gp_mean(search["points"], scores, images=search["search_val_images"]),
    }
    best = {rule: max(range(len(trials)), key=lambda i: values[i]) for rule, values in by_rule.items()}
    picks = {rule: trials[i] for rule, i in best.items()}
    worth_of = dict(zip(trials, worth, strict=True))
    gp_trials = [w for w, node in zip(worth, search["nodes"], strict=True) if node == "GP"]
    return {
        "name": search["name"],
        "method": search["method"],
        "trials": len(trials),
        "picked": search["picked"],
        "pick": worth_of[search["picked"]],
        "oracle": max(worth),
        "top": statistics.mean(sorted(worth)[-TOP:]),
        "gp_trials": statistics.mean(gp_trials) if gp_trials else None,
        "rho": float(spearmanr(scores, worth).statistic),
        "rules": {rule: {"trial": trial, "worth": worth_of[trial]} for rule, trial in picks.items()},
    }


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| search | picked trial | its worth | oracle | top 5 | GP trials | ρ | GP mean (inferred) | "
        "GP mean (known noise) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        rules = [row["rules"][rule] for rule in RULES[1:]]
        gp = "–" if row["gp_trials"] is None else f"{row['gp_trials']:.4f}"
        lines.append(
            f"| {row['name']} | {row['picked']} | {row['pick']:.4f} | {row['oracle']:.4f} | "
            f"{row['top']:.4f} | {gp} | {row['rho']:.2f} | "
            + " | ".join(f"{rule['trial']}: {rule['worth']:.4f}" for rule in rules)
            + " |"
        )
    lines += [
        "",
        "| method | searches | pick | oracle | top 5 | GP mean (inferred) | GP mean (known noise) |",
        "|---|---|---|---|---|---|---|",
    ]
    for method in sorted({row["method"] for row in rows}):
        group = [row for row in rows if row["method"] == method]

        def mean(key: str, group: list[dict[str, Any]] = group) -> str:
            return f"{statistics.mean(row[key] for row in group):.4f}"

        rules = [f"{statistics.mean(row['rules'][rule]['worth'] for row in group):.4f}" for rule in RULES[1:]]
        lines.append(
            f"| {method} | {len(group)} | {mean('pick')} | {mean('oracle')} | {mean('top')} | "
            + " | ".join(rules)
            + " |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:  # every input read before a model is loaded
        refits = [json.loads(path.read_text()) for path in args.refits]
        for path, refit in zip(args.refits, refits, strict=True):
            if not str(refit.get("format", "")).startswith("vitprune.refit_trials/"):
                raise ValueError(f"{path}: not a refit_trials.py report")
        searches = [load(path) for path in args.refits]
    except (OSError, ValueError, KeyError) as error:
        print(f"pick_vs_pool: {error}".splitlines()[0], file=sys.stderr)
        return 2
    rows = [analyse(search) for search in searches]
    write_report(args.out, report_header("pick_vs_pool", 1, argv) | {"searches": rows})
    print("\n".join(table(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
