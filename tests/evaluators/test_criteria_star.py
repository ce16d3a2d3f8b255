"""STAR token importance: the KL-optimal fusion weight, the rate rule, and a model whose attention
is planted on known patches."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_MODELS, tiny_model

from vitprune.evaluators import apply_policy
from vitprune.evaluators.criteria import get_criterion
from vitprune.evaluators.criteria.star import auto_keep_rates, kl_fusion_weight, perplexity
from vitprune.spaces import InputError, build_policy, uniform_ratios
from vitprune.spaces.builder import LayerRatios


def images(base, *, batches=2, size=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(size, base.in_chans, *base.model_args["img_size"], generator=g),
            torch.zeros(size).long(),
        )
        for _ in range(batches)
    ]


# -- the fusion weight -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weight", "expected"),
    [
        # two points: f(α*) = g ∝ p^w q^(1−w), α* = (g_1 − q_1)/(p_1 − q_1); p = (.9, .1), q = (.3, .7)
        (0.5, (math.sqrt(0.27) / (math.sqrt(0.27) + math.sqrt(0.07)) - 0.3) / 0.6),  # 0.604356
        (0.25, 0.297452),
        (0.0, 0.0),
        (1.0, 1.0),
    ],
)
def test_fusion_weight_matches_the_two_point_closed_form(weight, expected):
    alpha = kl_fusion_weight(torch.tensor([[0.9, 0.1]]), torch.tensor([0.3, 0.7]), weight=weight)
    assert alpha == pytest.approx(expected, abs=1e-6)


def test_fusion_weight_minimises_the_weighted_kl_over_images():
    """Three patches, two images: the bisection agrees with a fine grid search of the objective."""
    online = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.1, 0.4]], dtype=torch.float64)
    prior = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)

    alpha = torch.linspace(0, 1, 100001, dtype=torch.float64)[:, None, None]
    fused = alpha * online + (1 - alpha) * prior
    objective = 0.3 * (fused * (fused / online).log()).sum(-1) + 0.7 * (fused * (fused / prior).log()).sum(-1)
    best = float(alpha.flatten()[objective.mean(-1).argmin()])
    assert kl_fusion_weight(online, prior, weight=0.3) == pytest.approx(best, abs=1e-5)  # 0.291567


def test_fusion_leans_towards_the_more_confident_source():
    """With equal weights, a flat online score gets less than half the say against a peaked prior,
    and exchanging the two sources exchanges their shares."""
    uniform = torch.full((4,), 0.25)
    peaked = torch.tensor([0.97, 0.01, 0.01, 0.01])
    alpha = kl_fusion_weight(uniform[None], peaked)
    assert alpha == pytest.approx(0.282616, abs=1e-6)
    assert kl_fusion_weight(peaked[None], uniform) == pytest.approx(1 - alpha, abs=1e-9)


# -- keep rates ------------------------------------------------------------------------------------


def test_keep_rates_are_ratios_of_a_non_increasing_keep_fraction():
    rates = auto_keep_rates(torch.tensor([0.5, 0.8, 0.25, 0.3]))
    torch.testing.assert_close(rates, torch.tensor([0.5, 1.0, 0.5, 1.0], dtype=torch.float64))


def test_perplexity_counts_equally_likely_patches():
    dist = torch.tensor([[0.25, 0.25, 0.25, 0.25, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0]])
    torch.testing.assert_close(perplexity(dist), torch.tensor([4.0, 1.0], dtype=torch.float64))


# -- a planted model -------------------------------------------------------------------------------

PLANTED = (0, 5, 6, 10)  # 4 of the 16 patches


def planted_model(layers):
    """Tiny DeiT whose attention in ``layers`` puts all its mass on the patches in ``PLANTED``
    (uniformly) and is uniform over all tokens elsewhere; the residual stream never changes.

    Patch tokens are their position embeddings only: ``+u`` at planted positions, ``−u`` elsewhere
    and at the class token. Every query is the constant ``20·e_0`` (a bias) and key dim 0 reads
    ``±20`` from the token, so logits differ by ``2·20·20/4 = 200`` between planted and other keys.
    ``proj`` and ``fc2`` are zero, so every block sees the same tokens.
    """
    model, base = tiny_model("deit")
    D, hd = base.embed_dim, base.head_dim
    u = torch.zeros(D)
    u[0] = 1.0
    pos = -u.repeat(base.num_patches + 1, 1)
    pos[[1 + j for j in PLANTED]] = u
    normalised = F.layer_norm(u, (D,))
    with torch.no_grad():
        model.patch_embed.proj.weight.zero_()
        model.patch_embed.proj.bias.zero_()
        model.cls_token.zero_()
        model.pos_embed.copy_(pos[None])
        for i, block in enumerate(model.blocks):
            for linear in (block.attn.proj, block.mlp.fc2, block.attn.qkv):
                linear.weight.zero_()
                linear.bias.zero_()
            block.norm1.weight.fill_(1.0)
            block.norm1.bias.zero_()
            if i in layers:
                for h in range(base.num_heads):
                    block.attn.qkv.bias[h * hd] = 20.0
                    block.attn.qkv.weight[D + h * hd] = 20.0 * normalised / normalised.square().sum()
    return model, base


def test_planted_attention_gives_the_planted_prior_rates_and_fusion():
    model, base = planted_model(layers=(0, 1, 2))
    scores = get_criterion("star")(model, base=base, data=images(base))
    floor = 1e-3 / 16
    on, off = (1 - 1e-3) / 4 + floor, floor
    expected = tuple(on if j in PLANTED else off for j in range(16))
    for layer in (0, 1):  # the later layers pass relevance only to the planted patches
        assert scores.token_prior[layer] == pytest.approx(expected, rel=1e-9)
    assert scores.token_prior[2] == pytest.approx((1 / 16,) * 16, rel=1e-12)  # nothing after the last layer
    assert scores.token_fusion == pytest.approx((1.0, 1.0, 1.0), abs=1e-6)  # online is as sharp as it gets
    assert scores.token_rates == pytest.approx((0.25, 1.0, 1.0), abs=1e-3)  # keep the 4 planted patches


def test_planted_attention_from_layer_one_on():
    """Layer 0 attends uniformly: its online score is flat and defers to the planted prior; the
    keep fraction reaches the 4 planted patches at layer 1 and never grows back."""
    model, base = planted_model(layers=(1, 2))
    scores = get_criterion("star")(model, base=base, data=images(base))
    assert scores.token_fusion[0] < 0.1 < 0.99 < scores.token_fusion[1]
    kept = torch.tensor(scores.token_rates).cumprod(0)
    assert 0.25 + 0.01 < kept[0] < 0.5
    assert kept[1:].tolist() == pytest.approx([0.25, 0.25], abs=1e-3)


def test_planted_scores_make_the_pruned_model_keep_the_planted_patches():
    """End to end: the builder turns the rates into keep counts, the surgery fuses the prior and the
    online score, and the 4 planted patches are what survive layer 0."""
    model, base = planted_model(layers=(0, 1, 2))
    scores = get_criterion("star")(model, base=base, data=images(base))
    ratios = tuple(LayerRatios(tokens=rate) for rate in scores.token_rates)
    policy = build_policy(base, scores, ratios)
    assert [layer.keep_tokens for layer in policy.layers] == [4, 4, 4]
    pruned = apply_policy(model, policy)
    kept = {}
    pruned.blocks[0].attn.tokens.register_forward_hook(lambda m, a, out: kept.update(positions=out[1]))
    with torch.no_grad():
        pruned(images(base)[0][0])
    assert kept["positions"].sort(dim=1).values.tolist() == [list(PLANTED)] * 4


# -- every family ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(TINY_MODELS))
def test_star_on_every_family(key):
    model, base = tiny_model(key)
    if not base.class_token:
        with pytest.raises(InputError, match=f"token pruning needs a class token, and {base.model} has none"):
            get_criterion("star")(model, base=base, data=images(base))
        return
    scores = get_criterion("star")(model, base=base, data=images(base)).check(base)
    assert all(0 < rate <= 1 for rate in scores.token_rates)
    assert all(0 <= alpha <= 1 for alpha in scores.token_fusion)
    for prior in scores.token_prior:
        assert min(prior) > 0
        assert sum(prior) == pytest.approx(1.0, abs=1e-9)
    # the policy built from these scores is valid and uses them
    policy = build_policy(base, scores, uniform_ratios(base.depth, token_keep=0.5, token_start=1))
    assert policy.layers[1].token_prior == scores.token_prior[1]
    assert policy.layers[1].token_fusion == scores.token_fusion[1]


def test_star_options_are_checked():
    model, base = tiny_model("deit")
    with pytest.raises(InputError, match="kl_weight"):
        get_criterion("star")(model, base=base, data=images(base), kl_weight=1.5)
