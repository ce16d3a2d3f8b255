"""Torch side of vitprune: importance criteria, surgery, data, fine-tuning and measurement."""

from vitprune.evaluators import models  # noqa: F401  (registers vitprune's timm models)
from vitprune.evaluators.describe import check_matches, create_dense, describe
from vitprune.evaluators.io import build_pruned, load_pruned, read_policy, read_state_dict, save_pruned
from vitprune.evaluators.surgery import apply_policy

__all__ = [
    "apply_policy",
    "build_pruned",
    "check_matches",
    "create_dense",
    "describe",
    "load_pruned",
    "read_policy",
    "read_state_dict",
    "save_pruned",
]
