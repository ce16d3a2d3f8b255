import random

import pytest
from helpers import tiny_model

from vitprune.spaces import InputError, Policy, Scores, macs
from vitprune.spaces.budget import Budget
from vitprune.spaces.space import SearchSpace, check_budget, decode


@pytest.fixture(scope="module")
def base():
    return tiny_model("deit", device="meta")[1]  # depth 3, 4 heads of 16, MLP 256, 16 patches


@pytest.fixture(scope="module")
def scores(base):
    """Deterministic pseudo-random scores for every dimension."""
    rng = random.Random(0)
    L, H, hd = base.depth, base.num_heads, base.head_dim

    def r(*shape):
        return (
            tuple(r(*shape[1:]) for _ in range(shape[0]))
            if len(shape) > 1
            else tuple(rng.random() for _ in range(shape[0]))
        )

    return Scores(
        criterion="test",
        heads=r(L, H),
        qk=r(L, H, hd),
        v=r(L, H, hd),
        mlp=r(L, base.mlp_hidden),
        attn_layers=r(L),
        act_layers=r(L),
        token_rates=(1.0, 0.5, 0.8),
        embed=r(base.embed_dim),
    )


def test_compact_space_has_thirteen_float_parameters():
    space = SearchSpace("compact", depth=12)
    assert space.parameters() == (
        "heads",
        "heads_slope",
        "qk",
        "qk_slope",
        "v",
        "v_slope",
        "mlp",
        "mlp_slope",
        "tokens",
        "token_start",
        "drop_attn",
        "drop_act",
        "embed",
    )


def test_per_layer_space_has_four_per_layer_plus_token_depth_and_embed():
    space = SearchSpace("per_layer", depth=12)
    assert len(space.parameters()) == 4 * 12 + 5
    assert "mlp_11" in space.parameters()


def test_disabled_dimensions_have_no_parameters_and_keep_everything(base, scores):
    space = SearchSpace("compact", depth=3, dimensions=frozenset({"heads", "mlp", "tokens"}))  # Hou & Kung
    assert space.parameters() == ("heads", "heads_slope", "mlp", "mlp_slope", "tokens", "token_start")
    proposal = space.propose(dict.fromkeys(space.parameters(), 0.3))
    assert all(r.qk == 1.0 and r.v == 1.0 for r in proposal.ratios)
    assert proposal.drop_attn == proposal.drop_act == 0


def test_slope_tilts_the_ratio_across_depth():
    space = SearchSpace("compact", depth=3, dimensions=frozenset({"heads"}))
    ratios = space.propose({"heads": 0.5, "heads_slope": 1.0}).ratios
    assert [r.heads for r in ratios] == [0.0, 0.5, 1.0]
    ratios = space.propose({"heads": 0.5, "heads_slope": 0.5}).ratios
    assert [r.heads for r in ratios] == [0.5, 0.5, 0.5]


def test_token_schedule_is_geometric_from_the_start_layer():
    space = SearchSpace("compact", depth=3, dimensions=frozenset({"tokens"}), min_token_keep=0.1)
    rates = [r.tokens for r in space.propose({"tokens": 0.0, "token_start": 0.5}).ratios]
    assert (
        rates[0] == 1.0 and rates[1] == pytest.approx(0.1**0.5) and rates[1] * rates[2] == pytest.approx(0.1)
    )


def test_auto_token_rates_follow_the_criterion(scores):
    space = SearchSpace("compact", depth=3, dimensions=frozenset({"tokens"}), token_auto=True)
    assert space.parameters() == ("tokens",)
    rates = [r.tokens for r in space.propose({"tokens": 0.5}, token_rates=scores.token_rates).ratios]
    assert rates == [1.0, 0.5, 0.8]
    with pytest.raises(InputError, match="auto needs per-layer token rates"):
        space.propose({"tokens": 0.5})


