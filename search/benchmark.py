"""Seconds per Ax suggestion, the optimiser's own cost, on the machine at hand.

    python -m vitprune.search.benchmark --params 10 50 --observed 10 100 \
        --budgets 20:1024 4:256 --threads 1 2 --repeats 3 > suggest.jsonl

For every combination, a fresh ``Optimizer`` (same seed, hence the same data) completes
``observed`` Sobol trials of a closed-form objective with an outcome constraint (the shape of a
latency-budget search), then times ``repeats`` GP suggestions of one trial each, completing each
before the next. One JSON line per combination goes to stdout, with the median and the
1-minute load average before and after (the cores may be shared).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time

from vitprune.search.generation import GenerationConfig
from vitprune.search.optimizer import Optimizer


def _metrics(point: dict[str, float]) -> dict[str, float]:
    values = list(point.values())
    macs = sum(values) / len(values)
    accuracy = 0.9 - sum((v - 0.3 - 0.4 * (i % 2)) ** 2 for i, v in enumerate(values)) / len(values)
    return {"accuracy": accuracy, "macs": macs}


def time_suggestions(
    *, params: int, observed: int, num_restarts: int, raw_samples: int, threads: int, repeats: int
) -> dict[str, object]:
    """Seconds of ``repeats`` one-trial GP suggestions after ``observed`` completed trials."""
    optimizer = Optimizer(torch_threads=threads)
    optimizer.configure(
        [f"x{i:02d}" for i in range(params)],
        objective="accuracy",
        outcome_constraints=["macs <= 0.45"],
        generation=GenerationConfig(
            initial_trials=observed, seed=0, num_restarts=num_restarts, raw_samples=raw_samples
        ),
    )
    while optimizer.num_trials < observed:
        for index, point in optimizer.suggest(1).items():
            optimizer.complete(index, _metrics(point))
    load_before = os.getloadavg()[0]
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        ((index, point),) = optimizer.suggest(1).items()
        seconds.append(time.perf_counter() - start)
        optimizer.complete(index, _metrics(point))
    nodes = {record.node for record in optimizer.trials()[observed:]}
    return {
        "params": params,
        "observed": observed,
        "num_restarts": num_restarts,
        "raw_samples": raw_samples,
        "threads": threads,
        "seconds": [round(s, 2) for s in seconds],
        "median_s": round(statistics.median(seconds), 2),
        "nodes": sorted(nodes),
        "load_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--observed", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--budgets", nargs="+", default=["20:1024", "4:256"], help="num_restarts:raw_samples")
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("ax").setLevel(logging.ERROR)
    for params in args.params:
        for observed in args.observed:
            for budget in args.budgets:
                num_restarts, raw_samples = (int(v) for v in budget.split(":"))
                for threads in args.threads:
                    row = time_suggestions(
                        params=params,
                        observed=observed,
                        num_restarts=num_restarts,
                        raw_samples=raw_samples,
                        threads=threads,
                        repeats=args.repeats,
                    )
                    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
