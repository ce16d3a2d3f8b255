"""AxSearcher driven by hand, as Tune drives it, without starting Ray."""

import json
import pickle

import fake_objective as fake
import pytest
from ray.tune.search import Searcher

from vitprune.search import FINAL_KEY, AxSearcher, Optimizer, failed_result, final_result
from vitprune.search.report import TRIAL_KEY


def _searcher(
    tmp_path, *, max_trials=6, concurrency=3, initial_trials=3, method="gp_ei", synchronous_from=None
) -> AxSearcher:
    searcher = AxSearcher(
        fake.optimizer(initial_trials=initial_trials, method=method),
        max_trials=max_trials,
        snapshot_path=tmp_path / "experiment.json",
        synchronous_from=synchronous_from,
    )
    assert searcher.set_max_concurrency(concurrency) is True  # Tune's ConcurrencyLimiter steps aside
    return searcher


def _final(point: dict[str, float]) -> dict:
    """A flattened Tune result as on_trial_complete receives it."""
    return {**final_result(fake.evaluate(point)), "training_iteration": 1, "time_total_s": 0.1, "done": True}


def test_one_ax_call_fills_every_free_slot(tmp_path):
    searcher = _searcher(tmp_path, concurrency=3)
    points = [searcher.suggest(f"t{i}") for i in range(3)]
    assert searcher.optimizer.timing().calls == 1  # one get_next_trials for three trials
    assert searcher.trial_indices == {"t0": 0, "t1": 1, "t2": 2}
    assert points == [searcher.config(i) for i in range(3)]
    assert points[2][TRIAL_KEY] == 2
    assert searcher.suggest("t3") is None  # all three slots are taken
    searcher.on_trial_complete("t1", _final(points[1]))
    assert searcher.suggest("t3") == searcher.config(3)
    assert searcher.optimizer.timing().calls == 2


def test_never_creates_more_than_max_trials(tmp_path):
    searcher = _searcher(tmp_path, max_trials=2, concurrency=3)
    first, second = searcher.suggest("t0"), searcher.suggest("t1")
    assert first is not None and second is not None
    assert searcher.suggest("t2") == Searcher.FINISHED
    assert searcher.optimizer.num_trials == 2


def test_waits_without_asking_ax_again_until_a_trial_ends(tmp_path, monkeypatch):
    searcher = _searcher(tmp_path, initial_trials=2, concurrency=3)
    point = searcher.suggest("t0")
    searcher.suggest("t1")
    calls = []
    suggest = Optimizer.suggest
    monkeypatch.setattr(Optimizer, "suggest", lambda self, n: calls.append(n) or suggest(self, n))
    assert searcher.suggest("t2") is None  # Sobol budget used; the GP needs an observation
    assert searcher.suggest("t2") is None
    assert calls == [3]  # one request for a full batch; the second refusal did not reach Ax
    searcher.on_trial_complete("t0", _final(point))
    assert searcher.suggest("t2") is not None  # now a GP trial
    assert searcher.optimizer.trials()[2].node == "GP"


def _drive(searcher: AxSearcher, *, newest_first: bool) -> list[dict[str, float]]:
    """Run a whole search as Tune would, ending the newest (or oldest) running trial each time;
    returns every Ax trial's point in index order."""
    live: dict[str, dict] = {}
    for step in range(100):
        while (config := searcher.suggest(f"t{step}-{len(live)}")) not in (None, Searcher.FINISHED):
            live[f"t{step}-{len(live)}"] = config
        if not live:
            assert config == Searcher.FINISHED
            return [searcher.optimizer.parameters(i) for i in range(searcher.optimizer.num_trials)]
        trial_id = max(live, key=lambda t: live[t][TRIAL_KEY] * (1 if newest_first else -1))
        searcher.on_trial_complete(trial_id, _final(live.pop(trial_id)))
    raise AssertionError("the search did not finish")


def test_a_synchronous_search_proposes_the_same_points_whatever_order_trials_end_in(tmp_path):
    def points(synchronous_from: int | None, newest_first: bool) -> list[dict[str, float]]:
        folder = tmp_path / f"{synchronous_from}-{newest_first}"
        folder.mkdir()
        searcher = _searcher(
            folder, max_trials=9, concurrency=2, initial_trials=3, synchronous_from=synchronous_from
        )
        return _drive(searcher, newest_first=newest_first)

    oldest, newest = points(3, newest_first=False), points(3, newest_first=True)
    assert len(oldest) == 9 and oldest == newest
    # Without it, the GP fits whichever trials ended first, and the searches part ways.
    assert points(None, newest_first=False) != points(None, newest_first=True)


