"""The plan of a search: what every trial shares, built once by the driver and handed to the
workers as one typed object (through Ray's object store), saved in the run directory for
``--resume``, ``status`` and ``export``.

>>> plan = prepare(spec, RunDir("runs/x"), base=check_spec(spec), progress=print)   # doctest: +SKIP
>>> plan.measure(policy) <= plan.budget.limit                                        # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from vitprune.evaluators.latency_model import LatencyModel
from vitprune.search.monitor import Monitor
from vitprune.search.rundir import RunDir
from vitprune.search.spec import SearchSpec
from vitprune.spaces import Architecture, InputError, Policy, Scores, macs, params
from vitprune.spaces.budget import Budget, Measure
from vitprune.spaces.files import write_text_atomic
from vitprune.spaces.space import SearchSpace, check_budget, decode

log = logging.getLogger("vitprune.search")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    """What the driver prepares once and every trial reads.

    Attributes:
        spec: the validated search spec.
        run: the run directory.
        base: the dense architecture.
        dense_state: the dense weights (the teacher), CPU tensors.
        dense_test_accuracy: the dense model's test accuracy.
        scores: the criteria scores that rank units.
        budget: the cost limit, absolute.
        dense_cost: the dense model's cost in the budget's metric.
        latency_model: the model of the trial device, for latency budgets.
    """

    spec: SearchSpec
    run: RunDir
    base: Architecture
    dense_state: dict[str, torch.Tensor] = field(repr=False)
    dense_test_accuracy: float
    scores: Scores = field(repr=False)
    budget: Budget
    dense_cost: float
    latency_model: LatencyModel | None = field(default=None, repr=False)

    @property
    def space(self) -> SearchSpace:
        return self.spec.space.build(self.base.depth)

    @property
    def parameters(self) -> tuple[str, ...]:
        return self.space.parameters()

    @property
    def dense_policy(self) -> Policy:
        return Policy.keep_all(self.base)

    def measure(self) -> Measure:
        """The cost function of the budget's metric: the one place that decides it."""
        return cost_function(self.budget.metric, self.latency_model)

    def save(self) -> None:
        """``plan.json``, ``scores.json`` and ``latency_model.json`` (the dense weights are in ``dense/``)."""
        if self.latency_model is not None:
            write_text_atomic(self.run.latency_model, self.latency_model.to_json())
        write_text_atomic(self.run.scores, self.scores.to_json())
        document = {
            "format": "vitprune.plan/1",
            "spec": self.spec.model_dump(mode="json"),
            "dense_test_accuracy": self.dense_test_accuracy,
            "budget": {"metric": self.budget.metric, "limit": self.budget.limit},
            "dense_cost": self.dense_cost,
        }
        write_text_atomic(self.run.plan, json.dumps(document, indent=2))

    @classmethod
    def load(cls, run: RunDir, *, spec: SearchSpec | None = None) -> Plan:
        """The plan saved in ``run``; with ``spec``, raise unless it is the spec the run started with."""
        from vitprune.evaluators.io import load_pruned
        from vitprune.evaluators.surgery import dense_state_dict

        try:
            document = json.loads(run.plan.read_text())
        except FileNotFoundError:
            raise InputError(f"{run.root}: holds no prepared search (no plan.json)") from None
        saved = SearchSpec.model_validate(document["spec"])
        if spec is not None and saved != spec:
            raise InputError(
                f"--resume: the config differs from the one {run.root} was started with (spec.json)"
            )
        dense, policy = load_pruned(run.dense)
        latency = run.latency_model.read_text() if run.latency_model.exists() else None
        return cls(
            spec=saved,
            run=run,
            base=policy.base,
            dense_state=dense_state_dict(dense.state_dict()),
            dense_test_accuracy=document["dense_test_accuracy"],
            scores=Scores.from_json(run.scores.read_text()),
            budget=Budget(document["budget"]["metric"], document["budget"]["limit"]),
            dense_cost=document["dense_cost"],
            latency_model=None if latency is None else LatencyModel.from_json(latency),
        )


