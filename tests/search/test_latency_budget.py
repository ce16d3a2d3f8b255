"""A latency budget must prune: the plan refuses one above the dense model, as measured with the
calibration policies or as the latency model predicts it (the projection sees only the model)."""

import pytest
from helpers import tiny_model

from vitprune.evaluators.latency_model import LatencyModel, Table
from vitprune.search.plan import check_latency_budget
from vitprune.spaces import InputError, Policy
from vitprune.spaces.budget import Budget

AXES = {"expand": 2, "reduce": 2, "gelu": 2, "sdpa": 3, "norm": 1, "select": 1}


def model_predicting(dense_ms: float, *, measured: float | None) -> LatencyModel:
    """A latency model whose every op costs nothing: any policy is predicted at ``dense_ms``."""
    tables = {name: Table(((1.0,),) * axes, (0.0,)) for name, axes in AXES.items()}
    return LatencyModel(
        device="cpu",
        batch_size=4,
        dtype="float32",
        fixed_ms=dense_ms,
        tables=tables,
        holdout_error=0.25,
        dense_ms=measured,
    )


@pytest.fixture(scope="module")
def dense():
    _, base = tiny_model("deit")
    return Policy.keep_all(base)


def test_a_budget_under_both_the_measured_and_the_modelled_dense_latency_passes(dense):
    check_latency_budget(Budget("latency_ms", 7.9), model_predicting(8.0, measured=10.0), dense)
    check_latency_budget(Budget("latency_ms", 7.9), model_predicting(10.0, measured=8.0), dense)


def test_a_budget_above_the_measured_dense_latency_is_refused(dense):
    with pytest.raises(InputError, match=r"^budget.latency_ms: 9 ms is above the dense model's 8 ms on the"):
        check_latency_budget(Budget("latency_ms", 9.0), model_predicting(10.0, measured=8.0), dense)


def test_a_budget_above_the_dense_latency_the_model_predicts_is_refused(dense):
    """The dense model measured 10 ms and the model predicts 8: "90 %" (9 ms) would let every trial
    keep the dense model, since the projection lands on the prediction. It used to pass."""
    with pytest.raises(
        InputError,
        match=r"^budget.latency_ms: 9 ms is above the dense model's 8 ms as the latency model predicts "
        r"it \(measured 10 ms; held-out error 25%\); nothing would be pruned",
    ):
        check_latency_budget(Budget("latency_ms", 9.0), model_predicting(8.0, measured=10.0), dense)
    with pytest.raises(
        InputError, match=r"predicts it \(held-out error 25%\); nothing"
    ):  # a model saved before
        check_latency_budget(Budget("latency_ms", 9.0), model_predicting(8.0, measured=None), dense)
