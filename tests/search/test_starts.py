"""The start trials: the uniform policy, then each dimension that reaches the budget alone."""

from types import SimpleNamespace

import pytest
import timm
import torch

import vitprune.evaluators.models  # noqa: F401 - registers vitprune_digits_vit
from vitprune.evaluators import describe
from vitprune.search.spec import SearchSpec
from vitprune.search.starts import start_points
from vitprune.spaces import Policy, macs
from vitprune.spaces.budget import Budget
from vitprune.spaces.scores import random_scores
from vitprune.spaces.space import decode

DENSE_WIDTHS = {"heads": 24, "qk_dim": 16.0, "v_dim": 16.0, "attn_removed": 0, "act_removed": 0}


def _plan(fraction, kind="compact", **spec):
    """What start_points reads of a Plan, for the embedded digits model at ``fraction`` of MACs."""
    with torch.device("meta"):
        model = timm.create_model("vitprune_digits_vit")
    base = describe(model, name="vitprune_digits_vit", model_args={})
    search = SearchSpec.model_validate({"space": {"kind": kind}, **spec})
    budget = Budget("macs", fraction * macs(Policy.keep_all(base)))
    return SimpleNamespace(
        spec=search,
        space=search.space.build(base.depth),
        base=base,
        scores=random_scores(base),
        budget=budget,
        measure=lambda: macs,
    )


def _decoded(plan, point):
    return decode(
        point, space=plan.space, base=plan.base, scores=plan.scores, budget=plan.budget, measure=macs
    )


@pytest.mark.parametrize("kind", ["compact", "per_layer"])
def test_at_half_the_macs_the_mlp_alone_and_the_tokens_alone_start_after_the_uniform(kind):
    plan = _plan(0.5, kind)
    starts = dict(start_points(plan))
    # the residual width alone cannot land on the budget (24 channels: 80 %; 32: over): no start
    assert list(starts) == ["uniform", "mlp_alone", "tokens_alone"]
    mlp = _decoded(plan, starts["mlp_alone"])
    assert mlp.policy.summary() | DENSE_WIDTHS == mlp.policy.summary()  # nothing else pruned
    assert mlp.policy.summary()["tokens_final"] == 16 and mlp.policy.summary()["embed_dim"] == 64
    assert mlp.policy.summary()["mlp_ratio"] < 0.3 and mlp.shortfall is None
    tokens = _decoded(plan, starts["tokens_alone"]).policy.summary()
    assert (
        tokens | DENSE_WIDTHS | {"mlp_ratio": 1.0, "embed_dim": 64} == tokens and tokens["tokens_final"] < 16
    )


def test_at_a_quarter_no_dimension_reaches_the_budget_alone():
    assert [name for name, _ in start_points(_plan(0.25))] == ["uniform"]


def test_starts_follow_the_generation_settings_and_never_repeat_a_policy():
    assert [n for n, _ in start_points(_plan(0.5, generation={"single_dimension_starts": False}))] == [
        "uniform"
    ]
    assert [n for n, _ in start_points(_plan(0.5, generation={"uniform_start": False}))] == [
        "mlp_alone",
        "tokens_alone",
    ]
    # one dimension: "alone" is the uniform policy itself, so it is not run twice
    assert [n for n, _ in start_points(_plan(0.5, space={"dimensions": ["mlp"]}))] == ["uniform"]
    few = _plan(0.5, trials={"total": 2, "initial": 2})
    assert [n for n, _ in start_points(few)] == ["uniform", "mlp_alone"]
