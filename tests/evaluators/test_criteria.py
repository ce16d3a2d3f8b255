"""Criteria: the registry, invariants every criterion keeps, and constructed heads with known ranks."""

import pytest
import timm
import torch
from helpers import TINY_MODELS, calibration, tiny_model

from vitprune.evaluators import describe
from vitprune.evaluators.criteria import check_criterion, criterion_names, get_criterion, register_criterion
from vitprune.spaces import InputError, Scores
from vitprune.spaces.scores import DIMENSIONS

DATA_DRIVEN = ("hsic", "snp", "star", "depth", "taylor")
# The Scores fields each criterion fills.
FIELDS = {
    "hsic": {"heads", "mlp"},
    "snp": {"heads", "qk", "v"},
    "star": {"token_prior", "token_fusion", "token_rates"},
    "depth": {"attn_layers", "act_layers"},
    "taylor": {"heads", "qk", "v", "mlp", "embed"},
    "magnitude": {"heads", "qk", "v", "mlp", "attn_layers", "act_layers", "embed"},
    "random": {"heads", "qk", "v", "mlp", "attn_layers", "act_layers", "embed"},
}
SCORE_FIELDS = (
    "heads",
    "qk",
    "v",
    "mlp",
    "attn_layers",
    "act_layers",
    "token_prior",
    "token_fusion",
    "token_rates",
    "embed",
)


def lowest(values):
    return min(range(len(values)), key=lambda i: values[i])


def test_registry_knows_every_criterion():
    assert criterion_names() == sorted(FIELDS)


def test_registering_a_name_twice_raises():
    with pytest.raises(ValueError, match="'hsic' is already registered"):
        register_criterion("hsic", scores=("heads",))(lambda model, *, base, data=None: None)
    assert criterion_names() == sorted(FIELDS)


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_each_criterion_declares_the_dimensions_its_scores_fill(name):
    declared = {dim for dim in DIMENSIONS if dim != "tokens" and _ranks(name, dim)}
    assert declared == {
        dim for dim, fields in DIMENSIONS.items() if dim != "tokens" and set(fields) & FIELDS[name]
    }


def _ranks(name, dimension):
    try:
        check_criterion(name, dimension)
    except InputError:
        return False
    return True


def test_a_criterion_chosen_for_a_dimension_it_does_not_score_is_named_with_the_alternatives():
    with pytest.raises(
        InputError, match=r"criteria\.heads: star does not score heads \(choose one of hsic, magnitude"
    ):
        check_criterion("star", "heads")
    with pytest.raises(InputError, match=r"criterion 'snpp': unknown"):
        check_criterion("snpp", "qk")
    check_criterion("magnitude", "tokens")  # any criterion ranks tokens by the class token's attention


def test_unknown_criterion_lists_the_known_names():
    with pytest.raises(
        InputError, match=r"criterion 'hisc': unknown \(known: depth, hsic, magnitude, random, snp"
    ):
        get_criterion("hisc")


@pytest.mark.parametrize("name", DATA_DRIVEN)
def test_data_driven_criteria_need_data(name):
    model, base = tiny_model("deit")
    with pytest.raises(InputError, match=f"criterion {name}: needs calibration data"):
        get_criterion(name)(model, base=base)


@pytest.mark.parametrize("key", sorted(TINY_MODELS))
@pytest.mark.parametrize("name", sorted(FIELDS))
def test_scores_fit_every_model_family(name, key):
    model, base = tiny_model(key)
    data = calibration(model, base, size=4)
    if name == "star" and not base.class_token:
        with pytest.raises(InputError, match="star: token pruning needs a class token"):
            get_criterion(name)(model, base=base, data=data)
        return
    if name in ("depth", "taylor") and base.num_classes == 0:
        with pytest.raises(InputError, match=f"{name}: needs a classifier head"):
            get_criterion(name)(model, base=base, data=data)
        return
    scores = get_criterion(name)(model, base=base, data=data).check(base)
    filled = {field for field in SCORE_FIELDS if getattr(scores, field) is not None}
    assert filled == FIELDS[name]
    flat = torch.tensor(
        [x for field in filled for x in torch.tensor(getattr(scores, field)).flatten().tolist()]
    )
    assert torch.isfinite(flat).all()


