import random

import pytest
import torch
from helpers import TINY_MODELS, random_policy, tiny_model
from safetensors.torch import save_file

from vitprune import apply_policy, load_pruned, save_pruned
from vitprune.evaluators import read_state_dict
from vitprune.evaluators.dense import load_dense
from vitprune.spaces import InputError, Policy


@pytest.mark.parametrize("key", sorted(TINY_MODELS))
def test_save_load_round_trip_is_bitwise(tmp_path, key):
    model, base = tiny_model(key)
    policy = random_policy(base, random.Random(4))
    pruned = apply_policy(model, policy).eval()
    save_pruned(pruned, policy, tmp_path / "model")
    loaded, loaded_policy = load_pruned(tmp_path / "model")
    assert loaded_policy == policy
    want, got = pruned.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    x = torch.randn(2, base.in_chans, *base.model_args["img_size"])
    with torch.no_grad():
        assert torch.equal(pruned(x), loaded(x))
    assert (tmp_path / "model" / "policy.json").read_text() == policy.to_json()


def test_no_pickle_in_the_model_directory(tmp_path):
    model, base = tiny_model("deit")
    save_pruned(apply_policy(model, Policy.keep_all(base)), Policy.keep_all(base), tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.safetensors", "policy.json"]


def test_save_refuses_weights_that_do_not_match_and_keeps_the_old_directory(tmp_path):
    model, base = tiny_model("deit")
    keep_all = Policy.keep_all(base)
    save_pruned(apply_policy(model, keep_all), keep_all, tmp_path / "m")
    before = (tmp_path / "m" / "model.safetensors").read_bytes()
    other = random_policy(base, random.Random(0))
    with pytest.raises(InputError, match=r"weights do not match the policy|needs"):
        save_pruned(apply_policy(model, keep_all), other, tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no staging leftovers


def test_overwrite_replaces_the_whole_directory(tmp_path):
    model, base = tiny_model("deit")
    policy = random_policy(base, random.Random(1))
    save_pruned(apply_policy(model, Policy.keep_all(base)), Policy.keep_all(base), tmp_path / "m")
    save_pruned(apply_policy(model, policy), policy, tmp_path / "m")
    assert load_pruned(tmp_path / "m")[1] == policy
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(InputError, match="not a model directory"):
        load_pruned(tmp_path / "missing")
    model, base = tiny_model("deit")
    policy = Policy.keep_all(base)
    save_pruned(apply_policy(model, policy), policy, tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(InputError, match="not a readable safetensors file") as error:
        load_pruned(tmp_path / "m")
    assert "\n" not in str(error.value)
    save_file({"blocks.0.attn.attn.qkv.weight": torch.zeros(3, 3)}, tmp_path / "m" / "model.safetensors")
    with pytest.raises(InputError, match="weights do not match the policy"):
        load_pruned(tmp_path / "m")
    (tmp_path / "m" / "policy.json").write_text('{"format": "vitprune.policy/1", "base": {}}')
    with pytest.raises(InputError, match=r"policy.json: base.model: missing"):
        load_pruned(tmp_path / "m")


def test_read_state_dict_unwraps_training_checkpoints(tmp_path):
    model, _ = tiny_model("deit")
    state = model.state_dict()
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "ckpt.pth")
    loaded = read_state_dict(tmp_path / "ckpt.pth")
    assert loaded.keys() == state.keys()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "w.safetensors")
    assert read_state_dict(tmp_path / "w.safetensors").keys() == state.keys()
    (tmp_path / "junk.pth").write_bytes(b"\x00junk")
    with pytest.raises(InputError, match=r"junk\.pth: not a readable checkpoint"):
        read_state_dict(tmp_path / "junk.pth")
    with pytest.raises(InputError, match="no such checkpoint"):
        read_state_dict(tmp_path / "none.pth")


def test_load_dense_from_checkpoint_infers_the_class_count(tmp_path):
    name, args = TINY_MODELS["deit"]
    import timm

    source = timm.create_model(name, **{**args, "num_classes": 7})
    torch.save(source.state_dict(), tmp_path / "ckpt.pth")
    model, base = load_dense(name, checkpoint=tmp_path / "ckpt.pth", model_args=args)
    assert base.num_classes == 7
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.state_dict().items())
    with pytest.raises(InputError, match="does not fit"):
        load_dense(
            name, checkpoint=tmp_path / "ckpt.pth", model_args={**args, "embed_dim": 32, "num_heads": 2}
        )


def test_load_dense_from_a_vitprune_directory(tmp_path):
    model, base = tiny_model("deit")
    keep_all = Policy.keep_all(base)
    save_pruned(apply_policy(model, keep_all), keep_all, tmp_path / "dense")
    with pytest.raises(InputError, match="dense model is needed"):
        other = random_policy(base, random.Random(0))
        save_pruned(apply_policy(model, other), other, tmp_path / "pruned")
        load_dense(None, checkpoint=tmp_path / "pruned")
    # a keep-all directory comes back as the timm dense model, bit for bit, ready for surgery
    loaded, loaded_base = load_dense(None, checkpoint=tmp_path / "dense")
    assert loaded_base == base
    assert type(loaded.blocks[0]).__name__ == "Block"
    want = model.state_dict()
    assert loaded.state_dict().keys() == want.keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in want.items())
    apply_policy(loaded, random_policy(base, random.Random(1)))
