"""The Ax wrapper without Ray: lifecycle, statuses, best feasible point, snapshots."""

import dataclasses
import json
import math
import os

import fake_objective as fake
import pytest
from ax import Client, StorageConfig

from vitprune.search import NoFeasibleTrialError, Optimizer, OptimizerStateError, TrialRecord


def _assert_same_trials(restored: list[TrialRecord], original: list[TrialRecord]) -> None:
    """Equal records, up to Ax's JSON encoding of metric values (10 decimals)."""
    assert [dataclasses.replace(r, metrics={}) for r in restored] == [
        dataclasses.replace(r, metrics={}) for r in original
    ]
    for got, expected in zip(restored, original, strict=True):
        assert got.metrics == pytest.approx(expected.metrics, abs=1e-9)


def _run(optimizer: Optimizer, trials: int, *, batch: int = 1) -> None:
    """Suggest and complete (with the closed form) until ``trials`` trials exist."""
    while optimizer.num_trials < trials:
        for index, point in optimizer.suggest(min(batch, trials - optimizer.num_trials)).items():
            optimizer.complete(index, fake.evaluate(point))


def test_methods_before_configure_say_what_to_call_first():
    with pytest.raises(
        OptimizerStateError, match=r"suggest: the optimizer is not configured; call configure\(\)"
    ):
        Optimizer().suggest(1)
    with pytest.raises(OptimizerStateError, match=r"best: .*call configure\(\) first"):
        Optimizer().best()


def test_configure_rejects_bad_input():
    with pytest.raises(ValueError, match=r"parameters: duplicate names \['a'\]"):
        Optimizer().configure(["a", "b", "a"], objective="accuracy")
    with pytest.raises(ValueError, match="outcome_constraints"):
        Optimizer().configure(["a"], objective="accuracy", outcome_constraints=["macs <=="])
    optimizer = fake.optimizer()
    with pytest.raises(OptimizerStateError, match="already configured"):
        optimizer.configure(["a"], objective="accuracy")


def test_configuration_is_readable_back():
    optimizer = fake.optimizer()
    assert optimizer.parameter_names == fake.NAMES
    assert optimizer.metric_names == ("accuracy", "macs", "params", "latency_ms")
    assert optimizer.required_metric_names == ("accuracy", "macs")
    assert optimizer.multi_objective is False
    assert optimizer.seed == 0


def test_sobol_trials_then_gp_trials_with_single_task_gp_and_log_nei():
    optimizer = fake.optimizer(initial_trials=3)
    _run(optimizer, 5)
    records = optimizer.trials()
    assert [r.node for r in records] == ["Sobol", "Sobol", "Sobol", "GP", "GP"]
    assert [r.generator for r in records] == ["Sobol", "Sobol", "Sobol", "BoTorch", "BoTorch"]
    assert {(r.model, r.acquisition) for r in records[3:]} == {
        ("SingleTaskGP", "qLogNoisyExpectedImprovement")
    }
    assert optimizer.modelled_metrics() == ("accuracy", "macs")  # params, latency_ms only tracked
    assert all(r.status == "COMPLETED" for r in records)
    for record in records:  # every point is a float in [0, 1]; metrics are what was reported
        assert all(0.0 <= v <= 1.0 for v in record.parameters.values())
        assert record.metrics == pytest.approx(fake.evaluate(record.parameters))
    # Only suggestions that produced trials are timed; the two GP ones are among them.
    assert optimizer.timing("GP").calls == 2 and optimizer.timing("GP").trials == 2
    assert optimizer.timing().trials == 5


def _with_sem(metrics: dict[str, float], sem: float = 0.01) -> dict:
    return {**metrics, "accuracy": (metrics["accuracy"], sem)}


def test_a_known_standard_error_reaches_the_gp_as_fixed_noise():
    from vitprune.search import ax_adapter

    optimizer = fake.optimizer(initial_trials=3)
    while optimizer.num_trials < 5:
        for index, point in optimizer.suggest(1).items():
            optimizer.complete(index, _with_sem(fake.evaluate(point)))
    records = optimizer.trials()
    assert [r.node for r in records] == ["Sobol", "Sobol", "Sobol", "GP", "GP"]
    assert [r.sems for r in records] == [{"accuracy": 0.01}] * 5
    for record in records:  # the value is still the mean that was reported
        assert record.metrics == pytest.approx(fake.evaluate(record.parameters))
    model = ax_adapter.fitted_adapter(optimizer._client).generator.surrogate.model
    accuracy_model = model.models[0] if hasattr(model, "models") else model  # a ModelListGP per metric
    assert type(accuracy_model.likelihood).__name__ == "FixedNoiseGaussianLikelihood"


