import dataclasses
import json
import random
import subprocess
import sys
from importlib import resources

import jsonschema
import pytest
from helpers import TINY_MODELS, random_policy, tiny_model

from vitprune.spaces import InputError, LayerPolicy, Policy, PolicyError
from vitprune.spaces.policy_json import json_schema


@pytest.fixture(scope="module")
def base():
    return tiny_model("deit", device="meta")[1]


def test_spaces_does_not_import_torch():
    code = "import sys, vitprune.spaces, vitprune.spaces.cost; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("key", sorted(TINY_MODELS))
def test_json_round_trip_is_exact(key):
    base = tiny_model(key, device="meta")[1]
    rng = random.Random(1)
    for policy in [Policy.keep_all(base)] + [random_policy(base, rng) for _ in range(5)]:
        text = policy.to_json()
        again = Policy.from_json(text)
        assert again == policy
        assert again.to_json() == text
        assert json.loads(text)["format"] == "vitprune.policy/2"


def test_version_1_files_still_load_and_keep_every_channel(base):
    """`vitprune.policy/1` (before the residual width could be pruned) has no `embed` key."""
    rng = random.Random(2)
    policy = random_policy(base, rng, prune_embed=False)
    doc = policy.to_dict()
    doc["format"] = "vitprune.policy/1"
    del doc["embed"]
    assert Policy.from_dict(doc) == policy and Policy.from_dict(doc).embed_dim == base.embed_dim
    with pytest.raises(InputError, match=r"embed: unknown field"):
        Policy.from_dict(doc | {"embed": [0, 1]})  # a /1 document cannot prune the residual width


def test_embed_channels_are_validated_and_a_full_list_means_all(base):
    assert (
        Policy(base=base, layers=Policy.keep_all(base).layers, embed=tuple(range(base.embed_dim))).embed
        is None
    )
    doc = Policy.keep_all(base).to_dict()
    with pytest.raises(InputError, match=r"embed: index 64 out of range for 64 embedding channels"):
        Policy.from_dict(doc | {"embed": [0, 64]})
    with pytest.raises(InputError, match=r"embed: indices must be strictly increasing, got 3 then 2"):
        Policy.from_dict(doc | {"embed": [3, 2]})
    with pytest.raises(InputError, match=r"embed: the residual stream needs at least one channel"):
        Policy.from_dict(doc | {"embed": []})


def test_keep_all_is_keep_all(base):
    policy = Policy.keep_all(base)
    assert policy.is_keep_all()
    assert all(layer.keep_tokens == base.num_patches for layer in policy.layers)
    assert policy.tokens_in == (base.num_patches,) * base.depth


def test_policy_is_immutable(base):
    policy = Policy.keep_all(base)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.layers = ()


def _edit(base, layer_index, **changes):
    """The keep-all policy document with one layer's fields replaced (later layers follow its tokens)."""
    doc = Policy.keep_all(base).to_dict()
    doc["layers"][layer_index].update(changes)
    if isinstance(changes.get("keep_tokens"), int) and 1 <= changes["keep_tokens"] <= base.num_patches:
        for later in doc["layers"][layer_index + 1 :]:
            later["keep_tokens"] = changes["keep_tokens"]
    return doc


BAD_LAYERS = [
    (
        {"heads": [0, 1, 2, 7], "qk": [[0]] * 4, "v": [[0]] * 4},
        "layers[1].heads: index 7 out of range for 4 heads",
    ),
    (
        {"heads": [1, 0], "qk": [[0], [0]], "v": [[0], [0]]},
        "layers[1].heads: indices must be strictly increasing",
    ),
    (
        {"heads": [0, 1], "qk": [[0, 1], [0]], "v": [[0], [0]]},
        "layers[1].qk[1]: keeps 1 dims but qk[0] keeps 2",
    ),
    (
        {"heads": [0], "qk": [[0]], "v": [[0, 1], []]},
        "layers[1].v: expected one index list per kept head (1)",
    ),
    ({"heads": [0], "qk": [[0]], "v": [[16]]}, "layers[1].v[0]: index 16 out of range for 16 head dims"),
    ({"heads": [], "qk": [], "v": []}, "layers[1].heads: a kept attention layer needs at least one head"),
    ({"attention": False}, "layers[1].heads: must be empty when attention is false"),
    ({"mlp": [0, 300]}, "layers[1].mlp: index 300 out of range for 256 MLP neurons"),
    ({"keep_tokens": 17}, "layers[1].keep_tokens: must be in [1, 16]"),
    ({"keep_tokens": 0}, "layers[1].keep_tokens: must be in [1, 16]"),
    ({"keep_tokens": "all"}, "layers[1].keep_tokens: expected an integer"),
    ({"activation": 1}, "layers[1].activation: expected true or false"),
    ({"heads": [0.5]}, "layers[1].heads[0]: expected an integer"),
    ({"flavour": "x"}, "layers[1].flavour: unknown field"),
]


