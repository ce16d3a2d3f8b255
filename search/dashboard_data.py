"""What the dashboard shows, assembled from a run directory: functions of its files (and of the Ax
snapshot once one is loaded), testable without a server or a browser.

The run directory fills up as the search goes (see :class:`~vitprune.search.rundir.RunDir`):
``spec.json`` and ``phase.json`` first, ``plan.json`` once the dense model, the criteria and the
latency model are ready, ``progress.json`` when the first trial starts, ``trials/NNNN/`` and
``experiment.json`` as trials end. :func:`state_document` works at every stage; what is not there
yet is ``null``. Trials come from the Ax snapshot when one is loaded (status, generation node,
failure reason), otherwise from the trial folders, and the running and queued trials from
``progress.json`` (the snapshot is written when trials end, so it does not know the newest ones).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitprune.search.records import TrialRecord
from vitprune.search.rundir import RunDir
from vitprune.spaces import Policy, macs, params

PHASES = ("dense training", "criteria", "latency model", "trials", "selection", "finished")
ENDED = ("finished", "failed", "interrupted")
TIMES = ("finetune_seconds", "decode_seconds", "latency_seconds")


def read_json(path: Path) -> Any:
    """The JSON document at ``path``, or ``None`` if it is missing or unreadable (every file of a
    run directory is written atomically, so a reader never sees half of one)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Snapshot:
    """What the dashboard takes from the Ax snapshot ``experiment.json``.

    Attributes:
        records: every Ax trial in index order.
        multi_objective: whether the objective is a Pareto objective.
        best: Ax's best feasible trial by observed value (one objective), if any.
        front: Ax's feasible Pareto front by observed values (Pareto objective).
    """

    records: tuple[TrialRecord, ...]
    multi_objective: bool
    best: int | None = None
    front: tuple[int, ...] | None = None


def load_snapshot(run: RunDir) -> Snapshot:
    """Restore ``experiment.json`` with Ax (about a second at 100 trials; the caller caches it)."""
    from vitprune.search.optimizer import Optimizer
    from vitprune.search.records import NoFeasibleTrialError

    optimizer = Optimizer.restore(run.experiment)
    best, front = None, None
    try:
        if optimizer.multi_objective:
            front = tuple(point.index for point in optimizer.pareto_frontier())
        else:
            best = optimizer.best().index
    except NoFeasibleTrialError:
        pass
    return Snapshot(tuple(optimizer.trials()), optimizer.multi_objective, best=best, front=front)


def disk_records(run: RunDir) -> list[TrialRecord]:
    """The trials that ended, read from their folders alone (before the Ax snapshot is loaded):
    ``metrics.json`` makes a trial COMPLETED, ``error.txt`` FAILED. The generation node is unknown."""
    folder = run.root / "trials"
    indices = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []
    records = []
    for index in indices:
        saved = run.trial_metrics(index)
        error = None if saved is not None else run.trial_error(index)
        if saved is None and error is None:
            continue  # a folder the trial is still writing
        status = "COMPLETED" if saved is not None else "FAILED"
        point = (saved or {}).get("point") or {}
        records.append(
            TrialRecord(index, status, point, {}, "?", "?", None, None, error, fit_s=0.0, gen_s=0.0)
        )
    return records


def finite(value: Any) -> Any:
    """``value`` with NaN and infinities as ``None``: browsers reject them in JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def cost_metric(budget_metric: str | None, *, pareto: bool) -> str:
    """The cost the accuracy is plotted against: latency for latency budgets and for the Pareto
    objective ``accuracy, -latency_ms``, otherwise the budget's metric (MACs or params)."""
    if pareto or budget_metric == "latency_ms":
        return "latency_ms"
    return budget_metric or "macs"


