"""The dense model a search starts from: a timm ViT by name, with weights from the hub
(``pretrained``), a local checkpoint, a vitprune model directory, or a fresh initialisation."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from vitprune.evaluators.config import DataConfig, DenseTrainingConfig, FinetuneConfig, ModelConfig
from vitprune.evaluators.data import DataSplits, load_data, num_classes
from vitprune.evaluators.describe import create_dense, describe
from vitprune.evaluators.finetune import EpochMetrics, finetune
from vitprune.evaluators.io import POLICY_FILE, load_pruned, read_policy, read_state_dict, save_pruned
from vitprune.evaluators.measure import accuracy
from vitprune.evaluators.surgery import apply_policy, dense_state_dict
from vitprune.spaces import Architecture, InputError, Policy
from vitprune.spaces.files import write_text_atomic

log = logging.getLogger(__name__)


def _create(name: str, *, pretrained: bool, model_args: dict[str, Any]) -> nn.Module:
    if not timm.is_model(name):
        raise InputError(f"model {name!r}: not a timm model name (see timm.list_models('*vit*'))")
    try:
        return timm.create_model(name, pretrained=pretrained, **model_args)
    except TypeError as error:
        raise InputError(f"model {name}: bad model argument ({error})") from None
    except (OSError, RuntimeError) as error:
        if pretrained:
            raise InputError(
                f"model {name}: pretrained weights unavailable ({type(error).__name__}); "
                "without network access pass --checkpoint PATH"
            ) from None
        raise


def _load_dense_directory(directory: Path, *, name: str | None) -> tuple[nn.Module, Architecture]:
    """The timm dense model saved as a vitprune model directory with a keep-all policy."""
    pruned, policy = load_pruned(directory)
    if not policy.is_keep_all():
        raise InputError(f"{directory}: holds a pruned model; the dense model is needed here")
    if name is not None and name != policy.base.model:
        raise InputError(f"{directory}: holds {policy.base.model}, not {name}")
    model = create_dense(policy.base, device="meta")
    model.load_state_dict(dense_state_dict(pruned.state_dict()), strict=True, assign=True)
    return model.eval(), policy.base


def load_dense(
    name: str | None,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    pretrained: bool = False,
    model_args: dict[str, Any] | None = None,
) -> tuple[nn.Module, Architecture]:
    """Create the dense model and describe it.

    Args:
        name: timm model name; may be ``None`` when ``checkpoint`` is a vitprune model directory.
        checkpoint: a state dict file (safetensors or ``torch.save``) or a vitprune model directory
            holding a keep-all policy (as ``vitprune train-dense`` writes).
        pretrained: download timm's weights (needs network access).
        model_args: ``timm.create_model`` overrides; ``num_classes`` is taken from the checkpoint
            when not given.

    Returns:
        ``(model, base)``, the model in eval mode on the CPU.
    """
    if checkpoint is not None and pretrained:
        raise InputError("give either --checkpoint or --pretrained, not both")
    args = dict(model_args or {})
    if checkpoint is not None and (Path(checkpoint) / POLICY_FILE).exists():
        return _load_dense_directory(Path(checkpoint), name=name)
    if name is None:
        raise InputError(
            "MODEL: a timm model name is needed unless --checkpoint is a vitprune model directory"
        )
    if checkpoint is None:
        model = _create(name, pretrained=pretrained, model_args=args)
        return model.eval(), describe(model, name=name, model_args=args)

    state = read_state_dict(checkpoint)
    head = state.get("head.weight")
    if "num_classes" not in args and head is not None:
        args["num_classes"] = head.shape[0]
    model = _create(name, pretrained=False, model_args=args)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches; torch's message spans many lines
        detail = next(
            (line.strip() for line in str(error).splitlines() if "size mismatch" in line), str(error)
        )
        raise InputError(f"{checkpoint}: does not fit {name} ({detail})") from None
    if result.missing_keys or result.unexpected_keys:
        raise InputError(
            f"{checkpoint}: does not fit {name} "
            f"(missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})"
        )
    log.info("loaded %s weights from %s", name, checkpoint)
    return model.eval(), describe(model, name=name, model_args=args)


def dense_architecture(model_config: ModelConfig, data_config: DataConfig) -> Architecture:
    """The architecture a search will prune, from the configuration alone: a ``meta``-device model
    (no weights read, nothing trained) with the classifier sized for the data, as
    :func:`prepare_dense` will size it. For the checks that must come before any work."""
    classes = num_classes(data_config)
    checkpoint = model_config.checkpoint
    if checkpoint is not None and not Path(checkpoint).exists():
        raise InputError(f"model.checkpoint: {checkpoint}: no such file or directory")
    if checkpoint is not None and (Path(checkpoint) / POLICY_FILE).exists():
        base = read_policy(checkpoint).base
        name, args = base.model, base.model_args
    else:
        name, args = model_config.name, dict(model_config.args)
    args = {**args, "num_classes": classes}
    with torch.device("meta"):
        model = _create(name, pretrained=False, model_args=args)
    return describe(model, name=name, model_args=args)


# -- the dense model a search starts from ---------------------------------------------------------


@dataclass(frozen=True)
class DenseModel:
    """The trained dense model, its description, and how it was obtained."""

    model: nn.Module
    base: Architecture
    test_accuracy: float
    trained_seconds: float
    directory: Path


def cache_root() -> Path:
    """Where trained dense models are cached: ``$VITPRUNE_CACHE`` or ``~/.cache/vitprune``."""
    return Path(os.environ.get("VITPRUNE_CACHE", Path.home() / ".cache" / "vitprune"))


def _fit_classes(model: nn.Module, base: Architecture, num_classes: int) -> tuple[Architecture, bool]:
    """Resize the classifier to ``num_classes`` if needed; returns the new base and whether it changed."""
    if base.num_classes == num_classes:
        return base, False
    log.warning(
        "%s: classifier resized from %d to %d classes (the new head is random and is trained)",
        base.model,
        base.num_classes,
        num_classes,
    )
    model.reset_classifier(num_classes)
    args = {**base.model_args, "num_classes": num_classes}
    return describe(model, name=base.model, model_args=args), True


def prepare_dense(
    model_config: ModelConfig,
    data_config: DataConfig,
    training: DenseTrainingConfig,
    *,
    cache_dir: Path | None = None,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
) -> tuple[DenseModel, DataSplits]:
    """Load, or train once and cache, the dense model for ``data_config``; returns it with the data.

    Weights come from ``model_config`` (checkpoint, vitprune directory, hub); the classifier is
    resized when the data has another class count. A model without fitting trained weights (the
    embedded default, or a resized classifier) is trained with ``training`` and cached under a
    hash of the three configurations, so it is trained once.

    The random initial weights (and a resized classifier) are drawn from ``training.seed``, so the
    configuration decides the dense model; the caller's random stream is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(training.seed)
        return _prepare_dense(model_config, data_config, training, cache_dir=cache_dir, on_epoch=on_epoch)


