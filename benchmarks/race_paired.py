"""How far apart the race's contenders really are: paired differences on the same test images,
with bootstrap intervals (issue 13).

Each input is one report of ``benchmarks/peers.py --accuracy --out FILE`` (contenders: Torch-Pruning,
vitprune's uniform policies, the search) or of ``benchmarks/gp_vs_random.py --out FILE`` (contenders:
the methods ``gp_ei``, ``random``, ``uniform``, each a best policy per search seed). Reports run with
another ``--test-seed`` add independent test images: each draws its own stratified 20 % of digits as
test and trains its own dense model on the rest.

For a contender ``c`` and the reference ``r``, per test image, the share of ``c``'s fine-tunes (of
every search seed, for a method) that classify it right; the difference ``c − r`` averaged over
every image of every report is the difference of their mean test accuracies (the tables, pooled).

Its 95 % interval is a percentile bootstrap that resamples, within each report, the test images
(the same images for ``c`` and ``r``: paired), each contender's search seeds, and within each of
those its fine-tune seeds (independently for ``c`` and ``r``: seed ``k`` of two contenders are
unrelated runs). It covers what the test images, the searches and the fine-tunes happen to be.
"Images to resolve" is the number of test images at which the interval's half-width would equal
the observed difference (the half-width shrinks as one over the square root of the images, if the
images are what dominates it): what a data set needs to tell the two apart at this difference.

    python benchmarks/race_paired.py race-t0.json race-t1.json race-t2.json --budget 50%
    python benchmarks/race_paired.py gp-t0.json gp-t1.json gp-t2.json --against random
    python benchmarks/race_paired.py race.json --budget 25% --against uniform-all --out paired.json
    python benchmarks/race_paired.py race.json+slack.json --budget 25% --against torch-pruning-slack

``A+B``: peers reports of separate runs on the same test split and dense model, their contenders
taken together as one report (a contender in both must have the same per-image results).

Prints a Markdown table; ``--out`` writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "vitprune.race_paired/1"


class RaceError(ValueError):
    """A report that cannot be compared: the message names the file and what is missing."""


@dataclass(frozen=True)
class Contender:
    """One contender's test results in one report: ``correct`` is ``(searches, fine-tunes,
    images)`` of 0/1 (one search for a fixed policy)."""

    name: str
    correct: np.ndarray

    @property
    def runs(self) -> int:
        """Fine-tunes per image: searches × fine-tunes of each."""
        return self.correct.shape[0] * self.correct.shape[1]

    @property
    def right(self) -> float:
        """Right answers per run, from counts (so equal accuracies differ by exactly 0)."""
        return self.correct.sum() / self.runs

    @property
    def images(self) -> int:
        return self.correct.shape[-1]


def _matrix(rows: list[str | None], *, what: str) -> np.ndarray:
    """``(fine-tunes, images)`` of 0/1 from the ``correct`` strings of one policy's fine-tunes."""
    if not rows or any(row is None for row in rows):
        raise RaceError(f"{what}: no per-image results (run the benchmark again)")
    if len({len(row) for row in rows}) != 1:
        raise RaceError(f"{what}: fine-tunes measured different numbers of images")
    return np.array([[c == "1" for c in row] for row in rows], dtype=np.int8)


