"""Does a search run again with the same spec and seed propose the same trials? (issue 13)

``search.yaml``'s spec at ``--budget-macs`` is searched ``--repeats`` times with
``trials.synchronous`` on (a new batch only once every running trial has ended) and as many times
with it off (a free worker starts a new trial at once), the two modes interleaved so that both
see the same load. Fine-tunes on CPU are deterministic under a seed, so any difference between two
runs of one mode comes from the order in which trials ended, which decides what the GP has seen.

For each mode it reports the first trial whose point differs from the first run's (or that all
are identical), each run's best trial and score, and the wall time: the price of waiting for a
batch's slowest trial is the ratio of the two modes' mean wall times, measured side by side.

    python benchmarks/reproducibility.py --budget-macs 25% --repeats 2 --out repro.json

Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from peers_setup import log, report_header, trial_rows, write_report
from peers_vitprune import run_search
from pydantic import ValidationError

from vitprune.evaluators.config import validation_message
from vitprune.evaluators.trial import cached_context
from vitprune.search.rundir import RunDir
from vitprune.search.spec import SearchSpec, load_spec, spec_document
from vitprune.spaces import InputError, macs

MODES = {"synchronous": True, "asynchronous": False}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--config", default="search.yaml")
    add("--budget-macs", help='override the MACs budget, e.g. "25%%"')
    add("--repeats", type=int, default=2, help="searches per mode (at least 2)")
    add("--trials", type=int, help="trials per search (default: the config's)")
    add("--keep", type=Path, help="keep the run directories here (default: a temporary folder)")
    add("--out", type=Path, help="write every figure as JSON")
    args = parser.parse_args(argv)
    if args.repeats < 2:
        parser.error(f"--repeats: at least 2 runs per mode are needed to compare, got {args.repeats}")
    return args


def trial_points(run_dir: Path) -> list[dict[str, str]]:
    """Every trial's status and point, as ``trials.csv`` records them, in index order."""
    return [
        {key: value for key, value in row.items() if key == "status" or key.startswith("point_")}
        for row in trial_rows(RunDir(run_dir))
    ]


def first_difference(runs: list[list[dict[str, str]]]) -> int | None:
    """The first trial index at which some run differs from the first one (``None``: none does)."""
    reference = runs[0]
    for other in runs[1:]:
        for index, (a, b) in enumerate(zip(reference, other, strict=False)):
            if a != b:
                return index
        if len(other) != len(reference):
            return min(len(other), len(reference))
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:  # every input checked before the dense model is loaded
        spec, _ = load_spec(args.config)
        if args.budget_macs:
            document = spec_document(spec)
            document["budget"] = {**document["budget"], "macs": args.budget_macs}
            spec = SearchSpec.model_validate(document)
    except ValidationError as error:
        print(f"reproducibility: --budget-macs: {validation_message(error)}", file=sys.stderr)
        return 2
    except (OSError, ValueError, InputError) as error:
        print(f"reproducibility: {error}".splitlines()[0], file=sys.stderr)
        return 2
    context = cached_context(spec.model, spec.data, spec.dense_training)  # trained before the timed runs
    dense_macs = macs(context.dense_policy)
    fraction = spec.budget.limit(dense_macs) / dense_macs
    report = report_header("reproducibility", 1, argv) | {"budget_fraction": fraction, "runs": []}
    root = args.keep or Path(tempfile.mkdtemp(prefix="vitprune-repro-"))
    for repeat in range(args.repeats):
        for mode, synchronous in MODES.items():
            trials = spec.trials.model_copy(update={"synchronous": synchronous})
            run_dir = root / f"{mode}-{repeat}"
            found = run_search(
                spec.model_copy(update={"trials": trials}),
                fraction=fraction,
                trials=args.trials or spec.trials.total,
                run_dir=run_dir,
                progress=lambda line: None,
            )
            record = found["record"]
            run = {
                "mode": mode,
                "repeat": repeat,
                "wall_s": record["wall_s"],
                "best_trial": record["best_trial"],
                "search_val": record["trial_search_val"],
                "trials": trial_points(run_dir),
            }
            report["runs"].append(run)
            write_report(args.out, report)
            best = f"best trial {run['best_trial']} {run['search_val']:.4f}"
            log(f"{mode} #{repeat}: {best}, {run['wall_s']:.0f} s")
    lines = [
        "| mode | runs | first trial that differs | best trial (search-val) per run | wall s, mean |",
        "|---|---|---|---|---|",
    ]
    walls = {}
    for mode in MODES:
        runs = [run for run in report["runs"] if run["mode"] == mode]
        differs = first_difference([run["trials"] for run in runs])
        walls[mode] = statistics.mean(run["wall_s"] for run in runs)
        report[mode] = {"first_difference": differs, "wall_s": walls[mode]}
        best = ", ".join(f"{run['best_trial']} ({run['search_val']:.4f})" for run in runs)
        shown = f"none of {len(runs[0]['trials'])}" if differs is None else str(differs)
        lines.append(f"| {mode} | {len(runs)} | {shown} | {best} | {walls[mode]:.0f} |")
    report["wall_ratio"] = walls["synchronous"] / walls["asynchronous"]
    write_report(args.out, report)
    lines.append("")
    lines.append(f"Wall time, synchronous ÷ asynchronous: {report['wall_ratio']:.2f}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
