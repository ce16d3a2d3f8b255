import json

import pytest
import torch

from vitprune import load_pruned
from vitprune.cli import main
from vitprune.spaces import Policy, macs
from vitprune.spaces.space import SearchSpace

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


def _base():
    from helpers import tiny_model

    return tiny_model("deit", device="meta")[1]


def test_a_budget_moves_only_the_dimensions_asked_for(tmp_path, capsys):
    """`--keep-mlp 0.5 --budget-macs 0.6` prunes MLP neurons only: no tokens, heads or layers."""
    code, _, err = run(
        capsys, "policy", *TINY, "--keep-mlp", "0.5", "--budget-macs", "0.6", "-o", tmp_path / "p.json"
    )
    assert code == 0, err
    policy = Policy.from_json((tmp_path / "p.json").read_text())
    dense = Policy.keep_all(policy.base)
    for layer, full in zip(policy.layers, dense.layers, strict=True):
        assert (layer.attention, layer.heads, layer.qk, layer.v) == (
            full.attention,
            full.heads,
            full.qk,
            full.v,
        )
        assert layer.keep_tokens == full.keep_tokens and layer.activation
    assert 0.97 * 0.6 * macs(dense) <= macs(policy) <= 0.6 * macs(dense)


def test_without_token_start_tokens_drop_from_where_the_search_starts_them(tmp_path, capsys):
    """No `--token-start`: tokens drop from layer ⌈depth/4⌉, the uniform start of a search (3 of
    12 layers; it was depth // 3, 4 of 12, a rule of its own)."""
    deep = [*TINY[: TINY.index("depth=4")], "depth=12", *TINY[TINY.index("depth=4") + 1 :]]
    code, _, err = run(capsys, "policy", *deep, "--token-keep", "0.8", "-o", tmp_path / "p.json")
    assert code == 0, err
    policy = Policy.from_json((tmp_path / "p.json").read_text())
    kept = [layer.keep_tokens for layer in policy.layers]
    assert kept[:3] == [16] * 3 and kept[3] < 16, kept
    assert SearchSpace("compact", depth=12).uniform_token_start == 3


def test_a_budget_keeps_the_tokens_before_token_start(tmp_path, capsys):
    """`--token-start 2` with a budget: the budget shrinks the token schedule and the MLP, but
    layers 0 and 1 keep every patch token, as asked (they used to be pruned too: 9 and 5 of 16).
    Where no schedule from the layer asked reaches the budget, tokens drop earlier, and it says so."""
    argv = ["--keep-mlp", "0.8", "--token-keep", "0.7", "--token-start", "2", "--budget-macs", "0.5"]
    code, _, err = run(capsys, "policy", *TINY, *argv, "-o", tmp_path / "p.json")
    assert code == 0, err
    policy = Policy.from_json((tmp_path / "p.json").read_text())
    kept = [layer.keep_tokens for layer in policy.layers]
    assert kept[:2] == [16, 16] and kept[3] <= kept[2] < 16, kept
    assert 0.97 * 0.5 * macs(Policy.keep_all(policy.base)) <= macs(policy)
    assert "tokens drop from" not in err

    argv = ["--token-keep", "0.7", "--token-start", "2", "--budget-macs", "0.6"]
    code, _, err = run(capsys, "policy", *TINY, *argv, "-o", tmp_path / "q.json")
    assert code == 0, err
    assert "budget: tokens drop from layer 1, not 2: no later start reaches the budget" in err
    kept = [layer.keep_tokens for layer in Policy.from_json((tmp_path / "q.json").read_text()).layers]
    assert kept[0] == 16 and kept[1] < 16, kept


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--budget-macs", "-1"],
            "argument --budget-macs: must be a fraction of dense in (0, 1] or an absolute",
        ),
        (["--budget-params", "nan"], "argument --budget-params: must be a fraction of dense in (0, 1]"),
        (["--drop-attn", "-1"], "argument --drop-attn: must be >= 0, got -1"),
        (["--keep-heads", "1.5"], "argument --keep-heads: must be a ratio in [0, 1], got 1.5"),
        (["--budget-macs", "0.5"], "--budget-macs/--budget-params: say what to prune"),
    ],
)
def test_bad_numbers_name_what_was_typed_in_one_line(tmp_path, capsys, argv, message):
    try:
        code = main(["policy", *TINY, *argv, "-o", str(tmp_path / "p.json")])
    except SystemExit as exit_info:  # argparse's usage errors
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "p.json").exists()


