"""The run directory of a search: one object owns the path of every artefact in it.

::

    spec.json            the validated spec (a resume checks it is unchanged)
    plan.json            what a resume needs besides the dense weights and the scores
    dense/               the dense model (policy.json + model.safetensors): export's teacher
    scores.json          the criteria scores every trial ranks units by
    latency_model.json   for latency budgets: the model of the trial device, with its error
    experiment.json      Ax snapshot, rewritten atomically after every trial that ends
    ax.db                the same experiment in Ax's SQL storage (when storage.enabled)
    searcher.json        the searcher's state as of the last trial that ended (for --resume)
    progress.json        trials done, running, queued, the best so far, ETA: rewritten as trials start and end
    phase.json           what the search is doing (dense training, criteria, latency model, trials,
                         selection, finished)
    trials/NNNN/         each trial's policy.json, model.safetensors and metrics.json (error.txt if it failed)
    trials/NNNN/selection/seed-S.json   a finalist fine-tuned again with seed S (search.selection)
    trials.csv           one row per trial: parameters, structure, metrics, status, times
    best_policy.json     one objective: the best feasible policy (by observed value, or the finalist with
                         the best mean when selection is on), with every finalist's scores and provenance
    best_model/          its fine-tuned weights, loadable with vitprune.load_pruned
    pareto_front.json    Pareto objective: every trial on the feasible front, with provenance
    pareto_front/NNNN/   the model of each front trial
    search.log           the driver's log
    tune/                Ray Tune's experiment folder (what --resume restarts from)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitprune.spaces import InputError

MODEL_FILES = ("policy.json", "model.safetensors")


@dataclass(frozen=True)
class RunDir:
    """The paths of one search's run directory (absolute: Tune changes working directories)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).absolute())

    spec = property(lambda self: self.root / "spec.json")
    plan = property(lambda self: self.root / "plan.json")
    dense = property(lambda self: self.root / "dense")
    scores = property(lambda self: self.root / "scores.json")
    scores_cache = property(lambda self: self.root / "scores")
    latency_model = property(lambda self: self.root / "latency_model.json")
    experiment = property(lambda self: self.root / "experiment.json")
    ax_db = property(lambda self: self.root / "ax.db")
    trials_csv = property(lambda self: self.root / "trials.csv")
    best_policy = property(lambda self: self.root / "best_policy.json")
    best_model = property(lambda self: self.root / "best_model")
    pareto_front = property(lambda self: self.root / "pareto_front.json")
    pareto_models = property(lambda self: self.root / "pareto_front")
    search_log = property(lambda self: self.root / "search.log")
    phase = property(lambda self: self.root / "phase.json")
    progress = property(lambda self: self.root / "progress.json")
    tune = property(lambda self: self.root / "tune")
    tune_experiment = property(lambda self: self.root / "tune" / "search")

    def trial(self, index: int) -> Path:
        """The folder of Ax trial ``index``: its policy, weights and metrics."""
        if index < 0:
            raise InputError(f"--trial: must be >= 0, got {index}")
        return self.root / "trials" / f"{index:04d}"

    def refit(self, index: int, seed: int) -> Path:
        """Trial ``index`` fine-tuned again with ``seed`` for the final selection: its result."""
        return self.trial(index) / "selection" / f"seed-{seed}.json"

    def trial_metrics(self, index: int) -> dict[str, Any] | None:
        """The ``metrics.json`` a finished trial wrote (last, after its model), if any."""
        try:
            return json.loads((self.trial(index) / "metrics.json").read_text())
        except (OSError, ValueError):
            return None

    def trial_error(self, index: int) -> str | None:
        """The ``Type: message`` a failed trial left in its ``error.txt``, if any."""
        try:
            return (self.trial(index) / "error.txt").read_text().strip() or None
        except OSError:
            return None

    def holds_search(self) -> bool:
        return self.experiment.exists() or self.tune.exists()

    def check_new(self) -> None:
        """Raise unless a new search may start here."""
        if self.holds_search():
            raise InputError(
                f"run_dir: {self.root} already holds a search; resume it with --resume or choose another "
                "--run-dir"
            )

    def check_search(self) -> None:
        """Raise unless this is the run directory of a search (for status, export, dashboard)."""
        if not self.spec.exists():
            raise InputError(f"{self.root}: not a vitprune run directory (no spec.json)")
