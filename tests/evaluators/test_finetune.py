import math

import pytest
import torch
from helpers import tiny_model

from vitprune.evaluators.config import DataConfig, DistillationConfig, FinetuneConfig
from vitprune.evaluators.data import load_data
from vitprune.evaluators.finetune import TrainingDiverged, distillation_loss, finetune

STUDENT = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
TEACHER = torch.tensor([[1.0, 1.0, 0.0], [0.0, 3.0, -2.0]])
LABELS = torch.tensor([0, 2])


def _softmax(row, T=1.0):
    exps = [math.exp(v / T) for v in row]
    return [e / sum(exps) for e in exps]


def test_no_distillation_is_cross_entropy():
    expected = -(math.log(_softmax([2.0, 0.0, -1.0])[0]) + math.log(_softmax([0.5, 1.5, 0.0])[2])) / 2
    assert distillation_loss(STUDENT, TEACHER, LABELS, None).item() == pytest.approx(expected, rel=1e-6)


def test_soft_distillation_matches_hand_computation():
    T, alpha = 2.0, 0.3
    ce = -(math.log(_softmax([2.0, 0.0, -1.0])[0]) + math.log(_softmax([0.5, 1.5, 0.0])[2])) / 2
    kl = 0.0
    for s, t in zip(STUDENT.tolist(), TEACHER.tolist(), strict=True):
        p, q = _softmax(t, T), _softmax(s, T)
        kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    expected = (1 - alpha) * ce + alpha * T * T * kl / 2
    kd = DistillationConfig(kind="soft", temperature=T, alpha=alpha)
    assert distillation_loss(STUDENT, TEACHER, LABELS, kd).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.931269, abs=1e-6)  # the figure itself, so a wrong helper cannot agree


def test_hard_distillation_uses_the_teachers_argmax():
    ce_labels = -(math.log(_softmax([2.0, 0.0, -1.0])[0]) + math.log(_softmax([0.5, 1.5, 0.0])[2])) / 2
    ce_teacher = -(math.log(_softmax([2.0, 0.0, -1.0])[0]) + math.log(_softmax([0.5, 1.5, 0.0])[1])) / 2
    kd = DistillationConfig(kind="hard", alpha=0.5)
    assert distillation_loss(STUDENT, TEACHER, LABELS, kd).item() == pytest.approx(
        0.5 * ce_labels + 0.5 * ce_teacher, rel=1e-6
    )


@pytest.fixture(scope="module")
def small():
    model, base = tiny_model("deit")
    data = load_data(DataConfig(batch_size=32, max_train_samples=128), base)
    return model, data


def _copy(model):
    import copy

    return copy.deepcopy(model)


def test_finetune_is_deterministic_and_changes_the_weights(small):
    model, data = small
    config = FinetuneConfig(steps=3, kd=None, seed=5)
    a, b = _copy(model), _copy(model)
    finetune(a, data=data, config=config)
    finetune(b, data=data, config=config)
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    assert not torch.equal(a.head.weight, model.head.weight)


def test_epoch_callback_sees_metrics_and_can_stop(small):
    model, data = small
    seen = []
    result = finetune(
        _copy(model),
        data=data,
        config=FinetuneConfig(epochs=3, kd=None),
        on_epoch=lambda metrics: seen.append(metrics) or metrics.epoch == 2,
    )
    assert [m.epoch for m in seen] == [1, 2]
    assert result.stopped_early and result.epochs == 2 and result.steps == 2 * 4
    assert all(m.train_loss > 0 and m.lr > 0 for m in seen)


def test_distillation_needs_a_teacher(small):
    model, data = small
    with pytest.raises(ValueError, match="distillation needs a teacher"):
        finetune(_copy(model), data=data, config=FinetuneConfig(steps=1))


def test_nan_loss_raises_instead_of_reporting_garbage(small):
    model, data = small
    broken = _copy(model)
    with torch.no_grad():
        broken.head.weight[0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 1, step 1"):
        finetune(broken, data=data, config=FinetuneConfig(steps=2, kd=None))