def cost_function(metric: str, latency_model: LatencyModel | None = None) -> Measure:
    if metric == "latency_ms":
        if latency_model is None:
            raise ValueError("a latency budget needs the latency model")
        return latency_model
    return {"macs": macs, "params": params}[metric]


def prepare(spec: SearchSpec, run: RunDir, *, progress: Progress, monitor: Monitor | None = None) -> Plan:
    """Train or load the dense model, score the criteria, fit the latency model (latency budgets),
    and check the budget against the cheapest policy the scores allow. ``monitor`` follows each
    phase step by step (epochs, criteria, latency measurements)."""
    monitor = monitor or Monitor()
    from vitprune.evaluators.criteria import calibration_batches, scores_by_dimension
    from vitprune.evaluators.io import save_pruned
    from vitprune.evaluators.surgery import apply_policy
    from vitprune.evaluators.trial import cached_context

    started = time.perf_counter()
    monitor.phase("dense training", total=spec.dense_training.epochs, unit="epochs")
    context = cached_context(
        spec.model, spec.data, spec.dense_training, on_epoch=lambda epoch: monitor.advance(epoch.epoch)
    )
    base, dense = context.base, context.dense
    dense_policy = Policy.keep_all(base)
    progress(f"dense {base.model}: test accuracy {context.dense_test_accuracy:.4f}")
    save_pruned(apply_policy(dense, dense_policy), dense_policy, run.dense)

    space = spec.space.build(base.depth)
    batches = calibration_batches(
        context.data.calibration_loader(seed=spec.seed), spec.criteria.calibration_batches
    )
    criteria = spec.criteria.by_dimension(sorted(space.dimensions))
    monitor.phase("criteria", total=len(set(criteria.values())), unit="criteria")
    scores = scores_by_dimension(
        criteria, dense, base=base, data=batches, cache_dir=run.scores_cache, progress=monitor.advance
    )
    progress(f"criteria: {scores.criterion}")

    latency_model = None
    if spec.budget.metric == "latency_ms":
        monitor.phase("latency model", unit="measurements")
        latency_model = _latency_model(spec, base, scores, progress=progress, monitor=monitor)
        dense_cost = latency_model.dense_ms  # measured with the calibration policies
    else:
        dense_cost = cost_function(spec.budget.metric)(dense_policy)
    budget = Budget(spec.budget.metric, spec.budget.limit(dense_cost))
    measure = cost_function(budget.metric, latency_model)
    if latency_model is not None:
        check_latency_budget(budget, latency_model, dense_policy)
    cheapest = check_budget(space=space, base=base, scores=scores, budget=budget, measure=measure)
    seconds = time.perf_counter() - started
    progress(
        f"budget: {budget.metric} <= {budget.limit:.4g} ({budget.limit / dense_cost:.1%} of dense; the "
        f"cheapest policy of the space costs {cheapest:.4g}); prepared in {seconds:.0f} s"
    )
    return Plan(
        spec=spec,
        run=run,
        base=base,
        dense_state={k: v.detach().cpu() for k, v in dense.state_dict().items()},
        dense_test_accuracy=context.dense_test_accuracy,
        scores=scores,
        budget=budget,
        dense_cost=dense_cost,
        latency_model=latency_model,
    )


