import json

import pytest
import torch

from vitprune import load_pruned
from vitprune.cli import main
from vitprune.spaces import Policy, macs

TINY = [
    "deit_tiny_patch16_224",
    "--model-arg",
    "img_size=64",
    "--model-arg",
    "depth=4",
    "--model-arg",
    "embed_dim=64",
    "--model-arg",
    "num_heads=4",
]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_policy_cost_apply(tmp_path, capsys):
    policy_path = tmp_path / "p.json"
    code, _, err = run(
        capsys,
        "policy",
        *TINY,
        "--keep-heads",
        "0.5",
        "--keep-mlp",
        "0.5",
        "--keep-qk",
        "0.5",
        "--token-keep",
        "0.7",
        "--token-start",
        "1",
        "--drop-act",
        "1",
        "-o",
        policy_path,
    )
    assert code == 0, err
    policy = Policy.from_json(policy_path.read_text())
    assert all(
        layer.num_heads == 2 and layer.qk_dim == 8 and layer.mlp_hidden == 128 for layer in policy.layers
    )
    assert [layer.keep_tokens for layer in policy.layers] == [16, 11, 8, 6]
    assert sum(not layer.activation for layer in policy.layers) == 1
    assert "of dense" in err

    code, out, _ = run(capsys, "cost", policy_path)
    report = json.loads(out)
    assert code == 0 and report["macs"] == macs(policy)
    assert 0 < report["macs_ratio"] < 0.5
    assert len(report["layers"]) == 4

    code, _, err = run(capsys, "apply", policy_path, "--out", tmp_path / "model")
    assert code == 0, err
    model, loaded = load_pruned(tmp_path / "model")
    assert loaded == policy
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_no_options_keeps_everything(tmp_path, capsys):
    code, _, _ = run(capsys, "policy", *TINY, "-o", tmp_path / "p.json")
    assert code == 0
    assert Policy.from_json((tmp_path / "p.json").read_text()).is_keep_all()


def test_widths_are_aligned(tmp_path, capsys):
    run(capsys, "policy", *TINY, "--keep-mlp", "0.3", "--align", "16", "-o", tmp_path / "p.json")
    policy = Policy.from_json((tmp_path / "p.json").read_text())
    assert {layer.mlp_hidden % 16 for layer in policy.layers} == {0}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["cost", "missing.json"], "missing.json: no such policy file"),
        (["policy", "not_a_model", "-o", "x.json"], "model 'not_a_model': not a timm model name"),
        (["policy", *TINY, "--drop-attn", "9", "-o", "x.json"], "drop_attn: must be in [0, 4], got 9"),
        (["policy", *TINY, "--checkpoint", "nope.pth", "-o", "x.json"], "nope.pth: no such checkpoint"),
        (["apply", "bad.json", "--out", "m"], "bad.json: layers: expected a list"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.json").write_text(
        '{"format": "vitprune.policy/1", "base": '
        + json.dumps(Policy.keep_all(_base()).to_dict()["base"])
        + "}"
    )
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.strip() == f"vitprune: error: {message}" or err.strip().startswith(
        f"vitprune: error: {message}"
    )
    assert err.count("\n") == 1
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "m").exists()


def test_bad_ratio_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["policy", "deit_tiny_patch16_224", "--keep-heads", "1.5", "-o", "x.json"])
    assert exit_info.value.code == 2
    assert "must be a ratio in [0, 1]" in capsys.readouterr().err


def _base():
    from helpers import tiny_model

    return tiny_model("deit", device="meta")[1]
