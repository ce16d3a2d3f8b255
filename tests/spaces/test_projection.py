"""The budget projection keeps its promises: disabled dimensions stay dense, and every decoded
policy lands on its budget. Properties over random points, every subset of the dimensions, both
space kinds, a DeiT-S-sized model and the embedded digits model."""

import itertools
import random

import pytest
import timm
import torch

from vitprune.evaluators import describe, models  # noqa: F401  (registers the digits ViT)
from vitprune.spaces import InputError, LayerRatios, Policy, macs, params
from vitprune.spaces.budget import DIMENSIONS, Budget, Proposal, project
from vitprune.spaces.scores import random_scores
from vitprune.spaces.shape import Shape
from vitprune.spaces.space import SearchSpace, cheapest, check_budget, decode

SUBSETS = [frozenset(s) for n in range(1, len(DIMENSIONS) + 1) for s in itertools.combinations(DIMENSIONS, n)]


def architecture(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    return describe(model, name=name, model_args={})


@pytest.fixture(scope="module")
def digits():
    base = architecture("vitprune_digits_vit")
    return base, random_scores(base, seed=0)


@pytest.fixture(scope="module")
def deit_s():
    base = architecture("deit_small_patch16_224")
    return base, random_scores(base, seed=1)


def dense_in(policy, dimension):
    """Whether ``policy`` is exactly dense along ``dimension``."""
    base, layers = policy.base, policy.layers
    full = tuple(range(base.head_dim))
    kept = [layer for layer in layers if layer.attention]
    return {
        "heads": all(layer.heads == tuple(range(base.num_heads)) for layer in kept),
        "qk": all(dims == full for layer in kept for dims in layer.qk),
        "v": all(dims == full for layer in kept for dims in layer.v),
        "mlp": all(layer.mlp == tuple(range(base.mlp_hidden)) for layer in layers),
        "tokens": all(layer.keep_tokens == base.num_patches for layer in layers),
        "depth": all(layer.attention and layer.activation for layer in layers),
        "embed": policy.embed is None,
    }[dimension]


@pytest.mark.parametrize("kind", ["compact", "per_layer"])
def test_a_dimension_that_is_not_enabled_stays_dense(digits, kind):
    base, scores = digits
    dense = macs(Policy.keep_all(base))
    rng = random.Random(0)
    for dimensions in SUBSETS:
        space = SearchSpace(kind, depth=base.depth, dimensions=dimensions, token_auto=rng.random() < 0.3)
        floor = macs(cheapest(space, base, scores=scores))
        budget = Budget("macs", floor + rng.uniform(0.2, 0.8) * (dense - floor))
        for _ in range(2):
            point = {name: rng.random() for name in space.parameters()}
            fit = decode(point, space=space, base=base, scores=scores, budget=budget, measure=macs)
            off = [dim for dim in DIMENSIONS if dim not in dimensions and not dense_in(fit.policy, dim)]
            assert not off, f"{sorted(dimensions)} ({kind}) pruned {off}"
            assert fit.cost <= budget.limit


@pytest.mark.parametrize("kind", ["compact", "per_layer"])
@pytest.mark.parametrize(
    ("metric", "fraction"), [("macs", 0.5), ("macs", 0.25), ("params", 0.5), ("params", 0.3)]
)
@pytest.mark.parametrize(("model", "tolerance"), [("digits", 0.03), ("deit_s", 0.01)])
def test_every_point_lands_on_its_budget(request, kind, metric, fraction, model, tolerance):
    base, scores = request.getfixturevalue(model)
    measure = {"macs": macs, "params": params}[metric]
    budget = Budget(metric, fraction * measure(Policy.keep_all(base)))
    space = SearchSpace(kind, depth=base.depth)
    rng = random.Random(f"{kind}-{metric}-{fraction}")
    landed = []
    for _ in range(12 if model == "deit_s" else 25):
        point = {name: rng.random() for name in space.parameters()}
        fit = decode(point, space=space, base=base, scores=scores, budget=budget, measure=measure)
        assert fit.cost == measure(fit.policy) <= budget.limit
        landed.append(fit.cost / budget.limit)
        assert fit.shortfall is None or fit.cost < 0.99 * budget.limit
    assert min(landed) >= 1 - tolerance, sorted(landed)[:3]


def test_a_point_under_budget_at_full_width_gives_removed_layers_back(digits):
    base, scores = digits
    space = SearchSpace("compact", depth=base.depth)
    point = dict.fromkeys(space.parameters(), 1.0) | {"drop_attn": 1.0, "drop_act": 1.0}
    budget = Budget("macs", 0.9 * macs(Policy.keep_all(base)))
    fit = decode(point, space=space, base=base, scores=scores, budget=budget, measure=macs)
    removed = fit.policy.summary()
    asked = space.propose(point)
    assert removed["attn_removed"] + removed["act_removed"] < asked.drop_attn + asked.drop_act
    assert 0.97 * budget.limit <= fit.cost <= budget.limit and fit.scale > 1


def test_a_point_over_budget_at_its_narrowest_removes_more_layers(digits):
    base, scores = digits
    space = SearchSpace("compact", depth=base.depth, dimensions=frozenset({"heads", "mlp", "depth"}))
    point = dict.fromkeys(space.parameters(), 0.0)  # no removals asked for
    floor = macs(cheapest(space, base, scores=scores))
    budget = Budget("macs", 1.02 * floor)
    fit = decode(point, space=space, base=base, scores=scores, budget=budget, measure=macs)
    assert fit.policy.summary()["attn_removed"] > 0
    assert fit.cost <= budget.limit


def test_points_below_the_budget_are_grown_to_it_even_from_zero(digits):
    base, scores = digits
    space = SearchSpace("compact", depth=base.depth, dimensions=frozenset({"mlp", "heads"}))
    point = {
        "heads": 0.0,
        "heads_slope": 0.5,
        "mlp": 0.0,
        "mlp_slope": 0.5,
    }  # a zero ratio cannot be multiplied up
    budget = Budget("macs", 0.8 * macs(Policy.keep_all(base)))
    fit = decode(point, space=space, base=base, scores=scores, budget=budget, measure=macs)
    assert 0.97 * budget.limit <= fit.cost <= budget.limit


def test_a_structure_that_cannot_reach_the_budget_says_why(digits):
    base, scores = digits
    space = SearchSpace("compact", depth=base.depth, dimensions=frozenset({"depth"}))
    budget = Budget("macs", 0.6 * macs(Policy.keep_all(base)))
    reasons = set()
    for value in (0.0, 0.3, 0.6, 1.0):
        fit = decode(
            {"drop_attn": value, "drop_act": value},
            space=space,
            base=base,
            scores=scores,
            budget=budget,
            measure=macs,
        )
        assert fit.cost <= budget.limit
        if fit.cost < 0.99 * budget.limit:
            assert fit.shortfall is not None and "of the budget" in fit.shortfall
            reasons.add(fit.shortfall.split(": ", 1)[1])
    assert reasons  # removing whole layers cannot land within 1 % of 60 % of digits' MACs


def test_the_projection_only_moves_free_dimensions(digits):
    base, scores = digits
    ratios = (LayerRatios(mlp=0.5),) * base.depth
    budget = Budget("macs", 0.6 * macs(Policy.keep_all(base)))
    fit = project(
        Proposal(ratios=ratios, free=frozenset({"mlp"})),
        base=base,
        scores=scores,
        budget=budget,
        measure=macs,
    )
    assert all(dense_in(fit.policy, dim) for dim in ("heads", "qk", "v", "tokens", "depth"))
    assert 0.97 * budget.limit <= fit.cost <= budget.limit


def test_shapes_cost_what_their_policies_cost(digits):
    base, scores = digits
    space = SearchSpace("per_layer", depth=base.depth)
    rng = random.Random(3)
    budget = Budget("macs", 0.4 * macs(Policy.keep_all(base)))
    for _ in range(5):
        fit = decode(
            {name: rng.random() for name in space.parameters()},
            space=space,
            base=base,
            scores=scores,
            budget=budget,
            measure=macs,
        )
        shape = Shape.of(fit.policy)
        assert macs(shape) == macs(fit.policy) and params(shape) == params(fit.policy)


@pytest.mark.parametrize("dimensions", [frozenset({"heads"}), frozenset(DIMENSIONS)])
def test_the_cheapest_without_scores_is_the_cheapest_of_every_depth_ranking(digits, dimensions):
    base, _ = digits
    space = SearchSpace("compact", depth=base.depth, dimensions=dimensions)
    floor = macs(cheapest(space, base))
    for seed in range(20):
        assert macs(cheapest(space, base, scores=random_scores(base, seed=seed))) >= floor
    with pytest.raises(InputError, match=r"budget\.macs: .* is below the cheapest policy"):
        check_budget(space=space, base=base, budget=Budget("macs", 0.99 * floor), measure=macs)


@pytest.mark.parametrize("kind", ["compact", "per_layer"])
def test_the_uniform_point_scales_every_enabled_dimension_alike(digits, kind):
    """The point a search starts from decodes to the uniform policy: the same share of every
    layer's heads, dims, neurons, residual channels and entering tokens, no layer removed."""
    base, scores = digits
    space = SearchSpace(kind, depth=base.depth)
    budget = Budget("macs", 0.4 * macs(Policy.keep_all(base)))
    fit = decode(space.uniform_point(), space=space, base=base, scores=scores, budget=budget, measure=macs)
    uniform = project(
        Proposal(
            ratios=(LayerRatios(),) * base.depth, free=space.dimensions, token_start=space.uniform_token_start
        ),
        base=base,
        scores=scores,
        budget=budget,
        measure=macs,
    )
    assert fit.policy == uniform.policy and fit.scale == uniform.scale < 1
    summary = fit.policy.summary()
    assert summary["attn_removed"] == summary["act_removed"] == 0
    assert len({layer.mlp_hidden for layer in fit.policy.layers}) <= 2  # one width, up to the fill


@pytest.mark.parametrize("kind", ["compact", "per_layer"])
@pytest.mark.parametrize(("model", "start"), [("digits", 2), ("deit_s", 3)])
@pytest.mark.parametrize("fraction", [0.5, 0.25])
def test_the_uniform_policy_keeps_every_token_in_the_first_quarter_of_the_layers(
    request, model, start, kind, fraction
):
    """The uniform start drops tokens from layer ⌈L/4⌉ on (2 of the digits ViT's 6 layers, 3 of
    DeiT-S's 12, where EViT starts), not from layer 0: before, the uniform policy pruned tokens
    from the first layer, where the class token's attention is a weak guide."""
    base, scores = request.getfixturevalue(model)
    space = SearchSpace(kind, depth=base.depth)
    assert space.uniform_token_start == start
    budget = Budget("macs", fraction * macs(Policy.keep_all(base)))
    fit = decode(space.uniform_point(), space=space, base=base, scores=scores, budget=budget, measure=macs)
    kept = [layer.keep_tokens for layer in fit.policy.layers]
    assert fit.token_start == start
    assert kept[:start] == [base.num_patches] * start, kept
    assert kept[start] < base.num_patches and 0.99 * budget.limit <= fit.cost <= budget.limit


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5, 8, 12, 24])
def test_the_uniform_token_start_is_a_layer_of_the_model(depth):
    space = SearchSpace("compact", depth=depth)
    assert 0 <= space.uniform_token_start < depth
    assert space.propose(space.uniform_point()).token_start == space.uniform_token_start


