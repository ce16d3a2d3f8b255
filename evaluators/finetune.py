"""Brief fine-tuning of a pruned model, with knowledge distillation from the dense teacher.

AdamW (timm's parameter groups: no weight decay on norms, biases and tokens), cosine schedule
with linear warm-up stepped per optimizer update (timm's ``CosineLRScheduler``), bf16 autocast on
CUDA, deterministic under a seed on CPU. A non-finite loss stops the run with
:class:`TrainingDiverged` instead of reporting garbage.

>>> result = finetune(pruned, teacher=dense, data=splits, config=FinetuneConfig(epochs=3))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from timm.optim import param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from torch import Tensor, nn

from vitprune.evaluators.config import DistillationConfig, FinetuneConfig
from vitprune.evaluators.data import DataSplits

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class EpochMetrics:
    """What the per-epoch callback receives."""

    epoch: int
    steps: int
    train_loss: float
    lr: float
    seconds: float


@dataclass
class FinetuneResult:
    epochs: int
    steps: int
    seconds: float
    stopped_early: bool
    history: list[EpochMetrics] = field(default_factory=list)


def distillation_loss(
    student: Tensor,
    teacher: Tensor,
    labels: Tensor,
    kd: DistillationConfig | None,
    *,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Cross-entropy to the labels blended with distillation from the teacher's logits.

    - ``kd is None``: ``CE(s, y)``.
    - ``soft``: ``(1−α)·CE(s, y) + α·T²·KL(softmax(t/T) ‖ softmax(s/T))`` (Hinton et al.; the
      ``T²`` keeps the gradient scale independent of ``T``).
    - ``hard`` (DeiT): ``(1−α)·CE(s, y) + α·CE(s, argmax t)``.

    Shapes: ``student`` and ``teacher`` are ``(B, C)`` logits, ``labels`` ``(B,)``.
    """
    ce = F.cross_entropy(student, labels, label_smoothing=label_smoothing)
    if kd is None:
        return ce
    if kd.kind == "hard":
        distill = F.cross_entropy(student, teacher.argmax(dim=-1))
    else:
        T = kd.temperature
        distill = F.kl_div(
            F.log_softmax(student / T, dim=-1),
            F.log_softmax(teacher / T, dim=-1),
            reduction="batchmean",
            log_target=True,
        ) * (T * T)
    return (1 - kd.alpha) * ce + kd.alpha * distill


def _total_steps(config: FinetuneConfig, steps_per_epoch: int) -> tuple[int, int]:
    if config.steps is not None:
        return config.steps, math.ceil(config.steps / steps_per_epoch)
    return config.epochs * steps_per_epoch, config.epochs


def finetune(
    model: nn.Module,
    *,
    data: DataSplits,
    config: FinetuneConfig,
    teacher: nn.Module | None = None,
    device: str | torch.device = "cpu",
    on_epoch: Callable[[EpochMetrics], bool | None] | None = None,
) -> FinetuneResult:
    """Fine-tune ``model`` in place on ``data.train``.

    Args:
        model: the (pruned) model; trained in place and left in eval mode.
        data: the splits; only ``train`` is used.
        config: epochs or steps, learning rate, weight decay, warm-up, distillation.
        teacher: the dense model whose logits are distilled (required unless ``config.kd`` is None).
        device: where to train; bf16 autocast is used on CUDA.
        on_epoch: called after every epoch with its metrics; returning ``True`` stops training.

    Raises:
        TrainingDiverged: the loss became NaN or infinite.
    """
    device = torch.device(device)
    if config.kd is not None and teacher is None:
        raise ValueError("finetune: distillation needs a teacher (or set kd: null)")
    torch.manual_seed(config.seed)
    loader = data.train_loader(seed=config.seed)
    total_steps, epochs = _total_steps(config, len(loader))
    result = FinetuneResult(epochs=0, steps=0, seconds=0.0, stopped_early=False)
    if total_steps == 0:
        return result

    model.to(device).train()
    if teacher is not None:
        teacher.to(device).eval()
    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, config.weight_decay), lr=config.lr)
    warmup = int(config.warmup_fraction * total_steps)
    scheduler = CosineLRScheduler(
        optimizer, t_initial=total_steps - warmup, warmup_t=warmup, warmup_prefix=True, t_in_epochs=False
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    start = time.perf_counter()
    for epoch in range(epochs):
        epoch_start, losses = time.perf_counter(), []
        for images, labels in loader:
            if result.steps >= total_steps:
                break
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with autocast:
                logits = model(images)
                teacher_logits = None
                if config.kd is not None:
                    with torch.no_grad():
                        teacher_logits = teacher(images)
                loss = distillation_loss(
                    logits.float(),
                    None if teacher_logits is None else teacher_logits.float(),
                    labels,
                    config.kd,
                    label_smoothing=config.label_smoothing,
                )
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"loss became {loss.item()} at epoch {epoch + 1}, step {result.steps + 1} "
                    f"(lr {optimizer.param_groups[0]['lr']:.3g})"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            result.steps += 1
            scheduler.step_update(result.steps)
            losses.append(loss.item())
        metrics = EpochMetrics(
            epoch=epoch + 1,
            steps=result.steps,
            train_loss=sum(losses) / max(1, len(losses)),
            lr=optimizer.param_groups[0]["lr"],
            seconds=time.perf_counter() - epoch_start,
        )
        result.history.append(metrics)
        result.epochs = epoch + 1
        log.info(
            "epoch %d: loss %.4f, lr %.3g, %.1fs",
            metrics.epoch,
            metrics.train_loss,
            metrics.lr,
            metrics.seconds,
        )
        if on_epoch is not None and on_epoch(metrics):
            result.stopped_early = result.epochs < epochs
            break
    result.seconds = time.perf_counter() - start
    model.eval()
    return result
