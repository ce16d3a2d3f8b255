import copy
import random

import pytest
import timm
import torch
from helpers import TINY_MODELS, random_policy, tiny_model
from reference import masked_dense, reference_forward
from torch.profiler import profile
from torch.utils.flop_counter import FlopCounterMode

from vitprune.evaluators import apply_policy
from vitprune.evaluators.modules import NoAttention, PrunedAttention
from vitprune.spaces import InputError, LayerPolicy, Policy, macs, params

ATOL = 1e-5


def _input(base, batch=3, seed=0):
    torch.manual_seed(seed)
    return torch.randn(batch, base.in_chans, *base.model_args["img_size"])


def _replace_layers(policy, changes):
    """``policy`` with the given LayerPolicy fields replaced in every layer."""
    layers = tuple(
        LayerPolicy(**{**layer.__dict__, **changes(i, layer)}) for i, layer in enumerate(policy.layers)
    )
    return Policy(base=policy.base, layers=layers)


def _assert_matches_reference(model, policy, x):
    pruned = apply_policy(model, policy).eval()
    reference = masked_dense(model, policy).eval()
    with torch.no_grad():
        got = pruned(x)
        want = reference_forward(reference, policy, x)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("key", sorted(TINY_MODELS))
def test_keep_all_reproduces_the_dense_model(key):
    model, base = tiny_model(key)
    x = _input(base)
    pruned = apply_policy(model, Policy.keep_all(base)).eval()
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), atol=ATOL, rtol=0)


def _some(rng, size, keep):
    return tuple(sorted(rng.sample(range(size), keep)))


# One structure pruned at a time (in every layer), against the masked dense model.
def _heads(rng, base, layer):
    heads = _some(rng, base.num_heads, 2)
    return {"heads": heads, "qk": layer.qk[:2], "v": layer.v[:2]}


def _qk(rng, base, layer):
    return {"qk": tuple(_some(rng, base.head_dim, 5) for _ in layer.heads)}


def _v(rng, base, layer):
    return {"v": tuple(_some(rng, base.head_dim, 11) for _ in layer.heads)}


def _neurons(rng, base, layer):
    return {"mlp": _some(rng, base.mlp_hidden, 100)}


@pytest.mark.parametrize("prune", [_heads, _qk, _v, _neurons], ids=["heads", "qk", "v", "neurons"])
@pytest.mark.parametrize("key", ["deit", "vit_reg_layerscale"])
def test_width_pruning_equals_masked_dense(key, prune):
    model, base = tiny_model(key)
    rng = random.Random(0)
    policy = _replace_layers(Policy.keep_all(base), lambda i, layer: prune(rng, base, layer))
    assert macs(policy) < macs(Policy.keep_all(base))
    _assert_matches_reference(model, policy, _input(base))


@pytest.mark.parametrize("neurons", [200, 20], ids=["merged", "linear"])
def test_removed_activation_equals_activation_free_mlp(neurons):
    model, base = tiny_model("deit")
    policy = _replace_layers(
        Policy.keep_all(base), lambda i, layer: {"activation": False, "mlp": tuple(range(neurons))}
    )
    pruned = apply_policy(model, policy)
    form = policy.layers[0].mlp_form(base.embed_dim)
    assert form == ("merged" if neurons > base.embed_dim / 2 else "linear")
    mlp = pruned.blocks[0].mlp.mlp
    assert isinstance(mlp, torch.nn.Linear) == (form == "merged")
    _assert_matches_reference(model, policy, _input(base))


def test_merged_mlp_is_exactly_the_composition():
    model, base = tiny_model("deit")
    policy = _replace_layers(Policy.keep_all(base), lambda i, layer: {"activation": False})
    merged = apply_policy(model, policy).blocks[1].mlp.mlp
    dense = model.blocks[1].mlp
    x = torch.randn(5, base.embed_dim, dtype=torch.float64)
    unmerged = torch.nn.functional.linear(
        torch.nn.functional.linear(x, dense.fc1.weight.double(), dense.fc1.bias.double()),
        dense.fc2.weight.double(),
        dense.fc2.bias.double(),
    )
    torch.testing.assert_close(merged(x.float()).double(), unmerged, atol=1e-5, rtol=1e-5)


def test_removed_attention_equals_skipping_it():
    model, base = tiny_model("deit_distilled")
    policy = _replace_layers(
        Policy.keep_all(base),
        lambda i, layer: {"attention": False, "heads": (), "qk": (), "v": ()} if i != 1 else {},
    )
    pruned = apply_policy(model, policy)
    assert isinstance(pruned.blocks[0].attn, NoAttention)
    _assert_matches_reference(model, policy, _input(base))


@pytest.mark.parametrize("key", ["deit", "deit_distilled", "vit_reg_layerscale"])
def test_token_pruning_equals_reference_topk_gather(key):
    model, base = tiny_model(key)
    schedule = [base.num_patches, 9, 4]
    policy = _replace_layers(Policy.keep_all(base), lambda i, layer: {"keep_tokens": schedule[i]})
    _assert_matches_reference(model, policy, _input(base))
    features = apply_policy(model, policy).eval().forward_features(_input(base))
    assert features.shape[1] == base.num_prefix_tokens + 4