def test_a_metric_keeps_one_kind_of_noise_for_the_whole_search():
    # A search begun without standard errors (an older vitprune) and resumed with them keeps
    # inferring the noise: the GP cannot mix known and unknown noise in one metric.
    optimizer = fake.optimizer(initial_trials=2)
    first, second = sorted(optimizer.suggest(2))
    optimizer.complete(first, fake.evaluate(optimizer.parameters(first)))
    optimizer.complete(second, _with_sem(fake.evaluate(optimizer.parameters(second))))
    assert [r.sems for r in optimizer.trials()] == [{}, {}]
    ((third, _),) = optimizer.suggest(1).items()  # the GP fits
    assert optimizer.trials()[third].node == "GP"
    # The reverse cannot be repaired, and a standard error must be a number >= 0.
    optimizer = fake.optimizer(initial_trials=3)
    first, second, third = sorted(optimizer.suggest(3))
    optimizer.complete(first, _with_sem(fake.evaluate(optimizer.parameters(first))))
    with pytest.raises(ValueError, match="accuracy comes without a standard error; earlier trials had one"):
        optimizer.complete(second, fake.evaluate(optimizer.parameters(second)))
    with pytest.raises(ValueError, match=r"accuracy has standard error -0.01; it must be finite and >= 0"):
        optimizer.complete(third, _with_sem(fake.evaluate(optimizer.parameters(third)), -0.01))
    assert optimizer.status(second) == optimizer.status(third) == "RUNNING"


def test_a_batch_is_one_call_with_distinct_points():
    optimizer = fake.optimizer(initial_trials=3)
    _run(optimizer, 4)  # Sobol ×3, then the first GP trial
    calls = optimizer.timing().calls
    batch = optimizer.suggest(3)
    assert sorted(batch) == [4, 5, 6]
    assert optimizer.timing().calls == calls + 1
    records = optimizer.trials()
    assert records[4].fit_s > 0 and records[5].fit_s == records[6].fit_s == 0  # one GP fit
    assert all(records[i].gen_s > 0 for i in batch)  # one acquisition optimisation per trial
    points = {tuple(round(v, 6) for v in point.values()) for point in batch.values()}
    assert len(points) == 3  # pending points keep the batch from repeating itself
    assert {optimizer.status(i) for i in batch} == {"RUNNING"}


def test_sobol_budget_waits_for_observations():
    optimizer = fake.optimizer(initial_trials=4)
    assert sorted(optimizer.suggest(6)) == [0, 1, 2, 3]  # no more Sobol than the budget
    assert optimizer.suggest(1) == {}  # the GP needs 2 observations first
    for index in (0, 1):
        optimizer.complete(index, fake.evaluate(optimizer.parameters(index)))
    ((index, _),) = optimizer.suggest(1).items()
    assert optimizer.trials()[index].node == "GP"


def test_best_skips_infeasible_trials_even_when_they_are_more_accurate():
    optimizer = fake.optimizer(initial_trials=4)
    indices = sorted(optimizer.suggest(4))
    reported = {  # accuracy, macs: the most accurate trial violates macs <= 0.5
        indices[0]: (0.95, 0.70),
        indices[1]: (0.80, 0.40),
        indices[2]: (0.85, 0.50),  # on the bound: feasible
        indices[3]: (0.90, 0.51),
    }
    for index, (accuracy, macs) in reported.items():
        optimizer.complete(index, {"accuracy": accuracy, "macs": macs})
    best = optimizer.best()
    assert best.index == indices[2]
    assert best.metrics == {"accuracy": 0.85, "macs": 0.50}
    assert best.parameters == optimizer.parameters(indices[2])


def test_best_raises_when_no_trial_is_feasible():
    optimizer = fake.optimizer()
    with pytest.raises(NoFeasibleTrialError, match="no trial has completed yet"):
        optimizer.best()
    ((index, _),) = optimizer.suggest(1).items()
    optimizer.complete(index, {"accuracy": 0.9, "macs": 0.9})
    with pytest.raises(NoFeasibleTrialError, match="satisfies the outcome constraints"):
        optimizer.best()


