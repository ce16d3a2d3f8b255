"""The final selection: finalists fine-tuned again, the best chosen by the mean, not by one lucky run."""

import json
from types import SimpleNamespace

import pytest

from vitprune.search.rundir import RunDir
from vitprune.search.selection import Finalist, _saved, choose, finalists
from vitprune.search.spec import SearchSpec
from vitprune.spaces.budget import Budget


def _row(trial, accuracy, status="COMPLETED", latency_ms=1.0):
    return {"trial": trial, "status": status, "accuracy": accuracy, "latency_ms": latency_ms}


def test_the_luckiest_single_fine_tune_loses_to_the_best_mean():
    lucky = Finalist(4, {0: 0.9815, 1: 0.9676, 2: 0.9699})  # one image ahead once, behind twice
    steady = Finalist(9, {0: 0.9792, 1: 0.9792, 2: 0.9815})
    assert choose([lucky, steady]).trial == 9
    assert steady.mean == pytest.approx((0.9792 * 2 + 0.9815) / 3)


def test_equal_means_go_to_the_better_first_score_then_the_earlier_trial():
    assert choose([Finalist(3, {0: 0.97, 1: 0.99}), Finalist(5, {0: 0.99, 1: 0.97})]).trial == 5
    assert choose([Finalist(7, {0: 0.98}), Finalist(2, {0: 0.98})]).trial == 2


def test_finalists_are_axs_best_then_the_next_feasible_completed_trials():
    plan = SimpleNamespace(budget=Budget("macs", 100.0))
    rows = [_row(0, 0.95), _row(1, 0.99, "FAILED"), _row(2, 0.97), _row(3, 0.96), _row(4, 0.97)]
    # Ax's best comes first even when another trial ties it; then accuracy, then index
    assert finalists(rows, best=4, count=3, plan=plan) == [4, 2, 3]
    assert finalists(rows, best=2, count=10, plan=plan) == [2, 4, 3, 0]


def test_finalists_of_a_latency_budget_meet_the_measured_constraint():
    plan = SimpleNamespace(budget=Budget("latency_ms", 2.0))
    rows = [_row(0, 0.95, latency_ms=1.9), _row(1, 0.99, latency_ms=2.1), _row(2, 0.96, latency_ms=2.0)]
    assert finalists(rows, best=2, count=3, plan=plan) == [2, 0]


def test_a_saved_fine_tune_counts_only_for_the_point_it_was_made_for(tmp_path):
    run = RunDir(tmp_path)
    trial = run.trial(3)
    (trial / "selection").mkdir(parents=True)
    (trial / "metrics.json").write_text(json.dumps({"point": {"mlp": 0.5}}))
    plan = SimpleNamespace(run=run)
    saved = trial / "selection" / "seed-1.json"
    saved.write_text(json.dumps({"trial": 3, "seed": 1, "point": {"mlp": 0.5}, "accuracy": 0.97}))
    assert _saved(saved, plan, 3) == 0.97
    saved.write_text(json.dumps({"trial": 3, "seed": 1, "point": {"mlp": 0.25}, "accuracy": 0.97}))
    assert _saved(saved, plan, 3) is None
    saved.write_text("{truncated")
    assert _saved(saved, plan, 3) is None


def test_selection_is_off_by_default_and_a_pareto_objective_may_not_turn_it_on():
    assert not SearchSpec().selection.on
    assert SearchSpec.model_validate({"selection": {"seeds": 2}}).selection.on
    assert not SearchSpec.model_validate({"selection": {"finalists": 1, "seeds": 2}}).selection.on
    assert SearchSpec.model_validate({"objective": "accuracy, -latency_ms"}).pareto  # defaults: no error
    with pytest.raises(ValueError, match="selection: chooses one best trial"):
        SearchSpec.model_validate({"objective": "accuracy, -latency_ms", "selection": {"seeds": 2}})