def trial_rows(
    run: RunDir,
    records: Sequence[TrialRecord],
    *,
    dense: Policy | None,
    dense_latency_ms: float | None = None,
    latency_limit: float | None = None,
    running: Iterable[int] = (),
    queued: Iterable[int] = (),
    live: bool = True,
) -> list[dict[str, Any]]:
    """One row per trial for the page: status, node, metrics, ratios to dense, structure, times,
    failure reason. Trials in ``running`` / ``queued`` that ``records`` does not know yet get a row
    of their own. A trial ``records`` holds RUNNING that is neither (it ended after the snapshot
    was read) takes its status from its folder; after the search stopped (``live=False``) it is
    ``INTERRUPTED``. ``feasible`` is whether a completed trial meets a latency limit (always, for
    MACs and params budgets: the decoder lands every trial under them)."""
    rows = []
    known = {record.index for record in records}
    now = set(running) | set(queued)
    dense_macs, dense_params = (macs(dense), params(dense)) if dense is not None else (None, None)
    for record in records:
        saved = run.trial_metrics(record.index) or {}
        status = record.status
        if status == "RUNNING" and record.index not in now:
            status = "COMPLETED" if saved else "FAILED" if run.trial_error(record.index) else status
        if status == "RUNNING" and not live:
            status = "INTERRUPTED"
        row = {"trial": record.index, "status": status, "node": None if record.node == "?" else record.node}
        for name in ("accuracy", "macs", "params", "latency_ms"):
            row[name] = record.metrics.get(name, saved.get(name))
        if status != "COMPLETED":
            row["accuracy"] = None  # a failed trial's partial metrics are no observation
        row["macs_ratio"] = _ratio(row["macs"], dense_macs)
        row["params_ratio"] = _ratio(row["params"], dense_params)
        row["latency_ratio"] = _ratio(row["latency_ms"], dense_latency_ms)
        row["budget_ratio"] = saved.get("budget_ratio")
        row["structure"] = {
            key.removeprefix("structure_"): value
            for key, value in saved.items()
            if key.startswith("structure_")
        }
        row |= {name: saved.get(name) for name in TIMES}
        row["suggest_s"] = round(record.fit_s + record.gen_s, 3) if record.fit_s or record.gen_s else None
        row["reason"] = run.trial_error(record.index) or record.reason
        if row["status"] == "COMPLETED":
            latency = row["latency_ms"]
            row["feasible"] = latency_limit is None or (latency is not None and latency <= latency_limit)
        else:
            row["feasible"] = None
        rows.append(row)
    for status, indices in (("RUNNING", running), ("QUEUED", queued)):
        for index in sorted(set(indices) - known):
            rows.append({"trial": index, "status": status, "node": None, "structure": {}, "feasible": None})
            known.add(index)
    return sorted(rows, key=lambda row: row["trial"])


def _ratio(value: float | None, dense: float | None) -> float | None:
    return None if value is None or not dense else value / dense


def front_of(points: Iterable[tuple[int, float, float]]) -> list[int]:
    """The non-dominated trials of ``(trial, cost, accuracy)`` points: no other point is at least
    as cheap and at least as accurate, and better in one of the two. In order of cost."""
    ordered = sorted(points, key=lambda p: (p[1], -p[2], p[0]))
    front, best = [], -math.inf
    for index, _, accuracy in ordered:
        if accuracy > best:
            front.append(index)
            best = accuracy
    return front


def best_so_far(rows: Sequence[dict[str, Any]]) -> list[tuple[int, float]]:
    """``(trial, best accuracy among the feasible completed trials up to it)`` in trial order."""
    series, best = [], None
    for row in sorted(rows, key=lambda row: row["trial"]):
        if row.get("feasible") and row.get("accuracy") is not None:
            best = row["accuracy"] if best is None else max(best, row["accuracy"])
            series.append((row["trial"], best))
    return series


