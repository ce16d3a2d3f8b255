import pytest
from helpers import tiny_model

from vitprune.spaces import InputError, Policy, Scores, build_policy, macs, uniform_ratios
from vitprune.spaces.budget import fit_to_budget


@pytest.fixture(scope="module")
def setup():
    base = tiny_model("deit", device="meta")[1]
    L, H, hd = base.depth, base.num_heads, base.head_dim
    scores = Scores(
        criterion="flat",
        heads=((1.0,) * H,) * L,
        qk=(((1.0,) * hd,) * H,) * L,
        v=(((1.0,) * hd,) * H,) * L,
        mlp=((1.0,) * base.mlp_hidden,) * L,
    )
    return base, scores


def mlp_family(base, scores, align=8):
    return lambda s: build_policy(base, scores, uniform_ratios(base.depth, mlp=s), align=align)


@pytest.mark.parametrize("fraction", [0.7, 0.8, 0.9])
def test_lands_within_one_percent_below_the_budget(setup, fraction):
    base, scores = setup
    budget = fraction * macs(Policy.keep_all(base))
    fit = fit_to_budget(mlp_family(base, scores, align=1), macs, budget)
    assert budget * 0.99 <= fit.cost <= budget
    assert fit.cost == macs(fit.policy)


def test_coarse_rounding_stays_feasible(setup):
    base, scores = setup
    budget = 0.8 * macs(Policy.keep_all(base))
    fit = fit_to_budget(mlp_family(base, scores, align=64), macs, budget)  # widths 64, 128, 192, 256
    assert fit.cost <= budget
    assert {layer.mlp_hidden for layer in fit.policy.layers} <= {64, 128, 192}


def test_a_budget_above_the_point_keeps_the_point(setup):
    base, scores = setup
    fit = fit_to_budget(mlp_family(base, scores), macs, 10 * macs(Policy.keep_all(base)))
    assert fit.scale == 1.0 and fit.policy.is_keep_all()


def test_an_impossible_budget_is_one_line(setup):
    base, scores = setup
    with pytest.raises(InputError, match=r"budget: 1000 is below the cheapest policy this space can build"):
        fit_to_budget(mlp_family(base, scores), macs, 1000)