def contenders(report: dict[str, Any], budget: str, *, source: str) -> dict[str, Contender]:
    """The contenders of one report by name: a peers report's at ``budget`` (e.g. ``"50%"``), or a
    gp_vs_random report's methods (its one budget must be ``budget``)."""
    if "rows" in report:  # gp_vs_random: one row per method and search seed
        if report.get("budget") != budget:
            raise RaceError(f"{source}: a gp_vs_random report at {report.get('budget')}, not {budget}")
        groups: dict[str, list[np.ndarray]] = {}
        for row in report["rows"]:
            what = f"{source}: {row['method']} seed {row['seed']}"
            matrix = _matrix((row.get("recipe_test") or {}).get("correct"), what=what)
            if row["method"] == "uniform" and row["method"] in groups:
                continue  # one policy whatever the seed: measured once, counted once
            groups.setdefault(row["method"], []).append(matrix)
        found = {}
        for name, matrices in groups.items():
            if len({m.shape for m in matrices}) != 1:
                raise RaceError(f"{source}: {name}: searches refitted with different seeds or images")
            found[name] = Contender(name, np.stack(matrices))
        return found
    budgets = report.get("accuracy", {}).get("budgets")
    if budgets is None:
        raise RaceError(f"{source}: neither a peers.py --accuracy nor a gp_vs_random.py report")
    if budget not in budgets:
        raise RaceError(f"{source}: no budget {budget} (it has {', '.join(budgets) or 'none'})")
    return {
        name: Contender(
            name,
            _matrix(
                [run["test"].get("correct") for run in entry.get("runs", [])],
                what=f"{source}: {budget} {name}",
            )[None],
        )
        for name, entry in budgets[budget]["contenders"].items()
    }


def merge_runs(parts: list[tuple[str, dict[str, Any]]]) -> tuple[str, dict[str, Any]]:
    """One peers report from ``parts``, reports of separate runs on the same test images: the
    union of their contenders at every budget. The runs must share test split, data and dense
    model; a contender measured in more than one must have the same per-image results in each."""
    source = "+".join(name for name, _ in parts)
    for name, report in parts:
        if "budgets" not in (report.get("accuracy") or {}):
            raise RaceError(f"{name}: only peers.py --accuracy reports can be joined with '+'")
    merged = copy.deepcopy(parts[0][1])
    first = merged["accuracy"]
    for name, report in parts[1:]:
        accuracy = report["accuracy"]
        for key in ("test_seed", "data", "dense"):
            if accuracy.get(key) != first.get(key):
                raise RaceError(
                    f"{source}: {name} has another {key} than {parts[0][0]}: not the same test images"
                )
        for budget, entry in accuracy["budgets"].items():
            into = first["budgets"].setdefault(budget, {"target": entry.get("target"), "contenders": {}})
            for contender, results in entry["contenders"].items():
                known = into["contenders"].get(contender)
                if known is not None and _corrects(known) != _corrects(results):
                    raise RaceError(f"{source}: {budget} {contender} differs between the runs")
                into["contenders"][contender] = results
    return source, merged


def _corrects(entry: dict[str, Any]) -> list[str | None]:
    return [run["test"].get("correct") for run in entry.get("runs", [])]


def difference(c: Contender, r: Contender) -> float:
    """``c − r`` in test accuracy on one report's images."""
    if c.images != r.images:
        raise RaceError(f"{c.name} and {r.name} were measured on different numbers of images")
    return (c.right - r.right) / c.images


def paired_difference(
    pairs: list[tuple[Contender, Contender]], *, resamples: int = 10_000, seed: int = 0
) -> dict[str, float]:
    """The pooled difference ``c − r`` in test accuracy over ``pairs`` (one per report) and its
    bootstrap distribution.

    Returns:
        ``difference`` (``c − r``, a share), ``low`` and ``high`` (the 95 % percentile interval),
        ``p_ahead`` (share of resamples with ``c − r > 0``), ``images`` (pooled), and
        ``images_to_resolve`` (``images · (half-width / |difference|)²``; ``inf`` when equal).
    """
    rng = np.random.default_rng(seed)
    images = sum(c.images for c, _ in pairs)
    pooled = sum(difference(c, r) * c.images for c, r in pairs) / images
    boot = np.zeros(resamples)
    for c, r in pairs:
        n = c.images
        index = rng.integers(n, size=(resamples, n))  # the same images for both: paired
        shares = []
        for side in (c, r):
            searches, tunes, _ = side.correct.shape
            search = rng.integers(searches, size=(resamples, searches, 1))
            tune = rng.integers(tunes, size=(resamples, searches, tunes))
            hits = side.correct[search, tune].sum(axis=(1, 2), dtype=np.int32)  # (resamples, n)
            shares.append(np.take_along_axis(hits, index, axis=1).sum(axis=1) / side.runs)
        boot += shares[0] - shares[1]
    boot /= images
    low, high = np.quantile(boot, [0.025, 0.975])
    half = (high - low) / 2
    return {
        "difference": pooled,
        "low": float(low),
        "high": float(high),
        "p_ahead": float((boot > 0).mean()),
        "images": images,
        "images_to_resolve": images * (half / abs(pooled)) ** 2 if pooled else float("inf"),
    }


