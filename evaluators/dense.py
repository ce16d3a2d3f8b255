"""The dense model a search starts from: a timm ViT by name, with weights from the hub
(``pretrained``), a local checkpoint, a vitprune model directory, or a fresh initialisation."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import timm
from torch import nn
from vitprune.evaluators.describe import create_dense, describe
from vitprune.evaluators.io import POLICY_FILE, load_pruned, read_state_dict
from vitprune.evaluators.surgery import dense_state_dict
from vitprune.spaces import Architecture, InputError

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
