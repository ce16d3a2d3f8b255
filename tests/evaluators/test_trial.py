import logging

import pytest
import timm
import torch

from vitprune.evaluators.config import (
    DataConfig,
    DenseTrainingConfig,
    FinetuneConfig,
    LatencyConfig,
    ModelConfig,
)
from vitprune.evaluators.criteria import get_criterion
from vitprune.evaluators.dense import prepare_dense
from vitprune.evaluators.trial import cached_context, evaluate_policy
from vitprune.spaces import Policy, build_policy, macs, uniform_ratios
from vitprune.spaces.budget import fit_to_budget

# A smaller digits ViT (depth 3, dim 48) that trains in seconds: enough to show learning.
SMALL = ModelConfig(name="vitprune_digits_vit", args={"depth": 3, "embed_dim": 48, "num_heads": 3})
QUICK = DenseTrainingConfig(epochs=12, lr=3e-3)


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    return cached_context(SMALL, DataConfig(), QUICK, tmp_path_factory.mktemp("cache"))


def test_a_briefly_trained_small_model_beats_chance_clearly(context):
    assert context.dense_test_accuracy > 0.6  # chance is 0.1


def test_the_context_is_built_once_per_process(context, tmp_path_factory):
    assert cached_context(SMALL, DataConfig(), QUICK, context_cache_dir(context)) is context


def context_cache_dir(context):
    from vitprune.evaluators.trial import _CONTEXTS

    key = next(key for key, value in _CONTEXTS.items() if value is context)
    from pathlib import Path

    return Path(key[-1])


def test_the_trained_model_is_cached_on_disk(context, tmp_path_factory):
    cache_dir = context_cache_dir(context)
    dense, _ = prepare_dense(SMALL, DataConfig(), QUICK, cache_dir=cache_dir)
    assert dense.test_accuracy == context.dense_test_accuracy
    assert (dense.directory / "model.safetensors").exists() and (dense.directory / "metrics.json").exists()
    reloaded = dense.model.state_dict()
    assert all(torch.equal(reloaded[k], v) for k, v in context.dense.state_dict().items())


def test_finetuning_a_half_macs_model_beats_its_zero_shot_accuracy(context):
    scores = get_criterion("magnitude")(context.dense, base=context.base)
    budget = 0.5 * macs(Policy.keep_all(context.base))
    fit = fit_to_budget(
        lambda s: build_policy(context.base, scores, uniform_ratios(3, heads=s, mlp=s, v=s), align=8),
        macs,
        budget,
    )
    result = evaluate_policy(
        fit.policy,
        context,
        finetune_config=FinetuneConfig(epochs=3, lr=2e-3),
        latency_config=LatencyConfig(batch_size=8, repeats=2, warmup=1),
        device="cpu",
        test=True,
    )
    m = result.metrics
    assert m["macs"] <= budget
    assert m["accuracy"] > m["zero_shot_accuracy"] + 0.05
    assert m["latency_ms"] > 0 and m["latency_min_ms"] <= m["latency_ms"] <= m["latency_max_ms"]
    assert 0 <= m["test_accuracy"] <= 1 and m["finetune_epochs"] == 3
    # Search-val accuracy comes with its binomial standard error, which the search hands to Ax.
    images = len(context.data.eval_loader("search-val").dataset)
    p = (m["accuracy"] * images + 1) / (images + 2)
    assert m["accuracy_sem"] == pytest.approx((p * (1 - p) / images) ** 0.5)
    assert sum(p.numel() for p in result.model.parameters()) == m["params"]


def test_the_standard_error_of_an_accuracy_is_binomial_and_never_zero():
    from vitprune.evaluators.measure import Accuracy

    assert Accuracy(top1=0.8, top5=None, samples=3000).top1_sem == pytest.approx(0.00730, abs=1e-5)
    perfect = Accuracy(top1=1.0, top5=None, samples=400).top1_sem
    assert 0.002 < perfect < 0.003  # 400 of 400 right is not certainty


def test_a_checkpoint_with_another_class_count_gets_a_resized_head(tmp_path, caplog):
    source = timm.create_model("vitprune_digits_vit", depth=1, embed_dim=32, num_heads=2, num_classes=5)
    torch.save({"model": source.state_dict()}, tmp_path / "five.pth")
    config = ModelConfig(
        name="vitprune_digits_vit",
        checkpoint=tmp_path / "five.pth",
        args={"depth": 1, "embed_dim": 32, "num_heads": 2},
    )
    with caplog.at_level(logging.WARNING):
        dense, _ = prepare_dense(config, DataConfig(), DenseTrainingConfig(epochs=1), cache_dir=tmp_path)
    assert "classifier resized from 5 to 10 classes" in caplog.text
    assert dense.base.num_classes == 10 and dense.model.head.out_features == 10
    assert not torch.equal(dense.model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)  # trained