def test_sobol_trials_never_wait_and_gp_batches_wait_for_every_running_trial(tmp_path):
    searcher = _searcher(tmp_path, concurrency=2, initial_trials=3, synchronous_from=3)
    first, second = searcher.suggest("t0"), searcher.suggest("t1")
    searcher.on_trial_complete("t0", _final(first))
    third = searcher.suggest("t2")  # a Sobol point: it does not depend on observations
    assert third == searcher.config(2) and searcher.optimizer.trials()[2].node == "Sobol"
    searcher.on_trial_complete("t1", _final(second))
    assert searcher.suggest("t3") is None  # the GP's turn, and trial 2 still runs
    assert searcher.optimizer.num_trials == 3
    searcher.on_trial_complete("t2", _final(third))
    assert searcher.suggest("t3") == searcher.config(3)
    assert searcher.optimizer.trials()[3].node == "GP"
    assert pickle.loads(pickle.dumps(searcher)).synchronous_from == 3


def test_each_outcome_ends_its_ax_trial_the_right_way(tmp_path, caplog):
    searcher = _searcher(tmp_path, max_trials=6, concurrency=6, initial_trials=6)
    points = {f"t{i}": searcher.suggest(f"t{i}") for i in range(6)}
    searcher.on_trial_complete("t0", error=True)
    partial = {**fake.evaluate(points["t1"]), "accuracy": 0.99, "training_iteration": 2, "done": True}
    searcher.on_trial_complete("t1", partial)  # stopped by ASHA: `done` but not final
    bad = {FINAL_KEY: True, "macs": 0.3, "training_iteration": 3}  # final report without accuracy
    searcher.on_trial_complete("t2", bad)
    searcher.on_trial_complete("t3", _final(points["t3"]))
    searcher.on_trial_complete("t4")  # stopped while pending (time budget): no result at all
    searcher.on_trial_complete("t5", failed_result("TrainingDiverged: loss is nan at step 3"))
    records = searcher.optimizer.trials()
    assert [r.status for r in records] == [
        "FAILED",
        "ABANDONED",
        "FAILED",
        "COMPLETED",
        "ABANDONED",
        "FAILED",
    ]
    assert records[0].reason == "Tune trial t0 raised after its retries (see its error.txt)"
    assert records[5].reason == "TrainingDiverged: loss is nan at step 3"  # reported, not raised: no retry
    assert records[1].reason == "stopped early (last report: iteration 2); partial results are not final"
    assert records[1].metrics == {}  # the partial 0.99 is not an observation
    assert (
        records[2].reason
        == "bad final report: metrics: trial 2 lacks ['accuracy'], which the optimisation needs"
    )
    assert records[3].metrics == pytest.approx(fake.evaluate(points["t3"]))  # Tune's own keys are dropped
    assert (records[4].reason, records[4].metrics) == ("stopped before it reported anything", {})
    searcher.on_trial_complete("t3", _final(points["t3"]))  # a second report for an ended trial is ignored
    assert searcher.optimizer.status(3) == "COMPLETED"
    hints = [r for r in caplog.records if r.name == "vitprune.search.searcher" and r.levelname == "WARNING"]
    assert [r.getMessage().split(":")[0] for r in hints] == [
        "Ax trial 1 abandoned",  # the missing-flag hint, once
        "trial 5 failed",  # a deterministic failure is logged with its reason
        "Tune trial t3 has no running Ax trial (ended already?)",
    ]


def test_a_reported_standard_error_goes_to_ax_with_its_metric(tmp_path):
    searcher = _searcher(tmp_path, max_trials=2, concurrency=2, initial_trials=2)
    points = {f"t{i}": searcher.suggest(f"t{i}") for i in range(2)}
    searcher.on_trial_complete("t0", {**_final(points["t0"]), "accuracy_sem": 0.007})
    searcher.on_trial_complete("t1", {**_final(points["t1"]), "accuracy_sem": -1.0})
    records = searcher.optimizer.trials()
    assert records[0].sems == {"accuracy": 0.007}
    assert records[0].metrics == pytest.approx(fake.evaluate(points["t0"]))
    assert records[1].status == "FAILED"
    assert (
        records[1].reason
        == "bad final report: metrics: accuracy has standard error -1.0; it must be finite and >= 0"
    )