@pytest.mark.parametrize("name", ["depth", "taylor"])
def test_headless_family_scores_with_a_classifier(name):
    """The register/LayerScale family has no classifier by default; with one, it is scored."""
    timm_name, args = TINY_MODELS["vit_reg_layerscale"]
    torch.manual_seed(0)
    model = timm.create_model(timm_name, **args, num_classes=10).eval()
    base = describe(model, name=timm_name, model_args={**args, "num_classes": 10})
    scores = get_criterion(name)(model, base=base, data=calibration(model, base, size=4)).check(base)
    assert all(getattr(scores, field) is not None for field in FIELDS[name])


@pytest.mark.parametrize("name", DATA_DRIVEN)
def test_criteria_leave_the_model_untouched_and_are_deterministic(name):
    model, base = tiny_model("deit")
    data = calibration(model, base, size=4)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    model.train()
    first = get_criterion(name)(model, base=base, data=data)
    assert model.training
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert get_criterion(name)(model.eval(), base=base, data=data) == first


def zero_head(model, layer, head, head_dim):
    """Zero the ``proj`` columns of one head: its output no longer reaches the residual stream."""
    with torch.no_grad():
        model.blocks[layer].attn.proj.weight[:, head * head_dim : (head + 1) * head_dim] = 0


@pytest.mark.parametrize("name", ["hsic", "snp", "taylor", "magnitude"])
def test_a_zeroed_head_scores_lowest(name):
    model, base = tiny_model("deit")
    zeroed = [1, 3, 0]  # one head per layer
    for layer, head in enumerate(zeroed):
        zero_head(model, layer, head, base.head_dim)
    scores = get_criterion(name)(model, base=base, data=calibration(model, base, batches=2, size=8))
    assert [lowest(layer) for layer in scores.heads] == zeroed
    if name in ("snp", "taylor", "magnitude"):  # their head scores are output sizes: exactly 0
        assert [scores.heads[layer][head] for layer, head in enumerate(zeroed)] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("name", ["hsic", "snp"])
def test_of_two_identical_heads_one_is_the_redundant_one(name):
    """Head 2 becomes a copy of head 0 (q, k, v rows and proj columns) in every layer."""
    model, base = tiny_model("deit")
    D, hd = base.embed_dim, base.head_dim
    with torch.no_grad():
        for block in model.blocks:
            attn = block.attn
            for part in range(3):  # q, k, v
                attn.qkv.weight[part * D + 2 * hd : part * D + 3 * hd] = attn.qkv.weight[
                    part * D : part * D + hd
                ]
                attn.qkv.bias[part * D + 2 * hd : part * D + 3 * hd] = attn.qkv.bias[part * D : part * D + hd]
            attn.proj.weight[:, 2 * hd : 3 * hd] = attn.proj.weight[:, :hd]
    scores = get_criterion(name)(model, base=base, data=calibration(model, base, batches=2, size=8))
    for heads in scores.heads:
        redundant = lowest(heads)
        assert redundant in (0, 2)
        assert heads[2 - redundant] > heads[redundant]  # its twin is kept
    if name == "snp":  # the twin's output is already produced: its residual is ~0
        assert all(heads[lowest(heads)] < 1e-4 * max(heads) for heads in scores.heads)
    if name == "hsic":  # ordinal mRMR scores: the twin chosen first, the copy last
        assert [heads[0] for heads in scores.heads] == [1.0, 1.0, 1.0]
        assert [heads[2] for heads in scores.heads] == [0.25, 0.25, 0.25]


@pytest.mark.parametrize("name", ["hsic", "taylor", "magnitude"])
def test_a_neuron_with_a_zero_output_column_scores_lowest(name):
    model, base = tiny_model("deit")
    dead = [7, 100, 255]
    with torch.no_grad():
        for block, neuron in zip(model.blocks, dead, strict=True):
            block.mlp.fc2.weight[:, neuron] = 0
    scores = get_criterion(name)(model, base=base, data=calibration(model, base, size=4))
    assert [lowest(layer) for layer in scores.mlp] == dead
    assert [scores.mlp[layer][n] for layer, n in enumerate(dead)] == [0.0, 0.0, 0.0]


def test_scores_combine_criteria_per_dimension():
    model, base = tiny_model("deit")
    data = calibration(model, base, size=4)
    hsic, snp, star = (get_criterion(n)(model, base=base, data=data) for n in ("hsic", "snp", "star"))
    combined = Scores.combine({"heads": hsic, "qk": snp, "v": snp, "mlp": hsic, "tokens": star}).check(base)
    assert combined.heads == hsic.heads and combined.qk == snp.qk and combined.token_prior == star.token_prior
    assert combined.attn_layers is None