def _tiny_state():
    import timm

    return timm.create_model(
        "deit_tiny_patch16_224", img_size=64, depth=4, embed_dim=64, num_heads=4
    ).state_dict()


@pytest.mark.parametrize("case", ["truncated safetensors in a directory", "random bytes", "foreign object"])
def test_a_bad_checkpoint_is_one_line_that_never_suggests_unpickling(tmp_path, capsys, case):
    import datetime

    from safetensors.torch import save_file

    if case == "truncated safetensors in a directory":
        checkpoint = tmp_path / "dense"
        checkpoint.mkdir()
        save_file({k: v.contiguous() for k, v in _tiny_state().items()}, checkpoint / "model.safetensors")
        data = (checkpoint / "model.safetensors").read_bytes()
        (checkpoint / "model.safetensors").write_bytes(data[: len(data) // 2])
        expected = "model.safetensors: not a readable safetensors file"
    elif case == "random bytes":
        checkpoint = tmp_path / "bad.pt"
        checkpoint.write_bytes(bytes(range(256)) * 4)
        expected = "bad.pt: not a readable checkpoint"
    else:
        checkpoint = tmp_path / "foreign.pt"
        torch.save({"model": _tiny_state(), "saved": datetime.datetime(2026, 1, 1)}, checkpoint)
        expected = "foreign.pt: not a readable checkpoint (it holds a datetime.datetime object"
    code, _, err = run(capsys, "policy", *TINY, "--checkpoint", checkpoint, "-o", tmp_path / "p.json")
    assert code == 2 and expected in err and err.count("\n") == 1, err
    assert "weights_only" not in err and "trust" not in err


def test_a_timm_training_checkpoint_with_its_arguments_loads(tmp_path, capsys):
    import argparse

    torch.save(
        {"state_dict": _tiny_state(), "args": argparse.Namespace(lr=0.1), "epoch": 9}, tmp_path / "c.pth"
    )
    code, _, err = run(capsys, "policy", *TINY, "--checkpoint", tmp_path / "c.pth", "-o", tmp_path / "p.json")
    assert code == 0, err


def test_help_and_version_answer_without_importing_torch():
    """`vitprune --help` must answer at once: building the parser imports no torch, timm, Ray or Ax."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from vitprune.cli import build_parser\n"
        "for argv in (['--help'], ['policy', '--help'], ['search', '--help'], ['--version']):\n"
        "    try:\n"
        "        build_parser().parse_args(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'timm', 'ray', 'ax') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert "vitprune 0.1.0" in done.stdout


def test_the_criteria_named_in_the_help_are_the_registered_ones(capsys):
    from vitprune.cli import CRITERIA
    from vitprune.evaluators.criteria import criterion_names

    assert list(CRITERIA) == criterion_names()
    code, _, err = run(capsys, "policy", *TINY, "--criterion", "snpp", "-o", "x.json")
    assert (
        code == 2
        and "criterion 'snpp': unknown (known: depth, hsic, magnitude, random, snp, star, taylor)" in err
    )


def test_the_residual_width_is_a_dimension_like_any_other(tmp_path, capsys):
    code, _, err = run(capsys, "policy", *TINY, "--keep-embed", "0.5", "-o", tmp_path / "p.json")
    assert code == 0, err
    policy = Policy.from_json((tmp_path / "p.json").read_text())
    assert policy.embed_dim == 32 and all(layer.num_heads == 4 for layer in policy.layers)
    code, _, err = run(
        capsys, "policy", *TINY, "--keep-embed", "0.5", "--budget-macs", "0.6", "-o", tmp_path / "b.json"
    )
    assert code == 0, err
    budgeted = Policy.from_json((tmp_path / "b.json").read_text())
    dense = Policy.keep_all(budgeted.base)
    assert budgeted.layers == dense.layers  # only the residual width moved
    assert macs(budgeted) <= 0.6 * macs(dense)
    wider = Policy(base=dense.base, layers=dense.layers, embed=tuple(range(budgeted.embed_dim + 8)))
    assert macs(wider) > 0.6 * macs(dense)  # the widest aligned residual width under the budget
    assert "budget: " in err and "of the budget" in err  # one aligned step is 1/8 of the width here
    code, _, err = run(capsys, "apply", tmp_path / "b.json", "--out", tmp_path / "model")
    assert code == 0, err
    model, loaded = load_pruned(tmp_path / "model")
    assert loaded == budgeted and model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