def test_snapshot_follows_every_batch_created_and_every_trial_that_ends(tmp_path):
    searcher = _searcher(tmp_path, concurrency=2)
    point = searcher.suggest("t0")
    searcher.suggest("t1")
    # Running trials' points are in the snapshot at once (the dashboard draws their structure),
    # and in searcher.json before Tune runs them (a resume runs the same Ax trials again).
    running = json.loads((tmp_path / "experiment.json").read_text())["experiment"]["trials"]
    assert len(running) == 2
    assert json.loads((tmp_path / "searcher.json").read_text())["live"] == {"t0": 0, "t1": 1}
    searcher.on_trial_complete("t0", _final(point))
    assert json.loads((tmp_path / "searcher.json").read_text())["ended"] == {"t0": 0}
    trials = json.loads((tmp_path / "experiment.json").read_text())["experiment"]["trials"]
    assert len(trials) == 2
    searcher.on_trial_complete("t1", error=True)
    restored = Optimizer.restore(tmp_path / "experiment.json")
    assert [r.status for r in restored.trials()] == ["COMPLETED", "FAILED"]


def test_save_restore_and_pickle_keep_the_experiment_map_and_queue(tmp_path):
    searcher = _searcher(tmp_path, max_trials=5, concurrency=3)
    points = [searcher.suggest("t0"), searcher.suggest("t1")]  # t2's point waits in the queue
    searcher.on_trial_complete("t0", _final(points[0]))
    searcher.save(str(tmp_path / "searcher-state.pkl"))

    for copy in (
        pickle.loads(pickle.dumps(searcher)),  # how tuner.pkl stores it
        _restored(tmp_path / "searcher-state.pkl"),  # how Tuner.restore brings it back
    ):
        assert copy.trial_indices == {"t0": 0, "t1": 1}
        assert copy.max_trials == 5 and copy.optimizer.timing() == searcher.optimizer.timing()
        assert copy.suggest("t2") == searcher.config(2)  # from the queue: no new Ax trial
        assert copy.optimizer.num_trials == 3
        copy.on_trial_complete("t1", _final(points[1]))  # the resumed trial ends its own Ax trial
        assert [r.status for r in copy.optimizer.trials()] == ["COMPLETED", "COMPLETED", "RUNNING"]


def _restored(path) -> AxSearcher:
    searcher = AxSearcher(fake.optimizer(), max_trials=1)  # what tuner.pkl held before the run
    searcher.restore(str(path))
    return searcher


def test_experiment_dir_lookup_reads_the_newest_checkpoint(tmp_path):
    searcher = _searcher(tmp_path, max_trials=3)
    searcher.suggest("t0")
    searcher.save(str(tmp_path / AxSearcher.CKPT_FILE_TMPL.format("2026-01-01_00-00-00")))
    searcher.suggest("t1")
    searcher.save(str(tmp_path / AxSearcher.CKPT_FILE_TMPL.format("2026-01-02_00-00-00")))
    assert AxSearcher.from_experiment_dir(tmp_path).trial_indices == {"t0": 0, "t1": 1}
    with pytest.raises(FileNotFoundError, match="is it a Tune experiment folder"):
        AxSearcher.from_experiment_dir(tmp_path / "nowhere")


def test_rejects_a_nonpositive_budget():
    with pytest.raises(ValueError, match="max_trials: must be at least 1, got 0"):
        AxSearcher(Optimizer(), max_trials=0)


def test_restore_keeps_trials_that_ended_after_the_checkpoint(tmp_path):
    searcher = _searcher(tmp_path, concurrency=2)
    points = [searcher.suggest("t0"), searcher.suggest("t1")]
    searcher.save(str(tmp_path / "searcher-state.pkl"))  # Tune's last checkpoint
    searcher.on_trial_complete("t0", _final(points[0]))  # then the driver dies
    restored = _restored(tmp_path / "searcher-state.pkl")  # Tune resumes t0 and t1
    assert [r.status for r in restored.optimizer.trials()] == ["COMPLETED", "RUNNING"]
    assert restored.suggest("t2") is None  # t0 and t1 fill both slots while they run again
    restored.on_trial_complete("t0", _final(points[0]))  # t0's second end changes nothing
    restored.on_trial_complete("t1", _final(points[1]))
    assert [r.status for r in restored.optimizer.trials()] == ["COMPLETED", "COMPLETED"]
    on_disk = [r.status for r in Optimizer.restore(tmp_path / "experiment.json").trials()]
    assert on_disk == ["COMPLETED", "COMPLETED"]


