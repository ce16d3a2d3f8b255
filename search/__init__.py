"""The search: Ax proposes points (Sobol, then GP + expected improvement), Ray Tune runs the trials.

The only package of vitprune that imports ``ax`` or ``ray``::

    from vitprune.search import AxSearcher, GenerationConfig, Optimizer, Search, as_trainable, run_tune

- ``generation``: the Ax generation strategy (``GenerationConfig``, ``build_generation_strategy``).
- ``optimizer``: ``Optimizer``, the Ax ``Client`` of one search (configure → suggest →
  complete / fail / abandon → best, atomic JSON snapshots, timings); ``records``: what it returns.
- ``searcher``: ``AxSearcher``, the Ray Tune ``Searcher`` around it (batching, early-stopped
  trials, checkpoint and resume).
- ``report``: ``final_result`` / ``as_trainable``, for trainables; imports neither Ax nor torch.
- ``runner``: ``run_tune`` / ``resume_tune``, which build the ``tune.Tuner``.
- ``lifecycle``: ``Search``, one search in lifecycle order (check → prepare → run_trials →
  finish), with ``plan`` (what trials share), ``preflight`` (checks before any work), ``rundir``
  (every path of a run), ``trainable`` (one trial), ``events`` (failures and retries), ``spec``
  (the YAML config) and ``commands`` (the CLI).

Names are imported on first use: a Tune worker that unpickles a trainable referring to
``vitprune.search.report`` must not pay for importing Ax, BoTorch and torch (about 15 s on 2
busy cores, for every trial).
"""

import importlib
from typing import Any

_LAZY = {
    "METHODS": "vitprune.search.generation",
    "GenerationConfig": "vitprune.search.generation",
    "Method": "vitprune.search.generation",
    "build_generation_strategy": "vitprune.search.generation",
    "BestPoint": "vitprune.search.records",
    "NoFeasibleTrialError": "vitprune.search.records",
    "Optimizer": "vitprune.search.optimizer",
    "OptimizerStateError": "vitprune.search.records",
    "SuggestionTiming": "vitprune.search.records",
    "TrialRecord": "vitprune.search.records",
    "FAILED_KEY": "vitprune.search.report",
    "FINAL_KEY": "vitprune.search.report",
    "TRIAL_KEY": "vitprune.search.report",
    "as_trainable": "vitprune.search.report",
    "failed_result": "vitprune.search.report",
    "final_result": "vitprune.search.report",
    "TuneRun": "vitprune.search.runner",
    "resume_tune": "vitprune.search.runner",
    "run_tune": "vitprune.search.runner",
    "Search": "vitprune.search.lifecycle",
    "SearchStateError": "vitprune.search.lifecycle",
    "Outcome": "vitprune.search.lifecycle",
    "AxSearcher": "vitprune.search.searcher",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'vitprune.search' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # import once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