def _prepare_dense(
    model_config: ModelConfig,
    data_config: DataConfig,
    training: DenseTrainingConfig,
    *,
    cache_dir: Path | None,
    on_epoch: Callable[[EpochMetrics], None] | None,
) -> tuple[DenseModel, DataSplits]:
    from vitprune import __version__

    model, base = load_dense(
        model_config.name,
        checkpoint=model_config.checkpoint,
        pretrained=model_config.pretrained,
        model_args=model_config.args,
    )
    data = load_data(data_config, base)
    model, base = model.train(), base
    base, resized = _fit_classes(model, base, data.num_classes)
    has_weights = model_config.checkpoint is not None or model_config.pretrained
    if has_weights and not resized:
        test = accuracy(model, data.eval_loader("test")).top1
        directory = Path(model_config.checkpoint) if model_config.checkpoint else Path()
        return DenseModel(model.eval(), base, test, 0.0, directory), data

    key = hashlib.sha256(
        "|".join([__version__, model_config.digest(), data_config.digest(), training.digest()]).encode()
    ).hexdigest()[:16]
    directory = (cache_dir or cache_root()) / "dense" / f"{base.model}-{key}"
    metrics_file = directory / "metrics.json"
    if metrics_file.exists():
        try:
            cached, cached_base = load_dense(None, checkpoint=directory)
            metrics = json.loads(metrics_file.read_text())
            log.info("dense model from cache %s (test accuracy %.4f)", directory, metrics["test_accuracy"])
            return DenseModel(
                cached, cached_base, metrics["test_accuracy"], metrics["seconds"], directory
            ), data
        except (InputError, KeyError, ValueError) as error:
            log.warning("ignoring unusable cached dense model %s (%s)", directory, error)

    log.info("training the dense %s on %s (%d epochs)", base.model, data_config.source, training.epochs)
    result = finetune(
        model,
        data=data,
        config=FinetuneConfig(
            epochs=training.epochs,
            lr=training.lr,
            weight_decay=training.weight_decay,
            warmup_fraction=training.warmup_fraction,
            label_smoothing=training.label_smoothing,
            kd=None,
            seed=training.seed,
        ),
        on_epoch=on_epoch,
    )
    test = accuracy(model, data.eval_loader("test")).top1
    keep_all = Policy.keep_all(base)
    save_pruned(apply_policy(model, keep_all), keep_all, directory)
    write_text_atomic(
        metrics_file, json.dumps({"test_accuracy": test, "seconds": result.seconds, "epochs": result.epochs})
    )
    log.info("dense %s: test accuracy %.4f after %.0fs", base.model, test, result.seconds)
    return DenseModel(model.eval(), base, test, result.seconds, directory), data
