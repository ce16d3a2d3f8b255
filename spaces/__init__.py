"""Policies, search spaces and the cost model. Pure Python: nothing here imports torch."""

from vitprune.spaces.builder import (
    LayerRatios,
    aligned_width,
    build_policy,
    default_token_start,
    uniform_ratios,
)
from vitprune.spaces.cost import Cost, LayerCost, cost, macs, params
from vitprune.spaces.errors import InputError, PolicyError
from vitprune.spaces.policy import FORMAT, Architecture, LayerPolicy, Policy
from vitprune.spaces.scores import Scores

__all__ = [
    "FORMAT",
    "Architecture",
    "Cost",
    "InputError",
    "LayerCost",
    "LayerPolicy",
    "LayerRatios",
    "Policy",
    "PolicyError",
    "Scores",
    "aligned_width",
    "build_policy",
    "cost",
    "default_token_start",
    "macs",
    "params",
    "uniform_ratios",
]
