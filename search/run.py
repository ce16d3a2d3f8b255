"""A whole search: check everything, prepare once, run the trials on Ray Tune, write the results.

The lifecycle, in order; each step writes nothing until the ones before it passed:

1. check: the spec against the architecture and the data (:mod:`vitprune.search.preflight`),
   Ray joined (or a private one started) and its nodes checked against the trial resources;
2. prepare: the dense model, the criteria scores, the latency model (:mod:`vitprune.search.plan`);
3. run: Ax proposes, Ray Tune runs the trials (:mod:`vitprune.search.runner`);
4. finish: ``trials.csv``, and the best feasible trial (one objective) or the feasible Pareto front
   (``accuracy, -latency_ms``) with their models.

The run directory's layout is :class:`~vitprune.search.rundir.RunDir`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitprune.search.config import SearchSpec
from vitprune.search.plan import Plan, prepare, provenance
from vitprune.search.preflight import check_cluster, check_spec
from vitprune.search.rundir import RunDir
from vitprune.search.trial import REPORTED, run_trial
from vitprune.spaces import InputError, Policy, macs, params
from vitprune.spaces.files import write_text_atomic

log = logging.getLogger("vitprune.search")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Outcome:
    """What a search leaves: its run directory, the best feasible trial (one objective) or the
    feasible Pareto front (several), timings."""

    run_dir: Path
    best: dict[str, Any] | None
    front: list[dict[str, Any]] | None
    wall_s: float
    suggest_s: float
    trials: int


def search(
    spec: SearchSpec,
    *,
    run_dir: Path,
    resume: bool = False,
    address: str | None = None,
    progress: Progress = log.info,
    trainable: Callable[[dict[str, Any], Plan], None] = run_trial,
) -> Outcome:
    """Run (or resume) the search described by ``spec`` in ``run_dir``.

    Args:
        spec: the validated search spec.
        run_dir: where the run's files go (see :class:`RunDir`).
        resume: finish the interrupted search in ``run_dir`` (same spec), none lost, none twice.
        address: a Ray cluster to join (``"auto"`` or ``HOST:PORT``); default: start a private one.
        progress: where progress lines go.
        trainable: the trial function (tests wrap :func:`run_trial` to inject failures).

    Raises:
        InputError: a check failed; nothing was written (a new search creates no run directory).
    """
    from ray import tune

    from vitprune.search import AxSearcher, resume_search, run_search
    from vitprune.search.progress import ProgressCallback

    _quiet_third_party()
    run = RunDir(run_dir)
    if resume:
        plan = Plan.load(run, spec=spec)
    else:
        run.check_new()
        check_spec(spec)
    connect(address)
    check_cluster(spec)
    run.root.mkdir(parents=True, exist_ok=True)
    with _log_file(run):
        if not resume:
            write_text_atomic(run.spec, spec.model_dump_json(indent=2))
            plan = prepare(spec, run, progress=progress)
            plan.save()
        trainable_with_plan = tune.with_parameters(trainable, plan=plan)
        resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
        if resume:
            result = resume_search(run.tune_experiment, trainable_with_plan, resources=resources)
        else:
            searcher = AxSearcher(
                _optimizer(plan), max_trials=spec.trials.total, snapshot_path=run.experiment
            )
            callback = ProgressCallback(
                total=spec.trials.total,
                concurrent=spec.trials.concurrent,
                feasible_latency_ms=plan.budget.limit if plan.budget.metric == "latency_ms" else None,
            )
            result = run_search(
                trainable_with_plan,
                searcher,
                storage_path=run.tune,
                name=run.tune_experiment.name,
                max_concurrent_trials=spec.trials.concurrent,
                resources=resources,
                max_failures=spec.trials.max_failures,
                scheduler=_scheduler(spec),
                callbacks=[callback],
                reuse_actors=True,
                verbose=0,
            )
        best, front = finalize(run, result.optimizer, plan)
    return Outcome(
        run_dir=run.root,
        best=best,
        front=front,
        wall_s=result.wall_s,
        suggest_s=result.suggest_s,
        trials=result.optimizer.num_trials,
    )


def connect(address: str | None) -> None:
    """Join the Ray cluster at ``address``, or start a private local one (never an unrelated Ray
    that happens to run on this machine). Failures are one line."""
    import ray

    if ray.is_initialized():
        return
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = f"--address {address}" if address else "Ray"
        raise InputError(f"{where}: cannot connect ({str(error).strip().splitlines()[0]})") from None


def _optimizer(plan: Plan) -> Any:
    from vitprune.search import GenerationConfig, Optimizer

    spec = plan.spec
    objective_, constraints, tracked = objective(spec, plan.budget.limit)
    optimizer = Optimizer(storage_url=storage_url(spec, plan.run))
    optimizer.configure(
        list(plan.parameters),
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
    return optimizer


def objective(spec: SearchSpec, limit: float) -> tuple[str, list[str], list[str]]:
    """Ax objective, outcome constraints and tracked metrics: a latency budget constrains the
    *measured* latency (the decoder only used the model), the other costs are tracked."""
    objective = "accuracy, -latency_ms" if spec.pareto else "accuracy"
    constraints = [f"latency_ms <= {limit:.6g}"] if spec.budget.metric == "latency_ms" else []
    used = {"accuracy"} | ({"latency_ms"} if spec.pareto or constraints else set())
    return objective, constraints, [name for name in REPORTED if name not in used]


def storage_url(spec: SearchSpec, run: RunDir) -> str | None:
    """The Ax SQL storage URL of the run: ``storage.sql_url``, or a sqlite file in the run directory."""
    if not spec.storage.enabled:
        return None
    return spec.storage.sql_url or f"sqlite:///{run.ax_db}"


def finalize(
    run: RunDir, optimizer: Any, plan: Plan
) -> tuple[dict[str, Any] | None, list[dict[str, Any]] | None]:
    """Write ``trials.csv``, then the best feasible trial (``best_policy.json``, ``best_model/``) or,
    for a Pareto objective, the feasible front (``pareto_front.json``, ``pareto_front/NNNN/``)."""
    from vitprune.search.records import NoFeasibleTrialError
    from vitprune.search.tables import write_trials_csv

    rows = write_trials_csv(run, optimizer.trials(), dense=plan.dense_policy)
    _log_landing(rows)
    try:
        chosen = optimizer.pareto_frontier() if optimizer.multi_objective else [optimizer.best()]
    except NoFeasibleTrialError:
        return None, [] if optimizer.multi_objective else None
    documents = [trial_document(run, point.index, plan) for point in chosen]
    if optimizer.multi_objective:
        front = {
            "format": "vitprune.pareto/1",
            "objectives": ["accuracy", "-latency_ms"],
            "trials": documents,
            "provenance": provenance(plan),
        }
        write_text_atomic(run.pareto_front, json.dumps(front, indent=2))
        _replace_tree(run.pareto_models, {f"{d['trial']:04d}": run.trial(d["trial"]) for d in documents})
        return None, documents
    (best,) = documents
    write_text_atomic(
        run.best_policy,
        json.dumps({"format": "vitprune.best/1", **best, "provenance": provenance(plan)}, indent=2),
    )
    _replace_tree(run.best_model, run.trial(best["trial"]))
    return best, None


def trial_document(run: RunDir, index: int, plan: Plan) -> dict[str, Any]:
    """A finished trial as results report it: metrics, ratios to dense, structure, policy."""
    source = run.trial(index)
    policy = Policy.from_json((source / "policy.json").read_text())
    metrics = json.loads((source / "metrics.json").read_text())
    dense = plan.dense_policy
    ratios = {"macs": macs(policy) / macs(dense), "params": params(policy) / params(dense)}
    if plan.budget.metric == "latency_ms":
        ratios["latency_ms"] = metrics["latency_ms"] / plan.dense_cost
    return {
        "trial": index,
        "metrics": metrics,
        "ratios": ratios,
        "structure": policy.summary(),
        "policy": policy.to_dict(),
    }


def _replace_tree(target: Path, sources: Path | dict[str, Path]) -> None:
    """Copy ``sources`` (one folder, or name → folder) to ``target``, replacing it atomically."""
    staging = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    if isinstance(sources, Path):
        shutil.copytree(sources, staging)
    else:
        staging.mkdir()
        for name, source in sources.items():
            shutil.copytree(source, staging / name)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def _log_landing(rows: list[dict[str, Any]]) -> None:
    ratios = sorted(row["budget_ratio"] for row in rows if row.get("budget_ratio") is not None)
    if not ratios:
        return
    short = [row for row in rows if row.get("budget_shortfall")]
    log.info(
        "budget landing over %d trials: cost/budget min %.3f, median %.3f, max %.3f; %d below 99 %%%s",
        len(ratios),
        ratios[0],
        ratios[len(ratios) // 2],
        ratios[-1],
        len(short),
        f" (trials {', '.join(str(row['trial']) for row in short)}: see budget_shortfall in trials.csv)"
        if short
        else "",
    )


@contextlib.contextmanager
def _log_file(run: RunDir) -> Iterator[None]:
    """The search logger also writes ``search.log`` while the search runs."""
    handler = logging.FileHandler(run.search_log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()


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
