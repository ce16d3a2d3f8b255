"""One fine-tune recipe and one set of measurements for every contender of the race
(``benchmarks/peers.py``) and every policy of the objective study (``benchmarks/objective_noise.py``).

Every pruned model, whatever pruned it (vitprune's surgery or Torch-Pruning), starts from the
dense weights and goes through :func:`finetune_and_measure`: vitprune's :func:`finetune` (AdamW,
cosine, soft distillation from the dense model) on a copy, then :func:`split_metrics` on each
split. Nothing here knows which tool pruned the model.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitprune.evaluators.config import FinetuneConfig
from vitprune.evaluators.finetune import finetune
from vitprune.evaluators.trial import TrialContext

SPLITS = ("search-val", "test")


def split_metrics(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], *, teacher: nn.Module) -> dict:
    """Accuracy, cross-entropy, and agreement with the dense ``teacher`` over ``batches``.

    Returns:
        ``accuracy`` (top-1), ``cross_entropy`` (mean, nats), ``kl_to_dense`` (mean
        ``KL(p_dense ‖ p_model)`` at temperature 1, nats), ``agreement`` (share of images where
        the top-1 class is the dense model's), ``images``, and ``correct``: one character per image
        in the split's fixed order, ``"1"`` where the top-1 class is right (what paired
        comparisons between models resample: ``benchmarks/race_paired.py``).
    """
    was_training = model.training
    model.eval()
    agree = images = 0
    right: list[str] = []
    cross_entropy = kl = 0.0
    with torch.inference_mode():
        for inputs, labels in batches:
            logits, dense = model(inputs), teacher(inputs)
            log_p = F.log_softmax(logits, dim=-1)
            log_q = F.log_softmax(dense, dim=-1)
            right.extend("1" if hit else "0" for hit in (logits.argmax(-1) == labels).tolist())
            agree += int((logits.argmax(-1) == dense.argmax(-1)).sum())
            cross_entropy += float(F.nll_loss(log_p, labels, reduction="sum"))
            kl += float(F.kl_div(log_p, log_q, reduction="sum", log_target=True))
            images += labels.numel()
    model.train(was_training)
    return {
        "accuracy": right.count("1") / images,
        "cross_entropy": cross_entropy / images,
        "kl_to_dense": kl / images,
        "agreement": agree / images,
        "images": images,
        "correct": "".join(right),
    }


def finetune_and_measure(
    model: nn.Module,
    context: TrialContext,
    config: FinetuneConfig,
    *,
    splits: Sequence[str] = SPLITS,
) -> dict[str, Any]:
    """Fine-tune a copy of ``model`` (``model`` is unchanged) with the dense model as teacher,
    then measure it on ``splits`` (``"train"`` measures the un-augmented training images).

    Returns:
        ``seed``, ``finetune_s``, ``zero_shot`` (the split metrics of ``splits[0]`` before
        fine-tuning) and, per split, its :func:`split_metrics` under the split's name.
    """
    student = copy.deepcopy(model).cpu()
    teacher = context.dense
    report: dict[str, Any] = {"seed": config.seed}
    report["zero_shot"] = split_metrics(student, _loader(context, splits[0]), teacher=teacher)
    started = time.perf_counter()
    finetune(student, data=context.data, config=config, teacher=teacher, device="cpu")
    report["finetune_s"] = time.perf_counter() - started
    for split in splits:
        report[split] = split_metrics(student, _loader(context, split), teacher=teacher)
    return report


def _loader(context: TrialContext, split: str) -> Iterable[tuple[Tensor, Tensor]]:
    if split == "train":  # the training images without augmentation, in a fixed order
        return torch.utils.data.DataLoader(
            context.data.train_clean, batch_size=context.data.config.eval_batch_size
        )
    return context.data.eval_loader(split)


def mean_sd(values: Sequence[float]) -> dict[str, float]:
    """``{"mean", "sd", "n"}`` (sample standard deviation; 0 for one value)."""
    values = [float(v) for v in values]
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "sd": spread, "n": len(values)}


def summarise(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean ± sd over seeds of search-val and test accuracy (what the race's tables show)."""
    return {split: mean_sd([run[split]["accuracy"] for run in runs]) for split in SPLITS if split in runs[0]}
