import random

import pytest
from helpers import TINY_MODELS, random_policy, tiny_model

from vitprune.spaces import LayerPolicy, Policy, cost, macs, params


def test_deit_small_matches_published_figures():
    """DeiT-S: 22,050,664 parameters (timm) and 4.6 G MACs (the paper's "4.6 GFLOPs")."""
    base = tiny_model("deit", device="meta")[1]
    base = type(base)(
        **{
            **base.__dict__,
            "model": "deit_small_patch16_224",
            "embed_dim": 384,
            "depth": 12,
            "num_heads": 6,
            "head_dim": 64,
            "mlp_hidden": 1536,
            "grid_size": (14, 14),
            "pos_embed_len": 197,
            "num_classes": 1000,
        }
    )
    policy = Policy.keep_all(base)
    assert params(policy) == 22_050_664
    assert round(macs(policy) / 1e9, 1) == 4.6


def _hand_layer_macs(D, n_in, n_out, heads, d_qk, d_v, mlp_macs_per_token, scores_tokens):
    qkv = n_in * D * heads * (2 * d_qk + d_v)
    attention = 2 * heads * n_in * n_in * max(d_qk, d_v)  # padded to equal widths for the fused kernel
    proj = n_in * heads * d_v * D
    ranking = heads * n_in * d_qk if scores_tokens else 0
    return qkv + attention + proj + ranking + n_out * mlp_macs_per_token


def test_layer_macs_by_hand():
    """Tiny DeiT (D=64, 4 heads of 16, MLP 256, 16 patches + class token), every form once."""
    base = tiny_model("deit", device="meta")[1]
    D = 64
    layers = (
        # 3 heads, q/k 8 dims, v 16 dims, GELU MLP of 100 neurons, prune 16 -> 10 tokens
        LayerPolicy(
            True,
            (0, 1, 3),
            ((0, 2, 4, 6, 8, 10, 12, 14),) * 3,
            (tuple(range(16)),) * 3,
            True,
            tuple(range(100)),
            10,
        ),
        # attention removed, activation removed with 40 neurons > D/2: one merged Linear(64, 64)
        LayerPolicy(False, (), (), (), False, tuple(range(40)), 10),
        # 1 head of 4/4 dims, activation removed with 32 neurons: two linears; tokens 10 -> 3
        LayerPolicy(True, (2,), ((1, 2, 3, 4),), ((5, 6, 7, 8),), False, tuple(range(32)), 3),
    )
    policy = Policy(base=base, layers=layers)
    expected_layers = [
        _hand_layer_macs(D, 17, 11, 3, 8, 16, 2 * D * 100, True),
        11 * D * D,
        _hand_layer_macs(D, 11, 4, 1, 4, 4, 2 * D * 32, True),
    ]
    breakdown = cost(policy)
    assert [layer.macs for layer in breakdown.layers] == expected_layers
    assert breakdown.embed_macs == 16 * D * 3 * 16 * 16
    assert breakdown.head_macs == D * 1000
    assert macs(policy) == sum(expected_layers) + 16 * D * 3 * 16 * 16 + D * 1000
    # parameters: norms are 2D (weight + bias), every linear has a bias
    attn0 = 2 * D + D * 3 * 32 + 3 * 32 + 3 * 16 * D + D
    mlp0 = 2 * D + D * 100 + 100 + 100 * D + D
    mlp1 = 2 * D + D * D + D
    attn2 = 2 * D + D * 12 + 12 + 4 * D + D
    mlp2 = 2 * D + 2 * D * 32 + 32 + D
    assert [layer.params for layer in breakdown.layers] == [attn0 + mlp0, mlp1, attn2 + mlp2]


@pytest.mark.parametrize("key", sorted(TINY_MODELS))
def test_pruning_never_costs_more_than_dense(key):
    base = tiny_model(key, device="meta")[1]
    dense = cost(Policy.keep_all(base))
    rng = random.Random(7)
    for _ in range(20):
        pruned = cost(random_policy(base, rng))
        assert pruned.macs <= dense.macs
        assert pruned.params <= dense.params


def test_to_dict_totals_add_up():
    base = tiny_model("deit_distilled", device="meta")[1]
    doc = cost(random_policy(base, random.Random(2))).to_dict()
    assert doc["macs"] == doc["embed"]["macs"] + doc["head"]["macs"] + sum(
        layer["macs"] for layer in doc["layers"]
    )
    assert doc["params"] == (
        doc["embed"]["params"] + doc["head"]["params"] + sum(layer["params"] for layer in doc["layers"])
    )
