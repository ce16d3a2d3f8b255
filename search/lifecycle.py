"""One search, as one object whose methods follow its lifecycle (as Ax's ``Client`` does):

    >>> search = Search(spec, run_dir="runs/x")         # doctest: +SKIP
    >>> search.check()       # the spec against the architecture, data and Ray cluster; writes nothing
    >>> search.prepare()     # dense model, criteria scores, latency model: the Plan
    >>> search.run_trials()  # Ax proposes, Ray Tune runs every planned trial
    >>> search.finish()      # trials.csv, the best trial (or the Pareto front) and its model
    >>> Search.resume("runs/x", spec=spec).run()       # after Ctrl-C or a killed driver

``run()`` is all four in order. A step called too early raises :class:`SearchStateError` naming
the step to call first. Each step writes nothing until the ones before it passed: a new search
creates its run directory only once :meth:`Search.check` has passed. The run directory's layout
is :class:`~vitprune.search.rundir.RunDir`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitprune.search.monitor import Monitor
from vitprune.search.noise import quiet_third_party
from vitprune.search.plan import Plan, prepare
from vitprune.search.preflight import check_cluster, check_spec
from vitprune.search.results import finalize
from vitprune.search.rundir import RunDir
from vitprune.search.spec import SearchSpec
from vitprune.search.starts import start_points
from vitprune.search.trainable import REPORTED, run_trial
from vitprune.spaces import InputError
from vitprune.spaces.errors import one_line
from vitprune.spaces.files import write_text_atomic

log = logging.getLogger("vitprune.search")
Progress = Callable[[str], None]
Trainable = Callable[[dict[str, Any], Plan], None]


class SearchStateError(RuntimeError):
    """A lifecycle step was called before the step it depends on."""


@dataclass(frozen=True)
class Outcome:
    """What a search leaves: its run directory, the best feasible trial (one objective) or the
    feasible Pareto front (several), how many trials completed, timings."""

    run_dir: Path
    best: dict[str, Any] | None
    front: list[dict[str, Any]] | None
    completed: int
    trials: int
    wall_s: float
    suggest_s: float


class Search:
    """A search over pruning policies, in lifecycle order: check → prepare → run_trials → finish.

    Args:
        spec: the validated search spec.
        run_dir: where the run's files go (see :class:`RunDir`).
        address: a Ray cluster to join (``"auto"`` or ``HOST:PORT``); default: a private local Ray.
        progress: where progress lines go.
        bars: show progress bars for the dense training, the criteria and the latency fit (a
            terminal); the phase is written to ``phase.json`` either way.
    """

    def __init__(
        self,
        spec: SearchSpec,
        *,
        run_dir: str | os.PathLike[str],
        address: str | None = None,
        progress: Progress = log.info,
        bars: bool = False,
    ) -> None:
        self.spec = spec
        self.run_dir = RunDir(Path(run_dir))
        self.address = address
        self.progress = progress
        self.monitor = Monitor(self.run_dir, bars=bars)
        self.plan: Plan | None = None
        self._resuming = False
        self._checked = False
        self._result: Any = None

    @classmethod
    def resume(
        cls,
        run_dir: str | os.PathLike[str],
        *,
        spec: SearchSpec | None = None,
        address: str | None = None,
        progress: Progress = log.info,
        bars: bool = False,
    ) -> Search:
        """The interrupted search in ``run_dir``, prepared as it was; with ``spec``, raise unless
        it is the spec the search started with. :meth:`run` finishes its planned trials."""
        run = RunDir(Path(run_dir))
        plan = Plan.load(run, spec=spec)
        search = cls(plan.spec, run_dir=run.root, address=address, progress=progress, bars=bars)
        search.plan, search._resuming = plan, True
        return search

    # -------------------------------------------------------------------- lifecycle
    def check(self) -> None:
        """Everything that can be checked before any work; writes nothing (see ``preflight``)."""
        quiet_third_party()
        if not self._resuming:
            self.run_dir.check_new()
            check_spec(self.spec)
        connect(self.address)
        check_cluster(self.spec)
        self._checked = True

    def prepare(self) -> Plan:
        """Create the run directory; train or load the dense model, score the criteria, fit the
        latency model (latency budgets): the :class:`Plan` every trial shares."""
        if not self._checked:
            raise SearchStateError("prepare: the search is not checked yet; call check() first")
        if self.plan is None:
            run = self.run_dir
            run.root.mkdir(parents=True, exist_ok=True)
            with _log_file(run):
                write_text_atomic(run.spec, self.spec.model_dump_json(indent=2))
                self.plan = prepare(self.spec, run, progress=self.progress, monitor=self.monitor)
                self.plan.save()
        return self.plan

    def run_trials(self, trainable: Trainable = run_trial) -> None:
        """Run every planned trial on Ray Tune (or, resumed, the ones not yet run).

        Args:
            trainable: the trial function (tests wrap :func:`run_trial` to inject failures).
        """
        from ray import tune

        from vitprune.search.events import TrialEvents
        from vitprune.search.runner import resume_tune, run_tune
        from vitprune.search.searcher import AxSearcher

        if self.plan is None or not self._checked:
            raise SearchStateError("run_trials: the search is not prepared; call check() and prepare() first")
        plan, spec, run = self.plan, self.spec, self.run_dir
        self.monitor.phase("trials", total=spec.trials.total, unit="trials")
        with _log_file(run):
            trainable_with_plan = tune.with_parameters(trainable, plan=plan)
            resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
            if self._resuming:
                self._result = resume_tune(run.tune_experiment, trainable_with_plan, resources=resources)
                return
            optimizer = _optimizer(plan)
            starts = start_points(plan)
            start = [optimizer.attach(point, name=name) for name, point in starts]
            if starts:
                named = zip(start, starts, strict=True)
                log.info("start trials: %s", ", ".join(f"{i} {name}" for i, (name, _) in named))
            searcher = AxSearcher(
                optimizer,
                max_trials=spec.trials.total,
                snapshot_path=run.experiment,
                start=start,
                synchronous_from=synchronous_from(spec),
            )
            self._result = run_tune(
                trainable_with_plan,
                searcher,
                storage_path=run.tune,
                name=run.tune_experiment.name,
                max_concurrent_trials=spec.trials.concurrent,
                resources=resources,
                max_failures=spec.trials.max_failures,
                scheduler=_scheduler(spec),
                callbacks=[TrialEvents(run)],
                reuse_actors=True,
                verbose=0,
            )

    def finish(self) -> Outcome:
        """Write ``trials.csv`` and the best trial (or the Pareto front) with its model."""
        if self._result is None or self.plan is None:
            raise SearchStateError("finish: no trials have run in this session; call run_trials() first")
        optimizer = self._result.optimizer
        with _log_file(self.run_dir):
            best, front, completed = finalize(self.run_dir, optimizer, self.plan, monitor=self.monitor)
        self.monitor.close("finished")
        return Outcome(
            run_dir=self.run_dir.root,
            best=best,
            front=front,
            completed=completed,
            trials=optimizer.num_trials,
            wall_s=self._result.wall_s,
            suggest_s=self._result.suggest_s,
        )

    def run(self, trainable: Trainable = run_trial) -> Outcome:
        """check → prepare → run_trials → finish."""
        self.check()
        try:
            self.prepare()
            self.run_trials(trainable)
            return self.finish()
        except KeyboardInterrupt:
            self.monitor.close("interrupted")
            raise
        except BaseException:
            self.monitor.close("failed")
            raise


def connect(address: str | None) -> None:
    """Join the Ray cluster at ``address`` (``auto`` or ``HOST:PORT``), or start a private local
    one (never an unrelated Ray that happens to run on this machine). Failures are one line."""
    import ray

    from vitprune.search.ray_adapter import enable_token_auth_if_available

    if ray.is_initialized():
        return
    if not address:
        try:
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        except Exception as error:
            raise InputError(f"Ray: cannot start ({one_line(error) or type(error).__name__})") from None
        return
    where = f"--address {address}"
    if address != "auto":
        _check_listening(address, where)  # Ray would retry a silent port for about 14 minutes
        enable_token_auth_if_available()  # Ray does this by itself only for address="auto"
    try:
        ray.init(address=address, log_to_driver=False)
    except Exception as error:  # ConnectionError, RuntimeError, ValueError, AuthenticationError
        raise InputError(f"{where}: cannot connect ({_connect_reason(error)})") from None


def _check_listening(address: str, where: str, timeout_s: float = 5.0) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"{where}: expected auto or HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise InputError(f"{where}: nothing answers there ({error.strerror or error})") from None


def _connect_reason(error: BaseException) -> str:
    if "AuthenticationError" in type(error).__name__ or "InvalidAuthToken" in f"{error} {error.__cause__}":
        return (
            "the cluster requires token authentication and this machine has no matching token: copy the "
            "head's ~/.ray/auth_token here or set RAY_AUTH_TOKEN"
        )
    return one_line(error) or type(error).__name__


def synchronous_from(spec: SearchSpec) -> int | None:
    """From which trial on the searcher waits for every running trial before asking Ax for more:
    the GP's, whose points depend on the observations (Sobol's do not), or ``None``."""
    if not spec.trials.synchronous or spec.generation.method == "random":
        return None
    return spec.trials.initial


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


@contextlib.contextmanager
def _log_file(run: RunDir) -> Iterator[None]:
    """The search logger also writes ``search.log`` while a step runs."""
    if any(getattr(h, "baseFilename", None) == str(run.search_log) for h in log.handlers):
        yield
        return
    handler = logging.FileHandler(run.search_log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    level = log.level
    log.setLevel(min(level or logging.INFO, logging.INFO))  # progress lines reach the file
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        handler.close()


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