@pytest.mark.parametrize(("changes", "message"), BAD_LAYERS)
def test_bad_layer_is_rejected_with_the_field_named(base, changes, message):
    with pytest.raises(PolicyError) as error:
        Policy.from_dict(_edit(base, 1, **changes))
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def test_tokens_cannot_grow_back(base):
    doc = _edit(base, 0, keep_tokens=8)
    doc["layers"][1]["keep_tokens"] = 16
    with pytest.raises(PolicyError, match=r"layers\[1\].keep_tokens: must be in \[1, 8\]"):
        Policy.from_dict(doc)


def test_token_pruning_needs_the_layers_attention(base):
    doc = _edit(base, 1, attention=False, heads=[], qk=[], v=[], keep_tokens=8)
    with pytest.raises(
        PolicyError, match=r"layers\[1\].keep_tokens: tokens are ranked by this layer's attention"
    ):
        Policy.from_dict(doc)


def test_token_pruning_needs_a_class_token():
    base = tiny_model("vit_avgpool", device="meta")[1]
    with pytest.raises(PolicyError, match="needs a class token"):
        Policy.from_dict(_edit(base, 0, keep_tokens=4))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: d.update(format="vitprune.policy/0"),
            "format: expected one of vitprune.policy/1, vitprune.policy/2, got 'vitprune.policy/0'",
        ),
        (lambda d: d["base"].pop("embed_dim"), "base.embed_dim: missing"),
        (lambda d: d["base"].update(patch_size=[16]), "base.patch_size: expected two integers"),
        (lambda d: d.update(layers=d["layers"][:2]), "layers: expected 3 entries (base.depth), got 2"),
        (lambda d: d.update(layers={}), "layers: expected a list"),
        (lambda d: d["base"].update(model_args=[]), "base.model_args: expected an object"),
    ],
)
def test_bad_document_is_rejected_with_the_field_named(base, mutate, message):
    doc = Policy.keep_all(base).to_dict()
    mutate(doc)
    with pytest.raises(PolicyError) as error:
        Policy.from_dict(doc)
    assert str(error.value).startswith(message)


def test_not_json_is_one_line_error():
    with pytest.raises(PolicyError, match=r"^policy: not valid JSON"):
        Policy.from_json("{nope")


def test_direct_construction_validates(base):
    layer = Policy.keep_all(base).layers[0]
    bad = dataclasses.replace(layer, mlp=(5, 3))
    with pytest.raises(
        PolicyError, match=r"layers\[0\].mlp: indices must be strictly increasing, got 5 then 3"
    ):
        Policy(base=base, layers=(bad, layer, layer))


def test_mlp_form_picks_the_cheaper_exact_form():
    def layer(neurons, activation):
        return LayerPolicy(True, (0,), ((0,),), ((0,),), activation, tuple(range(neurons)), 4)

    assert layer(40, True).mlp_form(64) == "gelu"
    assert layer(33, False).mlp_form(64) == "merged"  # 2·64·33 MACs > 64·64
    assert layer(32, False).mlp_form(64) == "linear"  # equal cost: keep the two linears
    assert layer(0, False).mlp_form(64) == "removed"


def test_shipped_schema_is_the_generated_one():
    shipped = json.loads(resources.files("vitprune.spaces").joinpath("policy.schema.json").read_text())
    assert shipped == json_schema(), "regenerate with: vitprune schema > spaces/policy.schema.json"


@pytest.mark.parametrize("key", ["deit", "deit_distilled"])
def test_written_policies_validate_against_the_schema(key):
    base = tiny_model(key, device="meta")[1]
    schema = json_schema()
    for policy in (Policy.keep_all(base), random_policy(base, random.Random(3))):
        jsonschema.validate(json.loads(policy.to_json()), schema)
    doc = Policy.keep_all(base).to_dict()
    doc["layers"][0]["heads"] = "all"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema)


def test_token_prior_validation(base):
    prior = [1.0] * 16
    ok = _edit(base, 1, keep_tokens=8, token_prior=prior, token_fusion=0.5)
    assert Policy.from_dict(ok).layers[1].token_fusion == 0.5
    cases = [
        ({"token_prior": prior}, "layers[1].token_prior: only layers that prune tokens take a prior"),
        ({"keep_tokens": 8, "token_prior": [1.0] * 3}, "layers[1].token_prior: expected one score per patch"),
        (
            {"keep_tokens": 8, "token_prior": [0.0] * 16},
            "layers[1].token_prior: scores must be finite and > 0",
        ),
        (
            {"keep_tokens": 8, "token_prior": prior, "token_fusion": 2},
            "layers[1].token_fusion: must be in [0, 1]",
        ),
        ({"token_fusion": 0.5}, "layers[1].token_fusion: must be 1.0 without a token_prior"),
    ]
    for changes, message in cases:
        with pytest.raises(PolicyError) as error:
            Policy.from_dict(_edit(base, 1, **changes))
        assert str(error.value).startswith(message)


def test_files_written_atomically_get_the_permissions_of_an_ordinary_write(tmp_path):
    import os
    import stat

    from vitprune.spaces.files import write_text_atomic

    previous = os.umask(0o022)
    try:
        path = write_text_atomic(tmp_path / "run" / "experiment.json", "{}")
        (tmp_path / "plain.json").write_text("{}")
    finally:
        os.umask(previous)
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.json").stat().st_mode) == 0o644
