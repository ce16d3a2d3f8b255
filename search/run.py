"""A whole search: prepare once, run the trials on Ray Tune, write the run directory.

Run directory::

    spec.json            the validated spec (a resume checks it is unchanged)
    dense/               the dense model (policy.json + model.safetensors): export's teacher
    scores.json          the criteria scores every trial ranks units by
    latency_model.json   for latency budgets: the model of the trial device, with its error
    experiment.json      Ax snapshot, rewritten atomically after every trial that ends
    ax.db                the same experiment in Ax's SQL storage (when storage.enabled)
    searcher.json        the searcher's state as of the last trial that ended (for --resume)
    trials/NNNN/         each trial's policy.json, model.safetensors and metrics.json
    trials.csv           one row per trial: parameters, structure, metrics, status, times
    best_policy.json     the best feasible policy by observed value (chosen by Ax), with provenance
    best_model/          its fine-tuned weights, loadable with vitprune.load_pruned
    search.log           the driver's log
    tune/                Ray Tune's experiment folder (what --resume restarts from)
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vitprune.evaluators.criteria import calibration_batches, scores_by_dimension
from vitprune.evaluators.io import save_pruned
from vitprune.evaluators.latency_model import fit_latency_model, measure_policies, sample_policies
from vitprune.evaluators.surgery import apply_policy
from vitprune.evaluators.trial import cached_context, resolve_device
from vitprune.search.config import SearchSpec
from vitprune.search.trial import REPORTED, Shared, run_trial
from vitprune.spaces import InputError, Policy, Scores, macs, params
from vitprune.spaces.files import write_text_atomic
from vitprune.spaces.space import Budget, check_budget, decode

log = logging.getLogger("vitprune.search")
Progress = Callable[[str], None]


def _quiet_third_party() -> None:
    """Ax logs every generated trial at INFO and BoTorch, pandas 3 and Ray emit deprecation warnings
    on every step; vitprune's own progress lines say what matters, and search.log keeps the rest."""
    from ax.utils.common.logger import set_stderr_log_level

    set_stderr_log_level(logging.ERROR)
    for module in ("ax", "botorch", "gpytorch", "linear_operator", "pandas", "ray", "torch.jit"):
        warnings.filterwarnings("ignore", module=module)
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.script.*")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter honours verbose=0
    logging.getLogger("ray.tune").setLevel(logging.WARNING)


def dense_value(spec: SearchSpec, dense_policy: Policy, latency: float | None) -> float:
    return {"macs": macs(dense_policy), "params": params(dense_policy), "latency_ms": latency}[
        spec.budget.metric
    ]


def prepare(spec: SearchSpec, run_dir: Path, *, progress: Progress) -> Shared:
    """Everything the trials share, computed once: dense model, scores, budget, latency model."""
    started = time.perf_counter()
    context = cached_context(spec.model, spec.data, spec.dense_training)
    base, dense = context.base, context.dense
    dense_policy = Policy.keep_all(base)
    progress(f"dense {base.model}: test accuracy {context.dense_test_accuracy:.4f}")
    save_pruned(apply_policy(dense, dense_policy), dense_policy, run_dir / "dense")

    space = spec.space.build(base.depth)
    criteria = spec.criteria.by_dimension(sorted(space.dimensions))
    batches = calibration_batches(
        context.data.calibration_loader(seed=spec.seed), spec.criteria.calibration_batches
    )
    scores = scores_by_dimension(criteria, dense, base=base, data=batches, cache_dir=run_dir / "scores")
    write_text_atomic(run_dir / "scores.json", scores.to_json())
    progress(f"criteria: {scores.criterion}")

    latency_model, dense_latency = None, None
    if spec.budget.metric == "latency_ms":
        latency_model, dense_latency = _latency_model(spec, base, scores, space, progress=progress)
        write_text_atomic(run_dir / "latency_model.json", latency_model.to_json())
    limit = spec.budget.limit(dense_value(spec, dense_policy, dense_latency))
    budget = Budget(spec.budget.metric, limit)
    measure = latency_model if latency_model is not None else {"macs": macs, "params": params}[budget.metric]
    cheapest = check_budget(space=space, base=base, scores=scores, budget=budget, measure=measure)
    share = limit / dense_value(spec, dense_policy, dense_latency)
    progress(
        f"budget: {budget.metric} <= {limit:.4g} ({share:.1%} of dense; the cheapest policy of the space "
        f"costs {cheapest:.4g}); prepared in "
        f"{time.perf_counter() - started:.0f} s"
    )
    return Shared(
        run_dir=str(run_dir),
        spec_json=spec.model_dump_json(),
        dense_policy_json=dense_policy.to_json(),
        dense_state={k: v.detach().cpu() for k, v in dense.state_dict().items()},
        dense_test_accuracy=context.dense_test_accuracy,
        scores_json=scores.to_json(),
        budget_metric=budget.metric,
        budget_limit=limit,
        latency_model_json=None if latency_model is None else latency_model.to_json(),
        parameters=space.parameters(),
    )