def state_document(run: RunDir, snapshot: Snapshot | None = None, *, loading: bool = False) -> dict[str, Any]:
    """``/api/state``: the phase, the progress, the budget, the dense model, every trial, the best
    trial and the front (see the module docstring for what each stage of a run provides)."""
    phase = read_json(run.phase) or _inferred_phase(run)
    progress = read_json(run.progress) or {}
    plan = read_json(run.plan)
    spec = (plan or {}).get("spec") or read_json(run.spec) or {}
    dense_policy = _dense_policy(run)
    budget_metric = (plan or {}).get("budget", {}).get("metric") or _spec_budget_metric(spec)
    pareto = "," in str(spec.get("objective", "accuracy"))
    latency_budget = budget_metric == "latency_ms"
    dense_cost = (plan or {}).get("dense_cost")
    limit = (plan or {}).get("budget", {}).get("limit")
    dense_latency = dense_cost if latency_budget else None
    live = (phase or {}).get("phase") not in ENDED

    records = list(snapshot.records) if snapshot is not None else disk_records(run)
    rows = trial_rows(
        run,
        records,
        dense=dense_policy,
        dense_latency_ms=dense_latency,
        latency_limit=limit if latency_budget else None,
        running=progress.get("running", ()) if live else (),
        queued=progress.get("queued", ()) if live else (),
        live=live,
    )
    axis = cost_metric(budget_metric, pareto=pareto)
    for row in rows:
        row["cost"] = _cost(row, axis)
    fronts = {name: front_of(_points(rows, name)) for name in ("macs", "params", "latency_ms")}
    if snapshot is not None and snapshot.multi_objective:
        fronts["latency_ms"] = list(snapshot.front or ())  # Ax's front, in (accuracy, latency)
    best = snapshot.best if snapshot is not None and not snapshot.multi_objective else None
    measured = _points(rows, axis)
    if snapshot is None and not pareto and measured:  # before Ax is loaded: the best observed value
        best = max(measured, key=lambda p: (p[2], -p[0]))[0]

    dense = None
    if dense_policy is not None:
        dense = {
            "model": dense_policy.base.model,
            "test_accuracy": (plan or {}).get("dense_test_accuracy"),
            "macs": macs(dense_policy),
            "params": params(dense_policy),
            "latency_ms": dense_latency,
            "depth": dense_policy.base.depth,
            "heads_total": dense_policy.base.num_heads * dense_policy.base.depth,
            "embed_dim": dense_policy.base.embed_dim,
        }
    return finite(
        {
            "run": run.root.name,
            "model": (spec.get("model") or {}).get("name"),
            "objective": spec.get("objective", "accuracy"),
            "pareto": pareto,
            "phase": phase,
            "phases": [
                p
                for p in PHASES
                if (p != "latency model" or latency_budget) and (p != "selection" or _selects(spec, pareto))
            ],
            "progress": {key: value for key, value in progress.items() if key != "best"} or None,
            "planned": progress.get("planned") or (spec.get("trials") or {}).get("total"),
            "budget": {
                "metric": budget_metric,
                "limit": limit,
                "dense_cost": dense_cost,
                "share": limit / dense_cost if limit and dense_cost else None,
                "requested": (spec.get("budget") or {}).get(budget_metric) if budget_metric else None,
                "batch_size": (spec.get("budget") or {}).get("batch_size"),
            },
            "cost_axis": axis,
            "dense": dense,
            "trials": rows,
            "best": best,
            "front": fronts[axis],
            "fronts": fronts,
            "best_so_far": best_so_far(rows),
            "snapshot": {
                "exists": run.experiment.exists(),
                "loaded": snapshot is not None,
                "loading": loading,
                "trials": len(snapshot.records) if snapshot is not None else 0,  # a newer snapshot knows more
            },
        }
    )


def _points(rows: Sequence[dict[str, Any]], axis: str) -> list[tuple[int, float, float]]:
    """``(trial, cost, accuracy)`` of the feasible completed trials whose cost is known."""
    costs = [(row, _cost(row, axis)) for row in rows if row.get("feasible")]
    return [(row["trial"], cost, row["accuracy"]) for row, cost in costs if cost is not None]


def _cost(row: dict[str, Any], axis: str) -> float | None:
    """The plotted cost: MACs and params as % of dense, latency in ms."""
    if axis == "latency_ms":
        return row.get("latency_ms")
    ratio = row.get(f"{axis}_ratio")
    return None if ratio is None else 100 * ratio


def _inferred_phase(run: RunDir) -> dict[str, Any] | None:
    """The phase of a run directory written before ``phase.json`` existed (or while the search
    has not written it yet), from the files it holds."""
    if run.best_policy.exists() or run.pareto_front.exists() or run.trials_csv.exists():
        name = "finished"
    elif run.experiment.exists() or run.progress.exists() or run.plan.exists():
        name = "trials"
    else:
        return None
    return {"phase": name, "history": [], "inferred": True}


def _spec_budget_metric(spec: dict[str, Any]) -> str | None:
    budget = spec.get("budget") or {}
    return next((name for name in ("macs", "params", "latency_ms") if budget.get(name) is not None), None)