def test_points_below_the_budget_are_grown_to_it(base, scores):
    space = SearchSpace("compact", depth=3, dimensions=frozenset({"mlp"}), align=1)
    limit = 0.8 * macs(Policy.keep_all(base))
    fit = decode(
        {"mlp": 0.05, "mlp_slope": 0.5},
        space=space,
        base=base,
        scores=scores,
        budget=Budget("macs", limit),
        measure=macs,
    )
    assert 0.99 * limit <= fit.cost <= limit


def test_an_impossible_budget_fails_before_any_trial(base, scores):
    space = SearchSpace("compact", depth=3, dimensions=frozenset({"heads"}))
    cheapest = check_budget(space=space, base=base, scores=scores, budget=Budget("macs", 1e9), measure=macs)
    assert cheapest < macs(Policy.keep_all(base))
    with pytest.raises(
        InputError, match=r"budget\.macs: 5e\+05 is below the cheapest policy this search space"
    ):
        check_budget(space=space, base=base, scores=scores, budget=Budget("macs", 5e5), measure=macs)


def test_bad_points_and_spaces_are_one_line_errors(base, scores):
    space = SearchSpace("compact", depth=3)
    with pytest.raises(InputError, match="point: missing parameter 'heads'"):
        space.propose({})
    with pytest.raises(InputError, match=r"point\.heads: must be in \[0, 1\], got 1\.5"):
        space.propose(dict.fromkeys(space.parameters(), 0.5) | {"heads": 1.5})
    with pytest.raises(InputError, match=r"space\.dimensions: unknown 'width'"):
        SearchSpace("compact", depth=3, dimensions=frozenset({"width"}))
    with pytest.raises(InputError, match="space: built for depth 12"):
        decode(
            {},
            space=SearchSpace("compact", depth=12),
            base=base,
            scores=scores,
            budget=Budget("macs", 1e9),
            measure=macs,
        )


def test_summary_describes_the_structure(base, scores):
    fit = decode(
        dict.fromkeys(SearchSpace("compact", depth=3).parameters(), 0.5),
        space=SearchSpace("compact", depth=3),
        base=base,
        scores=scores,
        budget=Budget("macs", 0.5 * macs(Policy.keep_all(base))),
        measure=macs,
    )
    summary = fit.policy.summary()
    assert set(summary) == {
        "heads",
        "qk_dim",
        "v_dim",
        "mlp_ratio",
        "tokens_final",
        "attn_removed",
        "act_removed",
        "embed_dim",
    }
    assert 0 < summary["mlp_ratio"] <= 1 and summary["tokens_final"] <= base.num_patches


@pytest.mark.parametrize("kind", ["compact", "per_layer"])
def test_a_single_dimension_point_prunes_that_dimension_alone(base, scores, kind):
    space = SearchSpace(kind, depth=3)
    points = space.single_dimension_points()
    assert list(points) == ["heads", "qk", "v", "mlp", "tokens", "depth", "embed"]
    uniform = space.uniform_point()
    changed = {dim: {k for k in point if point[k] != uniform[k]} for dim, point in points.items()}
    assert changed["tokens"] == {"tokens", "token_start"} and points["tokens"]["token_start"] == 0.0
    assert changed["depth"] == {"drop_attn", "drop_act"}
    assert changed["mlp"] == ({"mlp"} if kind == "compact" else {"mlp_0", "mlp_1", "mlp_2"})
    # at 60 % of dense MACs the MLP alone reaches the budget: every other dimension stays dense
    limit = 0.6 * macs(Policy.keep_all(base))
    fit = decode(
        points["mlp"], space=space, base=base, scores=scores, budget=Budget("macs", limit), measure=macs
    )
    dense = Policy.keep_all(base).summary()
    assert fit.scale >= 1 and 0.99 * limit <= fit.cost <= limit
    assert {k: v for k, v in fit.policy.summary().items() if k != "mlp_ratio"} == {
        k: v for k, v in dense.items() if k != "mlp_ratio"
    }
    assert SearchSpace(kind, depth=3, dimensions=frozenset({"mlp"})).single_dimension_points() == {}