def _latency_model(
    spec: SearchSpec, base: Any, scores: Scores, space: Any, *, progress: Progress
) -> tuple[Any, float]:
    """Fit the latency model on the trial device: a Ray task with the trials' own resources
    (a GPU worker on a cluster whose head has none), so the model describes where trials run."""
    import ray

    from vitprune.evaluators.latency_model import LatencyModel

    task = ray.remote(num_cpus=spec.resources.cpu, num_gpus=spec.resources.gpu)(_fit_latency_model)
    model_json, dense_ms, device = ray.get(
        task.remote(spec.model_dump_json(), Policy.keep_all(base).to_json(), scores.to_json())
    )
    model = LatencyModel.from_json(model_json)
    progress(
        f"latency model on {device}: held-out error {model.holdout_error:.1%} on 8 policies; "
        f"dense model {dense_ms:.2f} ms at batch {spec.budget.batch_size}"
    )
    return model, dense_ms


def _fit_latency_model(spec_json: str, dense_policy_json: str, scores_json: str) -> tuple[str, float, str]:
    """Runs in the Ray task: fit, check on held-out policies, and measure the dense model."""
    from vitprune.evaluators.measure import device_name

    spec = SearchSpec.model_validate_json(spec_json)
    dense_policy = Policy.from_json(dense_policy_json)
    base, scores = dense_policy.base, Scores.from_json(scores_json)
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
    )
    (dense_ms,) = measure_policies(
        [dense_policy], batch_size=spec.budget.batch_size, device=device, dtype=dtype
    )
    return model.to_json(), dense_ms, device_name(device)


@dataclass(frozen=True)
class Outcome:
    """What a search leaves: its run directory, the best feasible trial (or ``None``), timings."""

    run_dir: Path
    best: dict[str, Any] | None
    wall_s: float
    suggest_s: float
    trials: int


def objective(spec: SearchSpec, limit: float) -> tuple[str, list[str], list[str]]:
    """Ax objective, outcome constraints and tracked metrics: a latency budget constrains the
    *measured* latency (the decoder only used the model), the other costs are tracked."""
    objective = "accuracy, -latency_ms" if spec.pareto else "accuracy"
    constraints = [f"latency_ms <= {limit:.6g}"] if spec.budget.metric == "latency_ms" else []
    used = {"accuracy"} | ({"latency_ms"} if spec.pareto or constraints else set())
    return objective, constraints, [name for name in REPORTED if name not in used]


def storage_url(spec: SearchSpec, run_dir: Path) -> str | None:
    """The Ax SQL storage URL of the run: ``storage.sql_url``, or a sqlite file in the run directory."""
    if not spec.storage.enabled:
        return None
    return spec.storage.sql_url or f"sqlite:///{run_dir / 'ax.db'}"


def check_new_run_dir(run_dir: Path) -> None:
    if (run_dir / "experiment.json").exists() or (run_dir / "tune").exists():
        raise InputError(
            f"run_dir: {run_dir} already holds a search; resume it with --resume or choose another --run-dir"
        )


def save_shared(shared: Shared, run_dir: Path) -> None:
    """What a resume needs besides the dense weights (which are in ``dense/``)."""
    meta = {
        k: getattr(shared, k) for k in ("spec_json", "dense_test_accuracy", "budget_metric", "budget_limit")
    }
    meta["parameters"] = list(shared.parameters)
    write_text_atomic(run_dir / "shared.json", json.dumps(meta, indent=2))


def load_shared(run_dir: Path, spec: SearchSpec) -> Shared:
    """The shared artefacts of an existing run directory (for ``--resume``)."""
    from vitprune.evaluators.io import load_pruned

    try:
        meta = json.loads((run_dir / "shared.json").read_text())
    except FileNotFoundError:
        raise InputError(f"--resume: {run_dir} holds no prepared search (no shared.json)") from None
    if SearchSpec.model_validate_json(meta["spec_json"]) != spec:
        raise InputError(f"--resume: the config differs from the one {run_dir} was started with (spec.json)")
    dense, policy = load_pruned(run_dir / "dense")
    from vitprune.evaluators.surgery import dense_state_dict

    latency = run_dir / "latency_model.json"
    return Shared(
        run_dir=str(run_dir),
        spec_json=meta["spec_json"],
        dense_policy_json=policy.to_json(),
        dense_state=dense_state_dict(dense.state_dict()),
        dense_test_accuracy=meta["dense_test_accuracy"],
        scores_json=(run_dir / "scores.json").read_text(),
        budget_metric=meta["budget_metric"],
        budget_limit=meta["budget_limit"],
        latency_model_json=latency.read_text() if latency.exists() else None,
        parameters=tuple(meta["parameters"]),
    )