def test_dense_training_seed_decides_the_dense_model(tmp_path):
    """Two fresh caches, one configuration: the same weights bit for bit, whatever the global RNG
    held before (the initial weights, and a resized classifier, come from ``dense_training.seed``)."""
    model = ModelConfig(name="vitprune_digits_vit", args={"depth": 1, "embed_dim": 32, "num_heads": 2})
    data = DataConfig(max_train_samples=64)
    trained = []
    for draw, seed in enumerate((0, 0, 1)):
        torch.manual_seed(1000 + draw)  # whatever ran before in this process
        dense, _ = prepare_dense(
            model, data, DenseTrainingConfig(epochs=1, seed=seed), cache_dir=tmp_path / str(draw)
        )
        trained.append(dense.model.state_dict())
    first, again, other = trained
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["pos_embed"], other["pos_embed"])
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    prepare_dense(model, data, DenseTrainingConfig(epochs=1), cache_dir=tmp_path / "4")
    assert torch.equal(torch.rand(3), expected)  # the caller's random stream is left where it was


@pytest.mark.slow
def test_the_embedded_digits_model_reaches_its_accuracy_target(tmp_path):
    dense, _ = prepare_dense(ModelConfig(), DataConfig(), DenseTrainingConfig(), cache_dir=tmp_path)
    assert dense.test_accuracy >= 0.97


def test_measuring_latency_in_bf16_leaves_the_finetuned_fp32_weights_as_they_were(context, tmp_path):
    """The weights a trial saves are the weights whose accuracy it measured, bit for bit."""
    from vitprune.evaluators.io import load_pruned, save_pruned

    policy = build_policy(
        context.base, get_criterion("magnitude")(context.dense, base=context.base), uniform_ratios(3, mlp=0.5)
    )
    finetuned = {}

    def capture(metrics, model):
        finetuned.update({name: value.detach().clone() for name, value in model.state_dict().items()})

    result = evaluate_policy(
        policy,
        context,
        finetune_config=FinetuneConfig(epochs=1, steps=3),
        latency_config=LatencyConfig(batch_size=4, repeats=1, warmup=0, dtype="bfloat16"),
        device="cpu",
        on_epoch=capture,
    )
    state = result.model.state_dict()
    assert all(value.dtype == torch.float32 and value.device.type == "cpu" for value in state.values())
    assert all(torch.equal(state[name], finetuned[name]) for name in finetuned)
    save_pruned(result.model, policy, tmp_path / "trial")
    saved, _ = load_pruned(tmp_path / "trial")
    assert all(torch.equal(value, finetuned[name]) for name, value in saved.state_dict().items())


def test_latency_measurement_never_moves_casts_or_switches_the_model():
    from vitprune.evaluators.measure import latency_side_by_side

    model = timm.create_model("vitprune_digits_vit", depth=1, embed_dim=32, num_heads=2).train()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    latency_side_by_side({"m": model}, batch_size=2, dtype=torch.bfloat16, warmup=0, repeats=1)
    assert model.training
    assert all(
        torch.equal(value, before[name]) and value.dtype == torch.float32
        for name, value in model.state_dict().items()
    )


def test_a_latency_budget_trial_is_timed_beside_the_dense_model_and_scaled_to_the_reference(
    context, monkeypatch
):
    """Concurrent trials slow each other's timing (6 % on average, up to a third in a 16-trial
    search): timed beside the dense model, the ratio cancels it, and the reference the budget was
    set from turns the ratio back into milliseconds."""
    from vitprune.evaluators import trial
    from vitprune.evaluators.measure import Latency

    timed = {}

    def side_by_side(models, **settings):
        timed.update(models)
        medians = {"pruned": 6.0, "dense": 12.0}
        return {name: Latency(medians[name], 5.0, 13.0, 1, 4, "cpu", "float32", "", "") for name in models}

    monkeypatch.setattr(trial, "latency_side_by_side", side_by_side)
    policy = build_policy(
        context.base, get_criterion("magnitude")(context.dense, base=context.base), uniform_ratios(3, mlp=0.5)
    )
    config = {"finetune_config": FinetuneConfig(epochs=1, steps=1), "device": "cpu"}
    latency = LatencyConfig(batch_size=4, repeats=1, warmup=0)
    result = evaluate_policy(policy, context, latency_config=latency, latency_reference_ms=7.0, **config)
    assert set(timed) == {"pruned", "dense"} and timed["dense"] is context.dense
    metrics = result.metrics
    assert metrics["latency_ms"] == 0.5 * 7.0 and metrics["latency_measured_ms"] == 6.0
    assert metrics["latency_ratio"] == 0.5 and metrics["dense_latency_ms"] == 12.0
    timed.clear()
    plain = evaluate_policy(policy, context, latency_config=latency, **config).metrics  # not a latency budget
    assert set(timed) == {"pruned"} and plain["latency_ms"] == 6.0 and "latency_measured_ms" not in plain