def verdict(row: dict[str, float]) -> str:
    if row["low"] > 0:
        return "ahead"
    if row["high"] < 0:
        return "behind"
    return "not resolved"


def compare(
    reports: list[tuple[str, dict[str, Any]]], *, budget: str | None, against: str, resamples: int
) -> dict[str, Any]:
    """Every contender present in all ``reports`` against ``against``, pooled and per report.
    ``budget`` ``None``: the first report's (a gp_vs_random report has one), else 50 %."""
    budget = budget or reports[0][1].get("budget", "50%")
    tables = [contenders(report, budget, source=source) for source, report in reports]
    for (source, _), table in zip(reports, tables, strict=True):
        if against not in table:
            raise RaceError(f"{source}: {budget} has no {against} (it has {', '.join(table)})")
    names = [name for name in tables[0] if name != against and all(name in t for t in tables)]
    rows = []
    for name in names:
        pooled = paired_difference([(t[name], t[against]) for t in tables], resamples=resamples)
        each = [difference(t[name], t[against]) for t in tables]
        rows.append({"contender": name, **pooled, "per_report": each, "verdict": verdict(pooled)})
    return {
        "format": FORMAT,
        "budget": budget,
        "against": against,
        "reports": [source for source, _ in reports],
        "test_seeds": [(report.get("accuracy") or report).get("test_seed", 0) for _, report in reports],
        "resamples": resamples,
        "rows": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    seeds = ", ".join(map(str, result["test_seeds"]))
    lines = [
        f"{result['budget']} MACs, against {result['against']}, test splits {seeds} pooled "
        f"(differences in points of test accuracy; 95 % bootstrap intervals):",
        "",
        "| contender | images | difference | 95 % interval | P(ahead) | per test split | verdict "
        "| images to resolve |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        each = ", ".join(f"{100 * d:+.2f}" for d in row["per_report"])
        need = row["images_to_resolve"]
        lines.append(
            f"| {row['contender']} | {row['images']} | {100 * row['difference']:+.2f} | "
            f"[{100 * row['low']:+.2f}, {100 * row['high']:+.2f}] | {row['p_ahead']:.2f} | {each} | "
            f"{row['verdict']} | {'–' if need == float('inf') else f'{need:,.0f}'} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "reports", type=Path, nargs="+", help="peers.py or gp_vs_random.py --out files (A+B: one split)"
    )
    parser.add_argument("--budget", help="as the report labels it: 50%% (a peers report's default), 25%%")
    parser.add_argument(
        "--against", help="the reference (default: torch-pruning, or random for gp_vs_random)"
    )
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    return parser.parse_args(argv)


def read_report(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise RaceError(f"{path}: cannot read a JSON report ({error})") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.resamples < 100:
            raise RaceError(f"--resamples: at least 100, got {args.resamples}")
        reports = []
        for argument in args.reports:
            paths = [argument] if argument.exists() else [Path(p) for p in str(argument).split("+")]
            parts = [(str(path), read_report(path)) for path in paths]
            reports.append(parts[0] if len(parts) == 1 else merge_runs(parts))
        against = args.against or ("random" if "rows" in reports[0][1] else "torch-pruning")
        result = compare(reports, budget=args.budget, against=against, resamples=args.resamples)
    except RaceError as error:
        print(f"race_paired: error: {error}", file=sys.stderr)
        return 2
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