def _provenance(spec: SearchSpec, shared: Shared) -> dict[str, Any]:
    import ax
    import ray
    import timm

    import vitprune

    device = resolve_device(spec.budget.device)
    return {
        "vitprune": vitprune.__version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "ax": ax.__version__,
        "ray": ray.__version__,
        "python": platform.python_version(),
        "seed": spec.seed,
        "config_hash": spec.digest(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "budget": {"metric": shared.budget_metric, "limit": shared.budget_limit},
    }


def finalize(run_dir: Path, optimizer: Any, spec: SearchSpec, shared: Shared) -> dict[str, Any] | None:
    """Write trials.csv, best_policy.json and best_model/ from Ax's view of the experiment."""
    from vitprune.search.records import NoFeasibleTrialError
    from vitprune.search.tables import write_trials_csv

    dense = Policy.from_json(shared.dense_policy_json)
    write_trials_csv(run_dir, optimizer.trials(), dense=dense)
    try:
        best = optimizer.best()
    except NoFeasibleTrialError:
        return None
    source = run_dir / "trials" / f"{best.index:04d}"
    policy = Policy.from_json((source / "policy.json").read_text())
    trial_metrics = json.loads((source / "metrics.json").read_text())
    document = {
        "format": "vitprune.best/1",
        "trial": best.index,
        "metrics": trial_metrics,
        "ratios": {"macs": macs(policy) / macs(dense), "params": params(policy) / params(dense)},
        "provenance": _provenance(spec, shared),
        "policy": policy.to_dict(),
    }
    write_text_atomic(run_dir / "best_policy.json", json.dumps(document, indent=2))
    staging = run_dir / ".best_model.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    shutil.rmtree(run_dir / "best_model", ignore_errors=True)
    staging.rename(run_dir / "best_model")
    return document


def search(
    spec: SearchSpec,
    *,
    run_dir: Path,
    resume: bool = False,
    address: str | None = None,
    progress: Progress = log.info,
    trainable: Callable[[dict[str, Any], Shared], None] = run_trial,
) -> Outcome:
    """Run (or resume) the search described by ``spec`` in ``run_dir``.

    Args:
        spec: the validated search spec.
        run_dir: where the run's files go (see the module docstring).
        resume: finish the interrupted search in ``run_dir`` (same spec), none lost, none twice.
        address: a Ray cluster to join (``"auto"`` or ``HOST:PORT``); default: start a local one.
        progress: where progress lines go.
        trainable: the trial function (tests wrap :func:`run_trial` to inject failures).
    """
    import ray
    from ray import tune

    from vitprune.search import AxSearcher, GenerationConfig, Optimizer, resume_search, run_search
    from vitprune.search.progress import ProgressCallback

    _quiet_third_party()
    if not ray.is_initialized():  # before prepare: the latency model is fitted in a Ray task
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        shared = load_shared(run_dir, spec)
    else:
        check_new_run_dir(run_dir)
        write_text_atomic(run_dir / "spec.json", spec.model_dump_json(indent=2))
        shared = prepare(spec, run_dir, progress=progress)
        save_shared(shared, run_dir)

    trainable_with_shared = tune.with_parameters(trainable, shared=shared)
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    if resume:
        run = resume_search(
            run_dir / "tune" / "search", trainable_with_shared, resources=resources
        )  # Tune restores callbacks
    else:
        objective_, constraints, tracked = objective(spec, shared.budget_limit)
        optimizer = Optimizer(storage_url=storage_url(spec, run_dir))
        optimizer.configure(
            list(shared.parameters),
            objective=objective_,
            outcome_constraints=constraints,
            tracked_metrics=tracked,
            generation=GenerationConfig(
                method=spec.generation.method,
                initial_trials=spec.trials.initial,
                seed=spec.seed,
                num_restarts=spec.generation.num_restarts,
                raw_samples=spec.generation.raw_samples,
                maxiter=spec.generation.maxiter,
            ),
            name=spec.name,
        )
        searcher = AxSearcher(
            optimizer, max_trials=spec.trials.total, snapshot_path=run_dir / "experiment.json"
        )
        callback = ProgressCallback(
            total=spec.trials.total,
            concurrent=spec.trials.concurrent,
            feasible_latency_ms=shared.budget_limit if shared.budget_metric == "latency_ms" else None,
        )
        run = run_search(
            trainable_with_shared,
            searcher,
            storage_path=run_dir / "tune",
            name="search",
            max_concurrent_trials=spec.trials.concurrent,
            resources=resources,
            max_failures=spec.trials.max_failures,
            scheduler=_scheduler(spec),
            callbacks=[callback],
            reuse_actors=True,
            verbose=0,
        )
    best = finalize(run_dir, run.optimizer, spec, shared)
    return Outcome(
        run_dir=run_dir,
        best=best,
        wall_s=run.wall_s,
        suggest_s=run.suggest_s,
        trials=run.optimizer.num_trials,
    )


def _scheduler(spec: SearchSpec) -> Any:
    if not spec.early_stopping.enabled:
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        metric="search_val_accuracy",
        mode="max",
        time_attr="epoch",
        max_t=max(spec.finetune.epochs, 1),
        grace_period=spec.early_stopping.grace_epochs,
        reduction_factor=spec.early_stopping.reduction_factor,
    )