def test_restore_requeues_running_trials_tune_never_saw_and_loses_no_finished_one(tmp_path):
    """Trials handed to Tune after its last checkpoint run again as the same Ax trials, with the
    same points. Trial 4 used to exist only from the next trial end on: a driver killed after
    trial 4 had saved its model, but before it ended, resumed with a new point for index 4, and
    that trial overwrote the finished one's folder (the slow kill test caught it)."""
    searcher = _searcher(tmp_path, max_trials=6, concurrency=2, initial_trials=6)
    p0, p1 = searcher.suggest("t0"), searcher.suggest("t1")
    searcher.on_trial_complete("t0", _final(p0))
    searcher.save(str(tmp_path / "searcher-state.pkl"))  # Tune's last checkpoint: t1 running
    p2 = searcher.suggest("t2")
    searcher.on_trial_complete("t1", _final(p1))
    p3 = searcher.suggest("t3")
    searcher.on_trial_complete("t2", _final(p2))  # t3 still running
    p4 = searcher.suggest("t4")  # handed to Tune; it may finish before the driver dies

    restored = _restored(tmp_path / "searcher-state.pkl")
    # 3 and 4 handed out, 5 created with 4 and queued
    assert [r.status for r in restored.optimizer.trials()] == ["COMPLETED"] * 3 + ["RUNNING"] * 3
    assert restored.trial_indices == {"t0": 0, "t1": 1, "t2": 2}  # t1 is resumed by Tune
    # Tune resumes t1 (one slot); the other slot gets t3's Ax trial, not a new point.
    assert restored.suggest("t5") == {**p3, TRIAL_KEY: 3}
    assert restored.suggest("t6") is None
    restored.on_trial_complete("t1", _final(p1))
    restored.on_trial_complete("t5", _final(p3))
    assert restored.suggest("t6") == {**p4, TRIAL_KEY: 4}  # t4's Ax trial and point again
    restored.on_trial_complete("t6", _final(p4))
    for trial_id in ("t7",):
        point = restored.suggest(trial_id)
        restored.on_trial_complete(trial_id, _final(point))
    assert restored.suggest("t8") == Searcher.FINISHED
    assert [r.status for r in restored.optimizer.trials()] == ["COMPLETED"] * 6


def test_a_checkpoint_newer_than_searcher_json_wins(tmp_path):
    searcher = _searcher(tmp_path, concurrency=2)
    p0 = searcher.suggest("t0")
    searcher.on_trial_complete("t0", _final(p0))  # searcher.json: 1 trial
    searcher.suggest("t1")
    searcher.save(str(tmp_path / "searcher-state.pkl"))  # the checkpoint knows t1 as well
    restored = _restored(tmp_path / "searcher-state.pkl")
    assert restored.trial_indices == {"t0": 0, "t1": 1}
    assert [r.status for r in Optimizer.restore(tmp_path / "experiment.json").trials()] == [
        "COMPLETED",
        "RUNNING",
    ]


def test_after_a_resume_the_progress_counts_the_whole_search(tmp_path, caplog):
    """A resumed driver's progress line says "trials 3/6 done", not "1/6": Ax holds every outcome."""
    searcher = _searcher(tmp_path, max_trials=6, concurrency=3)
    points = {f"t{i}": searcher.suggest(f"t{i}") for i in range(3)}
    for trial_id in ("t0", "t1"):
        searcher.on_trial_complete(trial_id, _final(points[trial_id]))
    resumed = AxSearcher.__new__(AxSearcher)
    resumed.__setstate__(searcher.get_state())  # what Tune's restore gives back
    caplog.clear()
    with caplog.at_level("INFO", logger="vitprune.search.searcher"):
        resumed.on_trial_complete("t2", _final(points["t2"]))
    progress = resumed.progress()
    assert (progress["completed"], progress["planned"], progress["session_ended"]) == (3, 6, 1)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("trials "))
    assert line.startswith("trials 3/6 done, 0 running, 0 failed · best accuracy")
    assert json.loads((tmp_path / "progress.json").read_text())["completed"] == 3
