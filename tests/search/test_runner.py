"""The real loop: Ray Tune runs the trials that Ax proposes, on a closed-form objective.

Budgets are tiny (8 trials, 3 Sobol, num_restarts=2, raw_samples=64) so that the file runs in a
few minutes on 2 shared cores; 2 trials run at a time, 1 CPU each.
"""

import os
import signal
import sys
import time
import uuid
from pathlib import Path

import fake_objective as fake
import pytest
from ray import cloudpickle, tune
from ray.tune import Callback

from vitprune.search import AxSearcher, Optimizer, as_trainable, final_result, resume_tune, run_tune

pytestmark = pytest.mark.ray

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # trainables defined here run in workers


def _key(point: dict[str, float]) -> str:
    return "_".join(f"{point[name]:.6f}" for name in fake.NAMES)


def _searcher(tmp_path: Path, *, max_trials: int = 8, method: str = "gp_ei") -> AxSearcher:
    return AxSearcher(
        fake.optimizer(method=method, initial_trials=3),
        max_trials=max_trials,
        snapshot_path=tmp_path / "experiment.json",
    )


def _run(trainable, searcher, tmp_path, *, resources=None, **kwargs):
    return run_tune(
        trainable,
        searcher,
        storage_path=tmp_path / "tune",
        max_concurrent_trials=2,
        resources=resources or {"cpu": 1},
        reuse_actors=True,
        verbose=0,
        **kwargs,
    )


