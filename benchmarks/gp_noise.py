"""Which noise model lets the search's GP predict trials it has not seen? (issue 13)

A trial's search-val accuracy is noisy: its images are a sample, and its fine-tune has a seed.
Reported without a standard error, Ax's GP infers the noise level from the trials themselves;
reported with the binomial one (what a trial now sends, ``accuracy_sem``), the GP takes it as
known. This replays, on the trials of finished searches, what each GP would predict for every
trial left out of its fit (leave-one-out), and scores the predictions:

- RMSE of the predicted mean against the observed accuracy;
- mean negative log predictive density (NLPD) of the observation: it punishes a GP that is sure
  of a wrong value, which is how a GP that explains noise as signal fails;
- beside them, the noise sd each GP works with: inferred from all the trials, or the binomial one
  (mean over the trials).

The GP is BoTorch's ``SingleTaskGP`` as the search fits it (inputs are the points in [0, 1],
outcomes standardised), on the trials' points and accuracies in ``trials.csv``.

    python benchmarks/gp_noise.py RUN_DIR [RUN_DIR ...] --images 3000
    python benchmarks/gp_noise.py RUN_DIR ...        # runs whose trials saved accuracy_sem

``--images``: how many search-val images the runs scored on (for runs made before trials saved
``accuracy_sem``). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import warnings
from pathlib import Path

import torch
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms import Normalize, Standardize
from gpytorch.mlls import ExactMarginalLogLikelihood

from vitprune.evaluators.measure import Accuracy

NOISE_MODELS = ("inferred", "binomial")


def trials(run: Path, images: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The completed trials' points, accuracies and the accuracies' binomial variances."""
    with (run / "trials.csv").open() as file:
        rows = [row for row in csv.DictReader(file) if row.get("accuracy")]
    if not rows:
        raise ValueError(f"{run}: no completed trial in trials.csv")
    columns = sorted(c for c in rows[0] if c.startswith("point_"))
    x = torch.tensor([[float(row[c]) for c in columns] for row in rows], dtype=torch.double)
    y = torch.tensor([[float(row["accuracy"])] for row in rows], dtype=torch.double)
    if images is not None:  # the standard error a trial saves now, from its accuracy and images
        sems = [Accuracy(top1=float(row["accuracy"]), top5=None, samples=images).top1_sem for row in rows]
    elif all(row.get("accuracy_sem") for row in rows):
        sems = [float(row["accuracy_sem"]) for row in rows]
    else:
        raise ValueError(f"{run}: its trials saved no accuracy_sem; give --images (search-val images)")
    return x, y, torch.tensor(sems, dtype=torch.double).unsqueeze(-1) ** 2


def fitted(x: torch.Tensor, y: torch.Tensor, variance: torch.Tensor | None = None) -> SingleTaskGP:
    """The search's GP on ``x``, ``y``: the noise inferred, or ``variance`` taken as known."""
    known = {} if variance is None else {"train_Yvar": variance}
    gp = SingleTaskGP(
        x, y, input_transform=Normalize(d=x.shape[-1]), outcome_transform=Standardize(m=1), **known
    )
    fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
    return gp


def inferred_noise_variance(gp: SingleTaskGP) -> float:
    """The noise variance a GP with inferred noise settled on, in accuracy² (not standardised)."""
    return gp.likelihood.noise.mean().item() * gp.outcome_transform.stdvs.item() ** 2


def leave_one_out(
    x: torch.Tensor, y: torch.Tensor, variance: torch.Tensor, noise: str
) -> tuple[float, float]:
    """RMSE and mean NLPD of each trial predicted by a GP fitted on all the others."""
    squared, nlpd = [], []
    for i in range(len(x)):
        keep = torch.arange(len(x)) != i
        gp = fitted(x[keep], y[keep], variance[keep] if noise == "binomial" else None)
        with torch.no_grad():
            posterior = gp.posterior(x[i : i + 1])
        mean = posterior.mean.item()
        # The observation's own noise: the inferred level, or the left-out trial's binomial one.
        observed = inferred_noise_variance(gp) if noise == "inferred" else variance[i].item()
        spread = posterior.variance.item() + observed
        error = y[i].item() - mean
        squared.append(error**2)
        nlpd.append(0.5 * math.log(2 * math.pi * spread) + error**2 / (2 * spread))
    return math.sqrt(statistics.fmean(squared)), statistics.fmean(nlpd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="search run directories (with trials.csv)")
    parser.add_argument("--images", type=int, help="search-val images, for runs without accuracy_sem")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    try:  # every run is read before any GP is fitted
        runs = {run: trials(run, args.images) for run in args.runs}
    except (OSError, ValueError, KeyError) as problem:
        print(f"gp_noise: {problem}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", module="botorch|gpytorch|linear_operator")
    print("| run | trials | noise model | noise sd | LOO RMSE | LOO NLPD (lower is better) |")
    print("|---|---|---|---|---|---|")
    totals: dict[str, list[tuple[float, float]]] = {noise: [] for noise in NOISE_MODELS}
    for run, (x, y, variance) in runs.items():
        sd = {
            "inferred": math.sqrt(inferred_noise_variance(fitted(x, y))),
            "binomial": variance.sqrt().mean().item(),
        }
        for noise in NOISE_MODELS:
            rmse, nlpd = leave_one_out(x, y, variance, noise)
            totals[noise].append((rmse, nlpd))
            print(
                f"| {run.name} | {len(x)} | {noise} | {sd[noise]:.4f} | {rmse:.4f} | {nlpd:.2f} |", flush=True
            )
    for noise, scores in totals.items():
        rmse = statistics.fmean(s[0] for s in scores)
        nlpd = statistics.fmean(s[1] for s in scores)
        print(f"| mean of {len(scores)} runs | | {noise} | | {rmse:.4f} | {nlpd:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
