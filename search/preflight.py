"""Everything a search can check before it does any work, and before it writes anything.

The spec itself is validated by pydantic when it is loaded (criterion names against the registry,
budget ranges, device against resources). What needs more than the spec is checked here, each as
one :class:`InputError` line naming the key:

- the dense architecture (a ``meta``-device model: no weights read, nothing trained), and a
  MACs or parameter budget against it: above the dense model, or below the cheapest policy the
  space can build whatever the criteria find (:func:`vitprune.spaces.space.cheapest`);
- the data: its paths, and for image folders every image header;
- the Ray cluster: a node that can hold one trial's CPUs and GPUs (else Ray waits for ever).

Latency budgets are checked once the latency model is fitted (it needs the trial device).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from vitprune.search.spec import SearchSpec
from vitprune.spaces import Architecture, InputError, Policy, macs, params
from vitprune.spaces.budget import Budget
from vitprune.spaces.space import check_budget

log = logging.getLogger("vitprune.search")


def check_spec(spec: SearchSpec) -> Architecture:
    """The checks that need the architecture and the data, not Ray; returns the architecture."""
    from vitprune.evaluators.data import check_images
    from vitprune.evaluators.dense import dense_architecture

    base = dense_architecture(spec.model, spec.data)
    if spec.budget.metric in ("macs", "params"):
        measure = {"macs": macs, "params": params}[spec.budget.metric]
        dense = measure(Policy.keep_all(base))
        limit = spec.budget.limit(dense)
        key = f"budget.{spec.budget.metric}"
        if limit > dense:
            raise InputError(
                f"{key}: {limit:.4g} is above the dense model's {dense:.4g}; nothing would be pruned"
            )
        space = spec.space.build(base.depth)
        check_budget(space=space, base=base, budget=Budget(spec.budget.metric, limit), measure=measure)
    if spec.data.source == "imagefolder" and spec.data.check_images:
        log.info("data: %d images readable", check_images(spec.data))
    return base


def check_cluster(spec: SearchSpec) -> None:
    """Raise unless some live node of the connected Ray cluster can run one trial."""
    import ray

    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    for key, resource, amount in (("cpu", "CPU", spec.resources.cpu), ("gpu", "GPU", spec.resources.gpu)):
        if amount <= 0:
            continue
        largest = max((node.get(resource, 0.0) for node in nodes), default=0.0)
        if largest + 1e-9 < amount:
            have = "no GPU" if resource == "GPU" and largest == 0 else f"at most {_count(largest)} {resource}"
            raise InputError(
                f"resources.{key}: each trial asks for {_count(amount)} {resource}, but the Ray cluster has "
                f"{have} per node ({len(nodes)} node{'s' if len(nodes) != 1 else ''}); lower resources.{key} "
                "or join a cluster that has them (--address)"
            )


def _count(value: float) -> Any:
    return int(value) if math.isclose(value, round(value)) else value