class SnapshotChecker(Callback):
    """After each trial ends, experiment.json must be complete and count it as ended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ended: list[int] = []

    def _check(self) -> None:
        statuses = [r.status for r in Optimizer.restore(self.path).trials()]
        self.ended.append(sum(s in ("COMPLETED", "FAILED", "ABANDONED") for s in statuses))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._check()

    def on_trial_error(self, iteration, trials, trial, **info):
        self._check()


def test_search_finishes_with_failures_retries_sobol_then_gp_and_a_feasible_best(tmp_path, ray_cluster):
    markers = tmp_path / "markers"
    markers.mkdir()

    def evaluate(point):
        if point["a"] > 0.8:  # this point always breaks (NaN loss, OOM): FAILED after the retry
            raise ValueError("loss is NaN")
        marker = markers / _key(point)
        if point["b"] > 0.95 and not marker.exists():  # transient: the retry succeeds
            marker.touch()
            raise RuntimeError("worker lost")
        return fake.evaluate(point)

    searcher = _searcher(tmp_path)
    checker = SnapshotChecker(tmp_path / "experiment.json")
    run = _run(as_trainable(evaluate), searcher, tmp_path, max_failures=1, callbacks=[checker])

    records = run.optimizer.trials()
    assert len(records) == 8 and len(run.results) == 8
    assert sorted(run.searcher.trial_indices.values()) == list(range(8))  # one Ax trial per Tune trial
    failed = {r.index for r in records if r.status == "FAILED"}
    assert failed == {r.index for r in records if r.parameters["a"] > 0.8}
    assert 1 in failed  # Sobol's 2nd point has a = 0.81
    assert run.results.num_errors == len(failed)
    assert {r.status for r in records if r.index not in failed} == {"COMPLETED"}
    retried = [r for r in records if r.parameters["b"] > 0.95 and r.index not in failed]
    assert 2 in {r.index for r in retried}  # Sobol's 3rd point has b = 0.98
    assert all((markers / _key(r.parameters)).exists() for r in retried)  # failed once, then completed
    for record in records:
        if record.status == "COMPLETED":
            assert record.metrics == pytest.approx(fake.evaluate(record.parameters))

    assert [r.node for r in records[:3]] == ["Sobol"] * 3
    gp = [r for r in records if r.node == "GP"]
    assert len(gp) >= 3
    assert {(r.model, r.acquisition) for r in gp} == {("SingleTaskGP", "qLogNoisyExpectedImprovement")}

    best = run.optimizer.best()
    feasible = [r for r in records if r.status == "COMPLETED" and fake.macs(r.parameters) <= fake.MACS_BOUND]
    assert best.index == max(feasible, key=lambda r: r.metrics["accuracy"]).index
    assert fake.macs(best.parameters) <= fake.MACS_BOUND
    assert best.metrics["accuracy"] == pytest.approx(fake.accuracy(best.parameters))

    assert checker.ended == list(range(1, 9))  # a complete snapshot after every trial, in order
    assert [r.status for r in Optimizer.restore(tmp_path / "experiment.json").trials()] == [
        r.status for r in records
    ]
    assert run.optimizer.timing().trials == 8 and 0 < run.suggest_s < run.wall_s
    assert 0 < run.encode_s < run.wall_s


def test_early_stopped_trials_are_abandoned_not_observed(tmp_path, ray_cluster):
    def train(point):
        for epoch in (1, 2, 3):
            tune.report({"accuracy": 0.99, "epoch": epoch})  # optimistic partial accuracy
        tune.report(final_result(fake.evaluate(point)))

    def stop(trial_id, result):  # an early-stopping rule that picks the points with b < 0.5
        return result["config"]["b"] < 0.5 and result.get("epoch", 0) >= 2

    searcher = _searcher(tmp_path, max_trials=4, method="random")
    run = _run(as_trainable(train), searcher, tmp_path, stop=stop, resources={"cpu": 0.5})  # fractional

    records = run.optimizer.trials()
    assert {r.node for r in records} == {"Sobol"}  # the random method
    stopped = [r for r in records if r.parameters["b"] < 0.5]
    assert [r.index for r in stopped] == [1, 3]  # Sobol's b: 0.59, 0.43, 0.98, 0.01
    for record in records:
        if record.parameters["b"] < 0.5:
            assert (record.status, record.metrics) == ("ABANDONED", {})
            assert record.reason.startswith("stopped early (last report: iteration 2)")
        else:
            assert record.status == "COMPLETED"
            assert record.metrics["accuracy"] == pytest.approx(fake.accuracy(record.parameters))
            assert record.metrics["accuracy"] < 0.99


def test_interrupted_search_resumes_with_exactly_the_planned_trials(tmp_path, ray_cluster, monkeypatch):
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "1")  # Tune checkpoints at most once a second
    runs = tmp_path / "runs"
    runs.mkdir()

    def evaluate(point):
        (runs / f"{_key(point)}.{uuid.uuid4().hex}").touch()  # one file per evaluation
        return fake.evaluate(point)

    crashed = tmp_path / "crashed"

    class KillDriver(Callback):
        """The driver dies once 3 trials have ended: no final checkpoint, as with ``kill -9``."""

        def on_step_end(self, iteration, trials, **info):  # not guarded by Tune, unlike trial hooks
            ended = sum(trial.status in ("TERMINATED", "ERROR") for trial in trials)
            if ended >= 3 and not crashed.exists():  # Tuner.restore unpickles this callback again
                crashed.touch()
                raise RuntimeError("driver killed")

    trainable = as_trainable(evaluate)
    with pytest.raises(Exception, match="driver killed"):
        _run(
            trainable,
            _searcher(tmp_path, max_trials=6),
            tmp_path,
            name="interrupted",
            callbacks=[KillDriver()],
        )
    path = tmp_path / "tune" / "interrupted"

    run = resume_tune(path, trainable, resources={"cpu": 1})

    records = run.optimizer.trials()
    assert len(records) == 6 and len(run.results) == 6
    assert {r.status for r in records} == {"COMPLETED"}  # none left running, none lost
    assert sorted(run.searcher.trial_indices.values()) == list(range(6))
    assert len({_key(r.parameters) for r in records}) == 6  # no point proposed twice
    assert {r.node for r in records} == {"Sobol", "GP"}
    evaluations = [name.rsplit(".", 1)[0] for name in os.listdir(runs)]
    assert set(evaluations) == {_key(r.parameters) for r in records}
    # Evaluated again: only trials running at Tune's last checkpoint (Tune resumes them; this fake
    # trainable keeps no result, run_trial reuses its saved one) or at the kill (not finished).
    assert 6 <= len(evaluations) <= 6 + 2 * 2
    assert [r.status for r in Optimizer.restore(tmp_path / "experiment.json").trials()] == ["COMPLETED"] * 6


def test_ctrl_c_then_resume_finishes_the_same_experiment(tmp_path, ray_cluster):
    runs = tmp_path / "runs"
    runs.mkdir()

    def evaluate(point):
        (runs / f"{_key(point)}.{uuid.uuid4().hex}").touch()
        time.sleep(1.0)  # long enough for trials to be running when the signal comes
        return fake.evaluate(point)

    interrupted = tmp_path / "interrupted"

    class CtrlC(Callback):
        """Ctrl-C once 2 trials have ended (SIGUSR1: Tune's same handler, safe for pytest)."""

        def on_step_end(self, iteration, trials, **info):
            if sum(trial.status == "TERMINATED" for trial in trials) >= 2 and not interrupted.exists():
                interrupted.touch()
                os.kill(os.getpid(), signal.SIGUSR1)

    trainable = as_trainable(evaluate)
    searcher = _searcher(tmp_path, max_trials=5, method="random")
    first = _run(trainable, searcher, tmp_path, name="ctrl-c", callbacks=[CtrlC()])
    statuses = [r.status for r in first.optimizer.trials()]
    assert statuses.count("COMPLETED") >= 2 and "RUNNING" in statuses  # stopped half-way, state saved

    run = resume_tune(first.path, trainable)

    records = run.optimizer.trials()
    assert [r.status for r in records] == ["COMPLETED"] * 5
    assert records[: len(statuses)] and all(  # the trials of the first session kept their points
        r.parameters == p.parameters for r, p in zip(records, first.optimizer.trials(), strict=False)
    )
    assert len({_key(r.parameters) for r in records}) == 5  # Sobol went on, it did not start over
    assert sorted(run.searcher.trial_indices.values()) == list(range(5))
    evaluations = [name.rsplit(".", 1)[0] for name in os.listdir(runs)]
    assert 5 <= len(evaluations) <= 5 + 2  # only the trials running at Ctrl-C ran again