def test_failed_and_non_finite_trials_are_failed_with_a_reason():
    optimizer = fake.optimizer(initial_trials=3)
    first, second, third = sorted(optimizer.suggest(3))
    optimizer.fail(first, "CUDA out of memory")
    assert optimizer.complete(second, {"accuracy": math.nan, "macs": 0.3}) == "FAILED"
    assert optimizer.complete(third, {"accuracy": 0.7, "macs": 0.3, "latency_ms": math.inf}) == "COMPLETED"
    records = optimizer.trials()
    assert [r.status for r in records] == ["FAILED", "FAILED", "COMPLETED"]
    assert records[0].reason == "CUDA out of memory"
    assert records[1].reason == "non-finite metrics {'accuracy': nan}"
    assert records[1].metrics == {}
    assert records[2].metrics == {"accuracy": 0.7, "macs": 0.3}  # a non-finite tracked value is dropped
    # Failed trials do not use up the Sobol budget: two more Sobol points come next.
    assert [optimizer.trials()[i].node for i in optimizer.suggest(3)] == ["Sobol", "Sobol"]


def test_complete_rejects_unknown_and_missing_metrics_and_ended_trials():
    optimizer = fake.optimizer()
    index, _ = next(iter(optimizer.suggest(1).items()))
    with pytest.raises(ValueError, match=r"metrics: unknown \['acc'\]; known metrics are \['accuracy'"):
        optimizer.complete(index, {"acc": 0.5, "macs": 0.3})
    with pytest.raises(ValueError, match=r"lacks \['macs'\], which the optimisation needs"):
        optimizer.complete(index, {"accuracy": 0.5})
    optimizer.complete(index, {"accuracy": 0.5, "macs": 0.3})
    with pytest.raises(OptimizerStateError, match=f"abandon: trial {index} is COMPLETED, only a RUNNING"):
        optimizer.abandon(index, "late")
    with pytest.raises(KeyError, match="no trial 7"):
        optimizer.fail(7, "?")


def test_abandoned_trial_is_never_an_observation():
    optimizer = fake.optimizer(initial_trials=3)
    indices = sorted(optimizer.suggest(3))
    for index in indices[:2]:
        optimizer.complete(index, fake.evaluate(optimizer.parameters(index)))
    optimizer.abandon(indices[2], "stopped early by ASHA at epoch 1")
    ((sobol_index, point),) = optimizer.suggest(1).items()  # it did not use up the Sobol budget
    assert optimizer.trials()[sobol_index].node == "Sobol"
    optimizer.complete(sobol_index, fake.evaluate(point))
    (gp_index,) = optimizer.suggest(1)  # fits the GP
    assert optimizer.trials()[gp_index].node == "GP"
    assert optimizer.model_training_trials() == {*indices[:2], sobol_index}
    abandoned = optimizer.trials()[indices[2]]
    assert (abandoned.status, abandoned.metrics) == ("ABANDONED", {})
    assert abandoned.reason == "stopped early by ASHA at epoch 1"


def test_random_method_uses_only_sobol():
    optimizer = fake.optimizer(method="random")
    _run(optimizer, 6, batch=3)
    assert {(r.node, r.generator, r.acquisition) for r in optimizer.trials()} == {("Sobol", "Sobol", None)}
    assert optimizer.timing().calls == 2


def test_pareto_objective_uses_log_nehvi_and_returns_a_non_dominated_front():
    optimizer = fake.optimizer(objective="accuracy, -latency_ms", constraints=(), initial_trials=3)
    _run(optimizer, 5)
    records = optimizer.trials()
    assert [r.node for r in records] == ["Sobol", "Sobol", "Sobol", "GP", "GP"]
    assert records[-1].acquisition == "qLogNoisyExpectedHypervolumeImprovement"
    front = optimizer.pareto_frontier()

    def dominated(m: dict[str, float]) -> bool:
        return any(
            o["accuracy"] >= m["accuracy"] and o["latency_ms"] <= m["latency_ms"] and o != m
            for o in (r.metrics for r in records)
        )

    non_dominated = {r.index for r in records if not dominated(r.metrics)}
    # Ax may leave out non-dominated points below its inferred objective thresholds, never add one.
    assert front and {p.index for p in front} <= non_dominated
    for point in front:
        assert point.metrics == {k: records[point.index].metrics[k] for k in ("accuracy", "latency_ms")}
    with pytest.raises(OptimizerStateError, match=r"call pareto_frontier\(\)"):
        optimizer.best()


