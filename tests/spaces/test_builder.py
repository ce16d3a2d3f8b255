import pytest
from helpers import tiny_model

from vitprune.spaces import InputError, LayerRatios, Scores, build_policy, uniform_ratios
from vitprune.spaces.builder import aligned_width, top_indices


@pytest.fixture(scope="module")
def base():
    return tiny_model("deit", device="meta")[1]  # D=64, 4 heads of 16, MLP 256, 16 patches, depth 3


def ramp(*shape, reverse=False):
    """Scores that increase with the last index (or decrease when ``reverse``)."""
    if len(shape) == 1:
        values = [float(i) for i in range(shape[0])]
        return tuple(reversed(values)) if reverse else tuple(values)
    return tuple(ramp(*shape[1:], reverse=reverse) for _ in range(shape[0]))


def scores_for(base, **fields):
    L, H, hd = base.depth, base.num_heads, base.head_dim
    full = dict(
        heads=ramp(L, H),
        qk=ramp(L, H, hd),
        v=ramp(L, H, hd, reverse=True),
        mlp=ramp(L, base.mlp_hidden),
        attn_layers=(3.0, 1.0, 2.0),
        act_layers=(1.0, 2.0, 3.0),
    )
    return Scores(criterion="test", **{**full, **fields})


@pytest.mark.parametrize(
    ("ratio", "full", "align", "width"),
    [
        (0.5, 64, 8, 32),
        (0.3, 64, 8, 16),
        (0.01, 64, 8, 8),
        (1.0, 100, 8, 100),
        (0.99, 100, 8, 96),
        (0.5, 4, 8, 4),
    ],
)
def test_aligned_width(ratio, full, align, width):
    assert aligned_width(ratio, full, align) == width


def test_top_indices_keeps_the_best_in_index_order():
    assert top_indices([0.1, 0.9, 0.5, 0.7], 2) == (1, 3)
    assert top_indices([1.0, 1.0, 1.0], 2) == (0, 1)


def test_uniform_ratios_choose_by_score(base):
    policy = build_policy(base, scores_for(base), uniform_ratios(3, heads=0.5, qk=0.5, v=0.25, mlp=0.5))
    for layer in policy.layers:
        assert layer.heads == (2, 3)
        assert layer.qk == (tuple(range(8, 16)),) * 2  # highest-scoring dims
        assert (
            layer.v == (tuple(range(0, 8)),) * 2
        )  # reversed ramp: lowest indices score highest (4 -> 8 by align)
        assert layer.mlp == tuple(range(128, 256))


def test_depth_removes_the_lowest_ranked_layers(base):
    policy = build_policy(base, scores_for(base), uniform_ratios(3), drop_attn=1, drop_act=2)
    assert [layer.attention for layer in policy.layers] == [True, False, True]
    assert [layer.activation for layer in policy.layers] == [False, False, True]
    assert policy.layers[1].heads == ()


def test_token_rate_is_carried_past_a_removed_attention(base):
    ratios = (LayerRatios(), LayerRatios(tokens=0.5), LayerRatios(tokens=0.5))
    policy = build_policy(base, scores_for(base), ratios, drop_attn=1)  # removes layer 1's attention
    assert [layer.keep_tokens for layer in policy.layers] == [16, 16, 4]


def test_token_prior_is_copied_to_layers_that_prune(base):
    prior = tuple(tuple(float(p + 1) for p in range(16)) for _ in range(3))
    scores = scores_for(base, token_prior=prior, token_fusion=(0.2, 0.3, 0.4))
    policy = build_policy(base, scores, uniform_ratios(3, token_keep=0.5, token_start=1))
    assert [layer.token_prior is not None for layer in policy.layers] == [False, True, True]
    assert [layer.token_fusion for layer in policy.layers] == [1.0, 0.3, 0.4]


def test_keep_all_needs_no_scores(base):
    policy = build_policy(base, Scores(criterion="none"), uniform_ratios(3))
    assert policy.is_keep_all()


def test_missing_scores_name_the_dimension(base):
    with pytest.raises(InputError, match=r"criteria\.heads: none does not score heads"):
        build_policy(base, Scores(criterion="none"), uniform_ratios(3, heads=0.5))
    with pytest.raises(InputError, match=r"criteria\.depth: none does not score depth"):
        build_policy(base, Scores(criterion="none"), uniform_ratios(3), drop_act=1)


def test_combine_takes_each_dimension_from_its_criterion(base):
    a = scores_for(base)
    b = Scores(criterion="b", heads=ramp(3, 4, reverse=True))
    combined = Scores.combine({"heads": b, "mlp": a})
    assert combined.heads == b.heads and combined.mlp == a.mlp and combined.qk is None
    assert combined.criterion == "heads=b+mlp=test"
    with pytest.raises(InputError, match=r"criteria\.width: unknown dimension"):
        Scores.combine({"width": a})


def test_scores_shapes_are_checked_and_round_trip(base):
    scores = scores_for(base)
    assert Scores.from_json(scores.to_json()) == scores
    with pytest.raises(
        InputError, match=r"scores.mlp \(test\): shape \(3, 10\) does not match the model \(3, 256\)"
    ):
        scores_for(base, mlp=ramp(3, 10)).check(base)


def test_bad_ratios_are_rejected(base):
    with pytest.raises(InputError, match=r"keep ratio heads: must be in \[0, 1\]"):
        LayerRatios(heads=1.5)
    with pytest.raises(InputError, match="token_start"):
        uniform_ratios(3, token_start=3)
