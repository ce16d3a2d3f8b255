"""The latency half of the race (``benchmarks/peers.py``): DeiT-S with random weights, vitprune's
policies and Torch-Pruning's at the same MACs budgets, timed side by side on the CPU.

Every model of one batch size, dense included and both budgets together, runs once per round in
:func:`vitprune.evaluators.measure.latency_side_by_side` (copies, warm-up, median of the timed
rounds), so the machine's load changes hit them alike. Each pruned model is reported with its
latency ratio and MACs ratio to dense, and their quotient, the issue's efficiency measure
(``latency ratio ÷ MACs ratio``: 1.0 when latency falls exactly as fast as MACs, lower is
better). MACs of every model are counted the same way (:func:`gpu_torch_pruning.count_macs`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gpu_torch_pruning as recipe
import peers_torch_pruning as tp
import timm
import torch
from peers_vitprune import UNIFORM, policy_record, search_point_policy, uniform_policy
from speedup import families
from torch import nn

from vitprune.evaluators import apply_policy, describe
from vitprune.evaluators.criteria import get_criterion
from vitprune.evaluators.describe import create_dense
from vitprune.evaluators.measure import latency_side_by_side
from vitprune.search.spec import SpaceSpec
from vitprune.spaces import InputError, Policy, macs
from vitprune.spaces.budget import fit_to_budget

JOINT = "joint (all six)"  # benchmarks/speedup.py's joint family
Log = Callable[[str], None]


def random_dense(name: str, args: Mapping[str, Any], *, seed: int = 0) -> tuple[nn.Module, Any]:
    """A timm ViT built on the meta device, then materialised on the CPU with N(0, 0.02) weights
    (drawn, not left uninitialised: garbage memory can hold denormals that slow CPUs)."""
    with torch.device("meta"):
        meta = timm.create_model(name, pretrained=False, **args)
    base = describe(meta, name=name, model_args=dict(args))
    model = create_dense(base, device="meta").to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    return model.eval(), base


def race_latency(
    *,
    model_name: str,
    model_args: Mapping[str, Any],
    budgets: Sequence[float],
    batch_sizes: Sequence[int],
    dimensions: Sequence[str],
    structures: Sequence[str],
    search_points: Mapping[float, tuple[SpaceSpec, dict[str, float]]],
    warmup: int,
    repeats: int,
    tp_max_evaluations: int,
    log: Log,
) -> dict[str, Any]:
    """Build every contender at every budget, then time them all, one batch size at a time.

    Args:
        search_points: budget → (the search's space, its best point) of the digits search at that
            budget; the point is decoded onto this model too (the *kind* of policy it chose).
        structures: Torch-Pruning structures to time (L1 importance: only structure matters here).

    Returns:
        ``models`` (how each contender was built: MACs, structure, how it landed) and ``rows``
        (one per contender, budget and batch size).
    """
    dense, base = random_dense(model_name, model_args)
    scores = get_criterion("magnitude")(dense, base=base)
    dense_macs = recipe.count_macs(dense)
    if dense_macs != macs(Policy.keep_all(base)):
        raise AssertionError(
            f"MAC counter {dense_macs} differs from the analytic {macs(Policy.keep_all(base))}"
        )
    built: dict[str, nn.Module] = {}
    models: dict[str, dict[str, Any]] = {}
    for budget in budgets:
        limit = budget * dense_macs
        policies: dict[str, tuple[Policy, dict[str, Any]]] = {}
        for name, narrowed in UNIFORM.items():
            fit = uniform_policy(base, scores, budget_macs=limit, dimensions=narrowed or dimensions)
            policies[f"vitprune {name}"] = fit.policy, policy_record(fit.policy, fit)
        try:
            joint = fit_to_budget(families(base, scores)[JOINT], macs, limit)
            policies[f"vitprune {JOINT}"] = joint.policy, policy_record(joint.policy, joint)
        except InputError as error:
            models[f"vitprune {JOINT} @ {budget:g}"] = {"budget": budget, "error": str(error)}
        if budget in search_points:
            fit = search_point_policy(search_points[budget], base, scores, budget_macs=limit)
            policies["vitprune search (its point)"] = fit.policy, policy_record(fit.policy, fit)
        for name, (policy, record) in policies.items():
            model = apply_policy(dense, policy)
            counted = recipe.count_macs(model)
            if counted != macs(policy):
                raise AssertionError(
                    f"{name}: counted MACs {counted} differ from the analytic {macs(policy)}"
                )
            key = f"{name} @ {budget:g}"
            built[key] = model
            models[key] = {"contender": name, "budget": budget, "macs_ratio": counted / dense_macs} | record
            log(f"latency: {key}: MACs ratio {counted / dense_macs:.3f}")
        for structure in structures:
            variant = tp.Variant("l1", structure)
            pruned = tp.prune_to_macs(
                functools.partial(tp.prune, dense, variant=variant),
                limit,
                dense_macs=dense_macs,
                max_evaluations=tp_max_evaluations,
            )
            key = f"torch-pruning {variant.structure} @ {budget:g}"
            models[key] = {
                "contender": f"torch-pruning {variant.structure}",
                "budget": budget,
                "macs_ratio": pruned.macs / dense_macs,
                "reached": pruned.reached,
                "ratio": pruned.ratio,
                "evaluations": pruned.evaluations,
                "prune_s": pruned.seconds,
                "structure": tp.structure(pruned.model),
            }
            log(f"latency: {key}: ratio {pruned.ratio:.3f}, MACs ratio {pruned.macs / dense_macs:.3f}")
            if pruned.reached:
                built[key] = pruned.model
    rows = []
    for batch in batch_sizes:
        log(f"latency: timing {len(built) + 1} models at batch {batch}")
        timed = latency_side_by_side(
            {"dense": dense, **built}, batch_size=batch, device="cpu", warmup=warmup, repeats=repeats
        )
        dense_ms = timed["dense"].median_ms
        for key in built:
            latency_ratio = timed[key].median_ms / dense_ms
            macs_ratio = models[key]["macs_ratio"]
            rows.append(
                {
                    "contender": models[key]["contender"],
                    "budget": models[key]["budget"],
                    "batch": batch,
                    "macs_ratio": macs_ratio,
                    "dense_ms": dense_ms,
                    "pruned_ms": timed[key].median_ms,
                    "pruned_min_ms": timed[key].min_ms,
                    "pruned_max_ms": timed[key].max_ms,
                    "latency_ratio": latency_ratio,
                    "latency_per_macs": latency_ratio / macs_ratio,
                }
            )
    return {
        "model": model_name,
        "model_args": dict(model_args),
        "dense_macs": dense_macs,
        "threads": torch.get_num_threads(),
        "models": models,
        "rows": rows,
    }
