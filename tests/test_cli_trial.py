"""The trial-side commands: train-dense and evaluate."""

import json

import pytest
import yaml

from vitprune.cli import main

SMALL = {"name": "vitprune_digits_vit", "args": {"depth": 2, "embed_dim": 32, "num_heads": 2}}


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    """A small dense digits model written by `vitprune train-dense` (plain spec)."""
    root = tmp_path_factory.mktemp("dense")
    config = root / "spec.yaml"
    config.write_text(yaml.safe_dump({"model": SMALL, "dense_training": {"epochs": 3}, "trials": 4}))
    import os

    os.environ["VITPRUNE_CACHE"] = str(root / "cache")
    try:
        assert main(["train-dense", str(config), "--out", str(root / "out")]) == 0
    finally:
        del os.environ["VITPRUNE_CACHE"]
    return root / "out"


def test_train_dense_writes_a_loadable_model(dense_dir):
    from vitprune.evaluators.dense import load_dense

    _, base = load_dense(None, checkpoint=dense_dir)
    assert base.model == "vitprune_digits_vit" and base.depth == 2
    metrics = json.loads((dense_dir / "metrics.json").read_text())
    assert 0.1 < metrics["test_accuracy"] <= 1.0


def test_train_dense_reads_a_ray_cluster_yaml(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VITPRUNE_CACHE", str(tmp_path / "cache"))
    cluster = {
        "cluster_name": "vitprune",
        "max_workers": 2,
        "metadata": {"vitprune": {"model": SMALL, "dense_training": {"epochs": 1}}},
    }
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(cluster))
    code, out, err = run(capsys, "train-dense", tmp_path / "search.yaml")
    assert code == 0, err
    assert json.loads(out)["model"] == "vitprune_digits_vit"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"data": {"source": "svhn"}}, "data.source: Input should be"),
        ({"dense_training": {"epochs": 0}}, "dense_training.epochs: Input should be greater than 0"),
        ({"model": {"nmae": "x"}}, "model.nmae: unknown key"),
        (
            {"cluster_name": "c", "metadata": {"vitprune": {"data": {"batch_size": -1}}}},
            "metadata.vitprune.data.batch_size: Input should be greater than 0",
        ),
        ({"cluster_name": "c"}, "a Ray cluster YAML holds the vitprune spec under metadata.vitprune"),
    ],
)
def test_bad_config_is_one_line_with_the_key_path(tmp_path, capsys, doc, message):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(doc))
    code, _, err = run(capsys, "train-dense", tmp_path / "c.yaml")
    assert code == 2
    assert message in err and err.count("\n") == 1


def test_unreadable_config_files(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("model: [unclosed")
    assert run(capsys, "train-dense", tmp_path / "bad.yaml")[0] == 2
    code, _, err = run(capsys, "train-dense", tmp_path / "none.yaml")
    assert code == 2 and "none.yaml: no such config file" in err


def test_evaluate_prints_metrics_and_ratios(dense_dir, tmp_path, capsys):
    code, _, err = run(
        capsys,
        "policy",
        "--checkpoint",
        dense_dir,
        "--keep-mlp",
        "0.5",
        "--keep-heads",
        "0.5",
        "-o",
        tmp_path / "p.json",
    )
    assert code == 0, err
    assert (
        run(capsys, "apply", tmp_path / "p.json", "--checkpoint", dense_dir, "--out", tmp_path / "m")[0] == 0
    )
    code, out, err = run(
        capsys,
        "evaluate",
        tmp_path / "m",
        "--dense",
        dense_dir,
        "--finetune-epochs",
        "1",
        "--batch-size",
        "4",
        "--device",
        "cpu",
    )
    assert code == 0, err
    report = json.loads(out)
    assert 0 <= report["accuracy"] <= 1 and report["split"] == "search-val"
    assert 0 < report["macs_ratio"] < 0.7 and report["latency_ms"] > 0
    assert report["dense"]["accuracy"] > 0.1 and "accuracy_ratio" in report


def test_evaluate_rejects_mismatched_data(dense_dir, tmp_path, capsys):
    code, _, err = run(capsys, "evaluate", dense_dir, "--data", "imagefolder:/nonexistent")
    assert code == 2 and "data.path: /nonexistent does not exist" in err


@pytest.mark.parametrize("criterion", ["snp", "hsic", "taylor"])
def test_policy_with_a_data_criterion_and_a_macs_budget(dense_dir, tmp_path, capsys, monkeypatch, criterion):
    from vitprune.spaces import Policy, macs

    monkeypatch.setenv("VITPRUNE_CACHE", str(tmp_path / "cache"))
    ratios = "--keep-heads 0.5 --keep-mlp 0.5 --keep-qk 0.5 --budget-macs 0.5 --calibration-batches 1".split()
    code, _, err = run(
        capsys,
        "policy",
        "--checkpoint",
        dense_dir,
        "--criterion",
        criterion,
        *ratios,
        "-o",
        tmp_path / "p.json",
    )
    assert code == 0, err
    policy = Policy.from_json((tmp_path / "p.json").read_text())
    dense = macs(Policy.keep_all(policy.base))
    assert 0.45 * dense <= macs(policy) <= 0.5 * dense
    assert "magnitude ranks those" in err  # none of these three scores every dimension
    assert any((tmp_path / "cache" / "scores").iterdir())  # scores are cached for the next run
