"""The search commands of ``vitprune``: search, export, status, dashboard.

Ray and Ax are imported inside the commands, so ``vitprune --help`` and the engine commands stay
fast.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from vitprune.argtypes import whole_number
from vitprune.search.rundir import RunDir
from vitprune.spaces import InputError

console = Console(stderr=True, highlight=False, soft_wrap=True)


def _log_to_console(*, quiet: bool = False) -> None:
    """The search logger goes to the console (rich); the search adds ``search.log`` once its run
    directory exists (after every check has passed)."""
    logger = logging.getLogger("vitprune.search")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.handlers = [] if quiet else [_ConsoleHandler()]


class _ConsoleHandler(logging.Handler):
    """``HH:MM:SS message`` on stderr, unwrapped (long lines stay greppable in CI logs)."""

    def emit(self, record: logging.LogRecord) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        style = "yellow" if record.levelno >= logging.WARNING else "dim"
        console.print(f"[{style}]{stamp}[/] {record.getMessage()}", markup=True, highlight=False)


def cmd_search(args: argparse.Namespace) -> int:
    """Exit status 0 with a result, 1 when no trial completed or none is feasible (the reasons are
    in trials.csv), 2 for bad input, 130 when interrupted."""
    from vitprune.search.noise import quiet_third_party
    from vitprune.search.spec import load_spec

    spec, _ = load_spec(args.config)  # a bad config is one line before Ray or Ax are even imported
    quiet_third_party()
    from vitprune.search.lifecycle import Search

    if args.smoke_test:
        spec = spec.smoke()
    run_dir = spec.resolved_run_dir(args.run_dir)
    if args.smoke_test and args.run_dir is None:
        run_dir = run_dir.with_name(run_dir.name + "-smoke")
    _log_to_console()
    log = logging.getLogger("vitprune.search")
    log.info("%s %s → %s", "resuming" if args.resume else "search", args.config, run_dir)
    if args.resume:
        search = Search.resume(
            run_dir, spec=spec, address=args.address, progress=log.info, bars=console.is_terminal
        )
    else:
        search = Search(
            spec, run_dir=run_dir, address=args.address, progress=log.info, bars=console.is_terminal
        )
    outcome = search.run()
    if outcome.completed == 0:
        console.print(f"no trial completed (exit status 1); the reasons are in {run_dir / 'trials.csv'}")
        return 1
    if outcome.front is not None:
        _print_front(outcome.front, run_dir)
        return 0 if outcome.front else 1
    if outcome.best is None:
        console.print(
            f"no completed trial meets the constraints (exit status 1); see {run_dir / 'trials.csv'}"
        )
        return 1
    best = outcome.best
    metrics = best["metrics"]
    latency = f", latency {metrics['latency_ms']:.2f} ms" if "latency_ms" in metrics else ""
    console.print(f"best policy: {run_dir / 'best_policy.json'} (trial {best['trial']})")
    console.print(f"best model: {run_dir / 'best_model'} (load with vitprune.load_pruned)")
    console.print(
        f"search-val accuracy {metrics['accuracy']:.4f} at {best['ratios']['macs']:.1%} of dense MACs, "
        f"{best['ratios']['params']:.1%} of dense params{latency}"
    )
    if "selection" in best:
        finalists = best["selection"]["finalists"]
        chosen = next(f for f in finalists if f["trial"] == best["trial"])
        console.print(
            f"chosen among trials {', '.join(str(f['trial']) for f in finalists)} by "
            f"{best['selection']['chosen_by']}: {chosen['mean_accuracy']:.4f}"
        )
    return 0


def _print_front(front: list[dict[str, Any]], run_dir: Path) -> None:
    if not front:
        console.print(
            f"no completed trial meets the constraints (exit status 1); see {run_dir / 'trials.csv'}"
        )
        return
    console.print(
        f"Pareto front: {len(front)} trials in {run_dir / 'pareto_front.json'}, models in "
        f"{run_dir / 'pareto_front'}/NNNN (vitprune export {run_dir} --trial N)"
    )
    for trial in sorted(front, key=lambda t: -t["metrics"]["accuracy"]):
        metrics = trial["metrics"]
        console.print(
            f"  trial {trial['trial']}: search-val accuracy {metrics['accuracy']:.4f}, latency "
            f"{metrics['latency_ms']:.2f} ms, {trial['ratios']['macs']:.1%} of dense MACs"
        )


def _trial_source(run: RunDir, trial: int | None) -> tuple[Path, int]:
    """The folder of ``--trial N``, or of the best feasible trial; a Pareto search has no single
    best, so it needs ``--trial``."""
    if trial is None:
        if run.pareto_front.exists():
            front = [t["trial"] for t in json.loads(run.pareto_front.read_text())["trials"]]
            raise InputError(
                f"{run.root}: a Pareto search has no single best; pass --trial N "
                f"(the front: {', '.join(map(str, front)) or 'empty'})"
            )
        if not run.best_policy.exists():
            raise InputError(
                f"{run.root}: no best_policy.json (the search has no feasible trial yet); pass --trial N"
            )
        trial = int(json.loads(run.best_policy.read_text())["trial"])
    source = run.trial(trial)
    if not (source / "model.safetensors").exists():
        raise InputError(f"--trial {trial}: {source} holds no model (did the trial complete?)")
    return source, trial


def cmd_export(args: argparse.Namespace) -> None:
    from vitprune.search.noise import quiet_third_party

    quiet_third_party()
    from vitprune.evaluators.data import load_data
    from vitprune.evaluators.dense import load_dense
    from vitprune.evaluators.io import load_pruned, save_pruned
    from vitprune.evaluators.trial import evaluate
    from vitprune.search.spec import SearchSpec

    run = RunDir(args.run_dir)
    run.check_search()
    spec = SearchSpec.model_validate_json(run.spec.read_text())
    source, trial = _trial_source(run, args.trial)
    if args.onnx and importlib.util.find_spec("onnxruntime") is None:  # before any work
        raise InputError("--onnx: needs onnx and onnxruntime: pip install 'vitprune[onnx]'")
    model, policy = load_pruned(source)
    teacher, _ = load_dense(None, checkpoint=run.dense)
    if args.finetune_epochs:
        console.print(f"fine-tuning trial {trial} for {args.finetune_epochs} epochs …")
    result = evaluate(
        model,
        policy,
        data=load_data(spec.data, policy.base),
        teacher=teacher,
        finetune_config=(
            spec.finetune.model_copy(update={"epochs": args.finetune_epochs, "steps": None})
            if args.finetune_epochs
            else None
        ),
        latency_config=spec.budget.latency,
        splits=("search-val", "test"),
        compare_dense=True,
        device=spec.budget.device,
    )
    m = result.metrics
    report: dict[str, Any] = {"trial": trial, "source": str(source)}
    if args.finetune_epochs:
        report["finetune_seconds"] = m["finetune_seconds"]
    report |= {
        "search_val_accuracy": m["search_val_accuracy"],
        "test_accuracy": m["test_accuracy"],
        "dense_test_accuracy": m["dense_test_accuracy"],
        "macs_ratio": m["macs_ratio"],
        "params_ratio": m["params_ratio"],
        "latency_ms": m["latency_ms"],
        "dense_latency_ms": m["dense_latency_ms"],
        "latency_ratio": m["latency_ratio"],
        "latency": {"batch_size": spec.budget.batch_size, "dtype": spec.budget.dtype},
    }
    save_pruned(result.model.cpu(), policy, args.out)
    report["out"] = str(args.out)
    if args.onnx:
        from vitprune.evaluators.export import export_onnx

        report["onnx"] = str(args.out / "model.onnx")
        report["onnx_max_abs_error"] = export_onnx(result.model, policy, args.out / "model.onnx")
        console.print(
            f"wrote {report['onnx']} (onnxruntime agrees with PyTorch to {report['onnx_max_abs_error']:.1e})"
        )
    console.print(
        f"trial {trial}: test accuracy {m['test_accuracy']:.4f} (dense {m['dense_test_accuracy']:.4f}), "
        f"{m['macs_ratio']:.1%} of dense MACs, latency {m['latency_ratio']:.2f}× dense "
        f"({m['latency_ms']:.2f} ms against {m['dense_latency_ms']:.2f} ms at batch {spec.budget.batch_size})"
    )
    print(json.dumps(report, indent=2))


def cmd_status(args: argparse.Namespace) -> None:
    from vitprune.search.noise import quiet_third_party

    quiet_third_party()  # before Ax's storage module announces itself
    from vitprune.search.optimizer import Optimizer
    from vitprune.search.records import NoFeasibleTrialError
    from vitprune.search.tables import trial_rows
    from vitprune.spaces import Policy

    run = RunDir(args.run_dir)
    run.check_search()
    phase = _read_json(run.phase) or {}
    progress = _read_json(run.progress) or {}
    if not run.experiment.exists():
        done, total = phase.get("done"), phase.get("total")
        steps = f" ({done}/{total} {phase.get('unit', '')})" if total else ""
        console.print(f"{run.root.name}: {phase.get('phase') or 'starting'}{steps}; no trial has ended yet")
        return
    optimizer = Optimizer.restore(run.experiment)
    dense = Policy.from_json((run.dense / "policy.json").read_text())
    rows = {row["trial"]: row for row in trial_rows(run, optimizer.trials(), dense=dense)}
    for index in progress.get("running", []):  # started after the last snapshot, or still RUNNING in it
        rows.setdefault(index, {"trial": index})["status"] = "RUNNING"
    table = Table(title=f"{run.root.name}: {len(rows)} of {progress.get('planned', len(rows))} trials")
    for column in STATUS_COLUMNS:
        table.add_column(column, justify="left" if column in ("status", "node", "reason") else "right")
    for index in sorted(rows):
        table.add_row(*(_cell(rows[index].get(column)) for column in STATUS_COLUMNS))
    Console(width=None if sys.stdout.isatty() else 240).print(table)  # piped: no truncated cells
    if progress:
        eta = progress.get("eta_s")
        counts = (
            f"{progress['completed']} completed, {progress['failed']} failed, "
            f"{len(progress['running'])} running of {progress['planned']} planned"
        )
        eta_text = f"; ETA {eta:.0f} s" if eta is not None and phase.get("phase") == "trials" else ""
        suggest = f"; {progress.get('suggest_s', 0):.1f} s suggesting"
        console.print(f"{phase.get('phase', 'trials')}: {counts}{eta_text}{suggest}")
    try:
        if optimizer.multi_objective:
            trials = ", ".join(str(point.index) for point in optimizer.pareto_frontier())
            console.print(f"Pareto front so far (accuracy, -latency_ms): trials {trials}")
        else:
            best = optimizer.best()
            console.print(
                f"best so far: trial {best.index}, accuracy {best.metrics.get('accuracy', float('nan')):.4f}"
            )
    except NoFeasibleTrialError:
        console.print("no feasible trial has completed yet")


# The trial table of `vitprune status`: outcome, cost, and the decoded structure (trials.csv has all).
STATUS_COLUMNS = (
    "trial",
    "status",
    "node",
    "accuracy",
    "macs_ratio",
    "params_ratio",
    "latency_ms",
    "heads",
    "qk_dim",
    "v_dim",
    "mlp_ratio",
    "tokens_final",
    "attn_removed",
    "act_removed",
    "finetune_seconds",
    "reason",
)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def cmd_dashboard(args: argparse.Namespace) -> None:
    from vitprune.search.dashboard import serve, state

    run = RunDir(args.run_dir)
    if not run.root.is_dir():
        raise InputError(f"{run.root}: no such run directory")
    _log_to_console()
    if args.once:
        print(json.dumps(state(run), indent=2))
    else:
        serve(run, host=args.host, port=args.port)


_port = whole_number(low=1, high=65535, what="a port number")
_trial_index = whole_number(low=0, what="an Ax trial index")


RUN_DIR_HELP = "a search's run directory (runs/<name>, or the --run-dir the search was given)"


def add_commands(commands: Any) -> None:
    p = commands.add_parser("search", help="GP-EI search over pruning policies on Ray Tune")
    p.add_argument(
        "config", metavar="CONFIG.yaml", help="a search spec, or a Ray cluster YAML (metadata.vitprune)"
    )
    p.add_argument("--run-dir", type=Path, metavar="DIR", help="where the run goes (default: runs/<name>)")
    p.add_argument("--resume", action="store_true", help="finish an interrupted search in --run-dir")
    p.add_argument("--address", metavar="auto|HOST:PORT", help="join a Ray cluster instead of starting one")
    p.add_argument(
        "--smoke-test", action="store_true", help="the whole pipeline with tiny settings (~1 minute)"
    )
    p.set_defaults(func=cmd_search)

    p = commands.add_parser(
        "export", help="the best (or a chosen) trial's policy and model, with test accuracy"
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help=RUN_DIR_HELP)
    p.add_argument(
        "--trial", type=_trial_index, metavar="N", help="Ax trial index (default: the best feasible)"
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="where the model goes: policy.json + model.safetensors (vitprune.load_pruned reads it)",
    )
    p.add_argument(
        "--finetune-epochs", type=_trial_index, default=0, metavar="N", help="fine-tune longer first"
    )
    p.add_argument(
        "--onnx",
        action="store_true",
        help="also write DIR/model.onnx, checked against onnxruntime (pip install 'vitprune[onnx]')",
    )
    p.set_defaults(func=cmd_export)

    p = commands.add_parser("status", help="the trial table of a run (running ones too) and the best so far")
    p.add_argument("run_dir", metavar="RUN_DIR", help=RUN_DIR_HELP)
    p.set_defaults(func=cmd_status)

    p = commands.add_parser("dashboard", help="serve a live page of a run on http://localhost:8050")
    p.add_argument("run_dir", metavar="RUN_DIR", help=RUN_DIR_HELP)
    p.add_argument("--port", type=_port, default=8050, help="TCP port to serve the page on (default: 8050)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 shares the page "
        "with the network)",
    )
    p.add_argument(
        "--once", action="store_true", help="print the page's data (the /api/state JSON) once and exit"
    )
    p.set_defaults(func=cmd_dashboard)