def check_latency_budget(budget: Budget, model: LatencyModel, dense: Policy) -> None:
    """Raise :class:`InputError` when ``budget`` prunes nothing: it is above the dense model's
    latency as measured (with the calibration policies) or as the latency model predicts it. The
    projection sees only the prediction; under a budget above it, every trial would keep the dense
    model however the measurement disagreed."""
    measured, modelled = model.dense_ms, model(dense)
    if measured is not None and budget.limit > measured:
        raise InputError(
            f"budget.latency_ms: {budget.limit:.4g} ms is above the dense model's {measured:.4g} ms "
            "on the trial device; nothing would be pruned"
        )
    if budget.limit > modelled:
        known = [f"measured {measured:.4g} ms"] if measured is not None else []
        if model.holdout_error is not None:
            known.append(f"held-out error {model.holdout_error:.0%}")
        aside = f" ({'; '.join(known)})" if known else ""
        raise InputError(
            f"budget.latency_ms: {budget.limit:.4g} ms is above the dense model's {modelled:.4g} ms as "
            f"the latency model predicts it{aside}; nothing would be pruned: lower the budget, or fit "
            "the model on a quieter device"
        )


def _latency_model(
    spec: SearchSpec, base: Architecture, scores: Scores, *, progress: Progress, monitor: Monitor
) -> LatencyModel:
    """Fit the latency model on the trial device: a Ray task with the trials' own resources (a GPU
    worker on a cluster whose head has none), so the model describes where trials run. The task
    streams its progress back through a Ray queue."""
    import ray
    from ray.util.queue import Empty, Queue

    steps = Queue(actor_options={"num_cpus": 0})
    task = ray.remote(num_cpus=spec.resources.cpu, num_gpus=spec.resources.gpu)(_fit_latency_model)
    pending = task.remote(spec, base, scores, steps)

    def drain() -> None:
        with contextlib.suppress(Empty):
            while True:
                monitor.advance(*steps.get_nowait())

    while not ray.wait([pending], timeout=0.5)[0]:
        drain()
    drain()  # the steps sent after the last wait
    model = ray.get(pending)
    steps.shutdown()
    progress(
        f"latency model on {model.device}: held-out error {model.holdout_error:.1%} on 8 policies; "
        f"dense model {model.dense_ms:.2f} ms at batch {spec.budget.batch_size}"
    )
    return model


def _fit_latency_model(spec: SearchSpec, base: Architecture, scores: Scores, steps: Any) -> LatencyModel:
    """Runs in the Ray task: fit (the dense model measured with the calibration policies) and
    check on held-out policies."""
    from vitprune.evaluators.latency_model import fit_latency_model, sample_policies
    from vitprune.evaluators.trial import resolve_device

    dense_policy = Policy.keep_all(base)
    space = spec.space.build(base.depth)
    torch.set_num_threads(max(1, int(spec.resources.cpu)))
    device = resolve_device(spec.budget.device)
    dtype = getattr(torch, spec.budget.dtype)

    def build(point: dict[str, float], fraction: float) -> Policy:
        budget = Budget("macs", fraction * macs(dense_policy))
        return decode(point, space=space, base=base, scores=scores, budget=budget, measure=macs).policy

    model = fit_latency_model(
        base,
        batch_size=spec.budget.batch_size,
        device=device,
        dtype=dtype,
        align=spec.space.align,
        calibration=sample_policies(build, space.parameters(), 6, spec.seed + 1),
        holdout=sample_policies(build, space.parameters(), 8, spec.seed + 2),
        on_step=lambda done, total: steps.put_nowait((done, total)),
        embed="embed" in space.dimensions,
    )
    return model


def provenance(plan: Plan) -> dict[str, Any]:
    """Versions, seed, config hash, device and budget: what a result needs to be reproduced."""
    import platform

    import ax
    import ray
    import timm

    import vitprune

    device = plan.latency_model.device if plan.latency_model is not None else None
    return {
        "vitprune": vitprune.__version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "ax": ax.__version__,
        "ray": ray.__version__,
        "python": platform.python_version(),
        "seed": plan.spec.seed,
        "config_hash": plan.spec.digest(),
        "device": device or _trial_device(plan.spec),
        "budget": {"metric": plan.budget.metric, "limit": plan.budget.limit},
    }


def _trial_device(spec: SearchSpec) -> str:
    if spec.budget.device == "cuda" or (spec.budget.device == "auto" and spec.resources.gpu > 0):
        return "cuda"
    return "cpu"