@pytest.mark.parametrize("depth", [1, 2, 5, 12])
def test_the_uniform_point_starts_dropping_tokens_at_the_layer_asked(depth):
    space = SearchSpace("compact", depth=depth)
    for start in range(depth):
        point = space.uniform_point(start)
        assert space.propose(point).token_start == start
        assert point == space.uniform_point() | {"token_start": point["token_start"]}
    for start in (-1, depth):
        with pytest.raises(
            InputError, match=rf"token_start: must be a layer index in \[0, {depth - 1}\], got {start}"
        ):
            space.uniform_point(start)


@pytest.mark.parametrize("kind", ["compact", "per_layer"])
@pytest.mark.parametrize("model", ["digits", "deit_s"])
def test_the_layers_before_token_start_keep_every_patch_token(request, model, kind):
    """A point drops tokens from ``token_start`` on. When the budget shrinks the point, the layers
    before it still keep every patch token (the projection used to shrink their keep ratio of 1
    with the others, so every point pruned tokens from the first layer)."""
    base, scores = request.getfixturevalue(model)
    space = SearchSpace(kind, depth=base.depth)
    budget = Budget("macs", 0.5 * macs(Policy.keep_all(base)))
    for token_start in (0.5, 1.0):
        point = space.uniform_point() | {"tokens": 0.5, "token_start": token_start}
        fit = decode(point, space=space, base=base, scores=scores, budget=budget, measure=macs)
        start = round(token_start * (base.depth - 1))
        kept = [layer.keep_tokens for layer in fit.policy.layers]
        assert fit.scale < 1 and 0.99 * budget.limit <= fit.cost <= budget.limit
        assert kept[:start] == [base.num_patches] * start, kept
        assert kept[-1] < base.num_patches
        assert fit.token_start == start


def test_a_token_start_too_late_for_the_budget_moves_earlier(digits):
    """A budget that only a schedule starting earlier can reach still lands: the projection
    moves the first layer that drops tokens back one layer at a time, and says where it landed."""
    base, scores = digits
    space = SearchSpace("compact", depth=base.depth)
    floor = macs(cheapest(space, base, scores=scores))
    budget = Budget("macs", 1.2 * floor)
    point = space.uniform_point() | {"token_start": 1.0}
    fit = decode(point, space=space, base=base, scores=scores, budget=budget, measure=macs)
    assert fit.cost <= budget.limit
    assert fit.token_start < base.depth - 1
    kept = [layer.keep_tokens for layer in fit.policy.layers]
    assert kept[: fit.token_start] == [base.num_patches] * fit.token_start