def _dense_policy(run: RunDir) -> Policy | None:
    path = run.dense / "policy.json"
    try:
        return Policy.from_json(path.read_text())
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------ one trial
def layer_structure(policy: Policy) -> list[dict[str, Any]]:
    """What each layer of ``policy`` keeps, as counts: heads, q/k and v widths (summed over the
    kept heads), MLP neurons, patch tokens kept from its MLP on, the width of the residual stream
    (the same in every layer); and whether its attention and its GELU are kept."""
    rows = []
    for i, layer in enumerate(policy.layers):
        attention = layer.attention
        rows.append(
            {
                "layer": i,
                "attention": attention,
                "heads": layer.num_heads if attention else 0,
                "qk": sum(len(dims) for dims in layer.qk) if attention else 0,
                "v": sum(len(dims) for dims in layer.v) if attention else 0,
                "activation": layer.activation,
                "mlp": layer.mlp_hidden,
                "tokens": layer.keep_tokens,
                "embed": policy.embed_dim,
            }
        )
    return rows


def dense_widths(policy: Policy) -> dict[str, int]:
    """The dense model's count of each quantity :func:`layer_structure` reports."""
    base = policy.base
    return {
        "heads": base.num_heads,
        "qk": base.attn_dim,
        "v": base.attn_dim,
        "mlp": base.mlp_hidden,
        "tokens": base.num_patches,
        "embed": base.embed_dim,
    }


def trial_detail(
    run: RunDir,
    index: int,
    *,
    record: TrialRecord | None,
    status: str | None,
    decoded: Policy | None = None,
) -> dict[str, Any]:
    """``/api/trial/N``: one trial's structure per layer (its ``policy.json``, or for a running
    trial ``decoded``: the policy its point decodes to), its metrics and its point."""
    dense = _dense_policy(run)
    saved = run.trial_metrics(index) or {}
    policy, source = None, None
    if (run.trial(index) / "policy.json").exists():
        try:
            policy, source = Policy.from_json((run.trial(index) / "policy.json").read_text()), "trial"
        except (OSError, ValueError):
            policy = None
    if policy is None and decoded is not None:
        policy, source = decoded, "decoded"
    point = dict(record.parameters) if record is not None else saved.get("point")
    metrics = {key: value for key, value in saved.items() if key not in ("point", "trial")}
    return finite(
        {
            "trial": index,
            "status": status,
            "node": None if record is None or record.node == "?" else record.node,
            "source": source,
            "layers": layer_structure(policy) if policy is not None else None,
            "dense": dense_widths(dense) if dense is not None else None,
            "summary": policy.summary() if policy is not None else None,
            "metrics": metrics or None,
            "point": point,
            "reason": run.trial_error(index) or (record.reason if record is not None else None),
        }
    )


def decode_point(run: RunDir, point: dict[str, float]) -> Policy:
    """The policy a trial's point decodes to (what a running trial fine-tunes): the same decoder,
    scores, budget and cost function as the trial itself. Milliseconds for MACs and params."""
    from vitprune.search.plan import cost_function
    from vitprune.search.spec import SearchSpec
    from vitprune.spaces import Scores
    from vitprune.spaces.budget import Budget
    from vitprune.spaces.space import decode

    plan = json.loads(run.plan.read_text())
    spec = SearchSpec.model_validate(plan["spec"])
    dense = Policy.from_json((run.dense / "policy.json").read_text())
    budget = Budget(plan["budget"]["metric"], plan["budget"]["limit"])
    latency_model = None
    if budget.metric == "latency_ms":
        from vitprune.evaluators.latency_model import LatencyModel

        latency_model = LatencyModel.from_json(run.latency_model.read_text())
    return decode(
        point,
        space=spec.space.build(dense.base.depth),
        base=dense.base,
        scores=Scores.from_json(run.scores.read_text()),
        budget=budget,
        measure=cost_function(budget.metric, latency_model),
    ).policy


def _selects(spec: dict[str, Any], pareto: bool) -> bool:
    """Whether the search ends with a selection phase (``search.selection``: finalists fine-tuned again)."""
    from vitprune.search.spec import SelectionSpec

    return not pareto and SelectionSpec.model_validate(spec.get("selection") or {}).on