@pytest.mark.parametrize("key", sorted(TINY_MODELS))
def test_random_policies_over_all_dimensions_equal_reference(key):
    model, base = tiny_model(key)
    rng = random.Random(11)
    for trial in range(4):
        _assert_matches_reference(model, random_policy(base, rng), _input(base, seed=trial))


@pytest.mark.parametrize("key", sorted(TINY_MODELS))
def test_analytic_cost_equals_flop_counter_and_parameter_count(key):
    model, base = tiny_model(key, device="meta")
    rng = random.Random(5)
    x = torch.empty(2, base.in_chans, *base.model_args["img_size"], device="meta")
    for policy in [Policy.keep_all(base)] + [random_policy(base, rng) for _ in range(15)]:
        pruned = apply_policy(model, policy)
        with FlopCounterMode(display=False) as counter:
            pruned(x)
        assert counter.get_total_flops() == 2 * 2 * macs(policy)  # FLOPs = 2 MACs, batch 2
        assert sum(p.numel() for p in pruned.parameters()) == params(policy)


@pytest.mark.parametrize("key", sorted(TINY_MODELS))
def test_every_parameter_gets_a_gradient(key):
    model, base = tiny_model(key)
    pruned = apply_policy(model, random_policy(base, random.Random(3))).train()
    pruned(_input(base)).square().mean().backward()
    missing = [name for name, p in pruned.named_parameters() if p.grad is None]
    assert not missing


def test_dense_model_is_left_unchanged():
    model, base = tiny_model("deit")
    before = copy.deepcopy(model.state_dict())
    apply_policy(model, random_policy(base, random.Random(0)))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert type(model.blocks[0]).__name__ == "Block"


def test_pruned_attention_sets_all_derived_attributes():
    model, base = tiny_model("deit")
    layer = LayerPolicy(True, (0, 2), ((1, 3, 5),) * 2, ((0, 1, 2, 3, 4),) * 2, True, tuple(range(8)), 16)
    policy = Policy(base=base, layers=(layer,) * 3)
    attn = apply_policy(model, policy).blocks[0].attn.attn
    assert isinstance(attn, PrunedAttention)
    assert (attn.num_heads, attn.qk_dim, attn.v_dim, attn.attn_dim) == (2, 3, 5, 10)
    assert attn.scale == base.head_dim**-0.5
    assert attn.qkv.out_features == 2 * (3 + 3 + 5) and attn.proj.in_features == 10


def _sdpa_kernels(model, x):
    with profile() as prof, torch.no_grad():
        model(x)
    return {e.name for e in prof.events() if "scaled_dot_product" in e.name}


@pytest.mark.parametrize(("qk_dim", "v_dim"), [(16, 16), (8, 16), (16, 8)])
def test_attention_runs_the_fused_kernel_for_any_widths(qk_dim, v_dim):
    model, base = tiny_model("deit")
    policy = _replace_layers(
        Policy.keep_all(base),
        lambda i, layer: {"qk": (tuple(range(qk_dim)),) * 4, "v": (tuple(range(v_dim)),) * 4},
    )
    kernels = _sdpa_kernels(apply_policy(model, policy).eval(), _input(base))
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in kernels
    assert "aten::_scaled_dot_product_attention_math" not in kernels


def test_model_and_policy_mismatch_is_rejected():
    model, _ = tiny_model("deit")
    _, other = tiny_model("deit_distilled")
    with pytest.raises(InputError, match=r"policy base\.num_prefix_tokens is 2 but the model has 1"):
        apply_policy(model, Policy.keep_all(other))


def test_unsupported_variants_are_rejected():
    model = timm.create_model("vit_small_patch16_224", img_size=32, depth=1, qk_norm=True)
    from vitprune.evaluators import describe

    with pytest.raises(InputError, match="q/k or scale normalisation in block 0 is not supported"):
        describe(model)


def test_pruning_a_pruned_model_is_rejected():
    model, base = tiny_model("deit")
    pruned = apply_policy(model, Policy.keep_all(base))
    with pytest.raises(InputError, match="already pruned"):
        apply_policy(pruned, Policy.keep_all(base))


@pytest.mark.parametrize("key", sorted(TINY_MODELS))
def test_residual_width_pruning_equals_the_reference_on_the_kept_channels(key):
    """`embed` alone: every norm, projection, LayerScale, token and classifier keeps the same channels."""
    model, base = tiny_model(key)
    rng = random.Random(7)
    policy = Policy(base=base, layers=Policy.keep_all(base).layers, embed=_some(rng, base.embed_dim, 40))
    _assert_matches_reference(model, policy, _input(base))
    pruned = apply_policy(model, policy)
    assert pruned.embed_dim == pruned.num_features == 40
    assert sum(p.numel() for p in pruned.parameters()) == params(policy) < params(Policy.keep_all(base))
