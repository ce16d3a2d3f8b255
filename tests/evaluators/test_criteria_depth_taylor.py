"""Depth (BoundaryDPT) and first-order Taylor: planted layers, the surgery, and finite differences."""

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_MODELS, calibration, tiny_model

from vitprune.evaluators import apply_policy
from vitprune.evaluators.criteria import get_criterion
from vitprune.evaluators.criteria.depth import block_inputs, forward_from, kl_to
from vitprune.spaces import Policy

# -- depth -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def planted():
    """Layer 1's attention output is zeroed (its removal changes nothing); layer 2's GELU runs at
    pre-activations around +30, where GELU(z) = z to float precision (fc2's bias compensates the
    shift), so removing that activation changes nothing either."""
    model, base = tiny_model("deit")
    with torch.no_grad():
        model.blocks[1].attn.proj.weight.zero_()
        model.blocks[1].attn.proj.bias.zero_()
        mlp = model.blocks[2].mlp
        mlp.fc1.bias += 30.0
        mlp.fc2.bias -= 30.0 * mlp.fc2.weight.sum(dim=1)
    data = calibration(model, base)
    return model, base, data, get_criterion("depth")(model, base=base, data=data)


def test_a_silent_attention_layer_ranks_first_for_removal(planted):
    _, _, _, scores = planted
    assert scores.attn_layers[1] == 0.0
    assert min(scores.attn_layers[0], scores.attn_layers[2]) > 1e-4


def test_a_nearly_linear_activation_ranks_first_for_removal(planted):
    _, _, _, scores = planted
    assert scores.act_layers[2] < 1e-10
    assert min(scores.act_layers[0], scores.act_layers[1]) > 1e-6


@pytest.mark.parametrize("layer", [0, 2])
def test_depth_scores_are_the_kl_of_the_surgically_pruned_model(planted, layer):
    """The hooks remove exactly what ``apply_policy`` removes for ``attention: false`` or
    ``activation: false`` (the latter merges fc1·fc2 into one linear map)."""
    model, base, data, scores = planted
    keep = Policy.keep_all(base)
    for field, expected in (("attention", scores.attn_layers), ("activation", scores.act_layers)):
        layers = list(keep.layers)
        if field == "attention":
            layers[layer] = dataclasses.replace(layers[layer], attention=False, heads=(), qk=(), v=())
        else:
            layers[layer] = dataclasses.replace(layers[layer], activation=False)
        pruned = apply_policy(model, Policy(base=base, layers=tuple(layers)))
        with torch.no_grad():
            kl = sum(float(kl_to(model(x).double(), pruned(x).double())) for x, _ in data)
        kl /= sum(len(x) for x, _ in data)
        assert expected[layer] == pytest.approx(kl, rel=1e-4, abs=1e-9), field


@pytest.mark.parametrize("key", sorted(TINY_MODELS))
def test_forward_from_a_block_input_reproduces_the_model(key):
    """Depth reruns only the tail of the model; on every family the tail equals timm's forward."""
    model, base = tiny_model(key)
    images = calibration(model, base, batches=1, size=2)[0][0]
    with torch.no_grad():
        out, inputs = block_inputs(model, images)
        assert len(inputs) == base.depth
        for start in range(base.depth):
            torch.testing.assert_close(forward_from(model, inputs[start], start), out, rtol=0, atol=0)


# -- Taylor ----------------------------------------------------------------------------------------


def gated_losses(model, images, labels, *, gate, value):
    """Per-image cross-entropy with one unit's output multiplied by ``value`` (a reference gate)."""
    block = model.blocks[gate[1]]
    hd, width = block.attn.head_dim, block.attn.attn_dim
    kind, _, index = gate
    if kind == "mlp":
        handle = block.mlp.act.register_forward_hook(lambda m, a, out: _scale(out, [index], value))
    elif kind == "head":
        channels = list(range(index * hd, (index + 1) * hd))
        handle = block.attn.proj.register_forward_pre_hook(lambda m, a: (_scale(a[0], channels, value),))
    else:  # q/k dim (head, dim): the same dim of q and of k
        head, dim = index
        channels = [head * hd + dim, width + head * hd + dim]
        handle = block.attn.qkv.register_forward_hook(lambda m, a, out: _scale(out, channels, value))
    try:
        with torch.no_grad():
            return F.cross_entropy(model(images), labels, reduction="none")
    finally:
        handle.remove()


def _scale(x, channels, value):
    scale = torch.ones(x.shape[-1], dtype=x.dtype)
    scale[channels] = value
    return x * scale


@pytest.mark.parametrize(
    "gate", [("head", 0, 2), ("head", 2, 1), ("qk", 1, (3, 5)), ("qk", 0, (0, 15)), ("mlp", 2, 17)]
)
def test_taylor_scores_are_the_gate_derivatives(gate):
    """Central differences of the per-image loss in a gate on the unit (in float64), |·| averaged."""
    model, base = tiny_model("deit")
    data = [(x.double(), y) for x, y in calibration(model, base, batches=1, size=3)]
    model = copy.deepcopy(model).double()
    scores = get_criterion("taylor")(model, base=base, data=data)
    images, labels = data[0]
    eps = 1e-5
    up = gated_losses(model, images, labels, gate=gate, value=1 + eps)
    down = gated_losses(model, images, labels, gate=gate, value=1 - eps)
    expected = float(((up - down) / (2 * eps)).abs().mean())
    kind, layer, index = gate
    if kind == "qk":
        got = scores.qk[layer][index[0]][index[1]]
    else:
        got = {"head": scores.heads, "mlp": scores.mlp}[kind][layer][index]
    assert expected > 1e-8
    assert got == pytest.approx(expected, rel=1e-5)


def test_taylor_head_is_one_gate_over_its_value_dims():
    model, base = tiny_model("deit")
    scores = get_criterion("taylor")(model, base=base, data=calibration(model, base))
    for layer in range(base.depth):
        for h in range(base.num_heads):
            assert scores.heads[layer][h] <= sum(scores.v[layer][h]) * (1 + 1e-9)  # |Σ g| ≤ Σ |g|
