"""vitprune: search for the best way to prune a Vision Transformer under a compute budget.

The public API::

    from vitprune import Policy, apply_policy, save_pruned, load_pruned, macs, params

``Policy`` and the cost model are pure Python; the torch-based functions are imported on first
use so that ``import vitprune.spaces`` stays free of torch.
"""

from typing import Any

from vitprune.spaces import Architecture, InputError, LayerPolicy, Policy, PolicyError, cost, macs, params

__version__ = "0.1.0"

_LAZY = {
    "apply_policy": "vitprune.evaluators.surgery",
    "describe": "vitprune.evaluators.describe",
    "save_pruned": "vitprune.evaluators.io",
    "load_pruned": "vitprune.evaluators.io",
}

__all__ = [
    "Architecture",
    "InputError",
    "LayerPolicy",
    "Policy",
    "PolicyError",
    "apply_policy",
    "cost",
    "describe",
    "load_pruned",
    "macs",
    "params",
    "save_pruned",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vitprune' has no attribute {name!r}")
