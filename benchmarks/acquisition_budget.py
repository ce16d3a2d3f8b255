"""Is the acquisition optimiser what limits GP-EI? (issue 13)

Replays finished searches: after every second trial (the searcher asks for two at a time), the
search's GP (BoTorch ``SingleTaskGP`` on the points in [0, 1], outcomes standardised, each trial's
binomial standard error as known noise) is fitted on the trials so far, and qLogNEI is maximised
by the light optimiser of ``search.yaml`` (2 restarts, 128 raw samples, 25 L-BFGS iterations) and
by Ax's default one (20, 1024, 200), three times each with other random restarts. If the light
optimiser's log-EI is as high as the default's, a larger acquisition budget cannot make the search
find better policies: what it proposes is limited by the GP, not by how hard its EI is climbed.

    python benchmarks/acquisition_budget.py RUN/trials.csv [RUN2/trials.csv ...]

(``RUN`` is a search's run directory, e.g. one kept by ``gp_vs_random.py --keep``.) Prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

import torch
from botorch.acquisition.logei import qLogNoisyExpectedImprovement
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms import Standardize
from botorch.optim import optimize_acqf
from gpytorch.mlls import ExactMarginalLogLikelihood

# (restarts, raw samples, L-BFGS iterations)
BUDGETS = {"light (search.yaml)": (2, 128, 25), "Ax's default": (20, 1024, 200)}


def trials(path: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Points `(n, d)`, search-val accuracies `(n, 1)` and their standard errors `(n, 1)`, in trial order."""
    with path.open() as file:
        rows = [row for row in csv.DictReader(file) if row["status"] == "COMPLETED"]
    names = [key for key in rows[0] if key.startswith("point_")]
    points = torch.tensor([[float(row[name]) for name in names] for row in rows], dtype=torch.double)
    accuracy = torch.tensor([[float(row["accuracy"])] for row in rows], dtype=torch.double)
    sem = torch.tensor([[float(row["accuracy_sem"])] for row in rows], dtype=torch.double)
    return points, accuracy, sem


def _problem(path: Path, *, first: int) -> str | None:
    """Why ``path`` cannot be replayed, or ``None``."""
    if not path.is_file():
        return "no such file"
    with path.open() as file:
        rows = list(csv.DictReader(file))
    if rows and not {"status", "accuracy", "accuracy_sem"} <= rows[0].keys():
        return "not a search's trials.csv (no status, accuracy and accuracy_sem columns)"
    completed = sum(row["status"] == "COMPLETED" for row in rows)
    if completed <= first:
        return f"{completed} completed trials; replaying from {first} observed needs more"
    return None


def best_log_ei(
    acqf: qLogNoisyExpectedImprovement, dims: int, budget: tuple[int, int, int], seed: int
) -> float:
    restarts, raw, maxiter = budget
    torch.manual_seed(seed)
    bounds = torch.stack([torch.zeros(dims), torch.ones(dims)]).double()
    _, value = optimize_acqf(
        acqf, bounds=bounds, q=1, num_restarts=restarts, raw_samples=raw, options={"maxiter": maxiter}
    )
    return float(value)


def replay(path: Path, *, first: int, repeats: int) -> list[dict[str, float]]:
    points, accuracy, sem = trials(path)
    out = []
    for n in range(first, len(points), 2):
        model = SingleTaskGP(
            points[:n], accuracy[:n], train_Yvar=sem[:n] ** 2, outcome_transform=Standardize(1)
        )
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
        acqf = qLogNoisyExpectedImprovement(model, X_baseline=points[:n], prune_baseline=True)
        row = {"observed": n}
        for name, budget in BUDGETS.items():
            values = [best_log_ei(acqf, points.shape[1], budget, seed=1000 * r + n) for r in range(repeats)]
            row[name] = statistics.median(values)
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trials_csv", nargs="+", type=Path)
    parser.add_argument("--first", type=int, default=8, help="observed trials at the first replayed fit")
    parser.add_argument("--repeats", type=int, default=3, help="optimiser runs per budget (median)")
    args = parser.parse_args(argv)
    for path in args.trials_csv:
        problem = _problem(path, first=args.first)
        if problem:
            print(f"acquisition_budget: error: {path}: {problem}", file=sys.stderr)
            return 2
    torch.set_num_threads(1)
    light, full = BUDGETS
    print(f"| search | observed trials | max log-EI, {light} | max log-EI, {full} | difference |")
    print("|---|---|---|---|---|")
    gaps = []
    for path in args.trials_csv:
        for row in replay(path, first=args.first, repeats=args.repeats):
            gap = row[full] - row[light]
            gaps.append(gap)
            cells = (
                path.parent.name,
                row["observed"],
                f"{row[light]:.3f}",
                f"{row[full]:.3f}",
                f"{gap:+.3f}",
            )
            print("| " + " | ".join(map(str, cells)) + " |")
    print(
        f"\nlargest difference {max(gaps):+.3f}, median {statistics.median(gaps):+.3f} over {len(gaps)} fits"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