def test_snapshot_round_trip_continues_the_same_experiment(tmp_path):
    optimizer = fake.optimizer(initial_trials=3)
    _run(optimizer, 4)
    path = tmp_path / "out" / "experiment.json"
    optimizer.snapshot(path)
    assert os.listdir(path.parent) == ["experiment.json"]  # no temporary file left behind
    assert len(Client.load_from_json_file(str(path))._experiment.trials) == 4  # plain Ax can read it
    restored = Optimizer.restore(path)
    _assert_same_trials(restored.trials(), optimizer.trials())
    assert restored.seed == 0
    ((index, _),) = restored.suggest(1).items()
    assert index == 4 and restored.trials()[index].node == "GP"


def test_snapshot_is_atomic(tmp_path, monkeypatch):
    optimizer = fake.optimizer()
    _run(optimizer, 1)
    path = tmp_path / "experiment.json"
    optimizer.snapshot(path)
    before = path.read_text()
    _run(optimizer, 2)

    def interrupted(src, dst):
        raise KeyboardInterrupt  # the driver dies between writing and renaming

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        optimizer.snapshot(path)
    assert path.read_text() == before  # the reader still sees the previous, complete snapshot
    assert len(json.loads(before)["experiment"]["trials"]) == 1


def test_state_keeps_timings_seed_and_threads():
    optimizer = fake.optimizer(initial_trials=3)
    _run(optimizer, 4)
    state = json.loads(json.dumps(optimizer.state()))
    restored = Optimizer.from_state(state)
    assert restored.timing() == optimizer.timing()
    _assert_same_trials(restored.trials(), optimizer.trials())
    assert (restored.seed, restored._torch_threads) == (0, 1)


def test_sql_storage_follows_the_restored_snapshot_not_a_driver_that_ran_on(tmp_path):
    from ax.storage.sqa_store import db

    url, other_url = (f"sqlite:///{tmp_path / name}" for name in ("ax.db", "other.db"))

    def stored(at: str = url) -> dict[int, str]:
        db.init_engine_and_session_factory(url=at, force_init=True)  # Ax keeps one engine per process
        client = Client.load_from_database("vitprune", storage_config=StorageConfig(url=at))
        return {index: trial.status.name for index, trial in client._experiment.trials.items()}

    other = fake.optimizer(storage_url=other_url)  # binds Ax's one engine per process first
    _run(other, 1)
    optimizer = fake.optimizer(initial_trials=3, storage_url=url)
    _run(optimizer, 3)
    checkpoint = json.loads(json.dumps(optimizer.state()))
    _run(optimizer, 5)  # the driver went on after the checkpoint, then died
    assert len(stored()) == 5

    restored = Optimizer.from_state(checkpoint)
    assert len(restored.trials()) == 3 and len(stored()) == 5  # reading writes nothing
    (index,) = restored.suggest(1)
    assert stored() == {0: "COMPLETED", 1: "COMPLETED", 2: "COMPLETED", index: "RUNNING"}
    restored.abandon(index, "stopped early")
    assert stored()[index] == "ABANDONED"
    _run(other, 2)
    assert len(stored(other_url)) == 2 and len(stored()) == 4  # each search its own database


def test_several_start_points_come_first_and_count_among_the_initial_trials():
    optimizer = fake.optimizer(initial_trials=4)
    starts = [{name: value for name in fake.NAMES} for value in (1.0, 0.0, 0.5)]
    indices = [optimizer.attach(point, name=f"start{i}") for i, point in enumerate(starts)]
    assert indices == [0, 1, 2] and {optimizer.status(i) for i in indices} == {"RUNNING"}
    for index in indices:
        optimizer.complete(index, fake.evaluate(optimizer.parameters(index)))
    created = optimizer.suggest(4)
    assert sorted(created) == [3]  # one Sobol point completes the 4 initial trials
    optimizer.complete(3, fake.evaluate(created[3]))
    _run(optimizer, 6)
    assert [r.node for r in optimizer.trials()] == ["start"] * 3 + ["Sobol", "GP", "GP"]
