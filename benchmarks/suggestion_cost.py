"""The optimiser's own cost on the machine at hand: seconds per suggestion, share of a search.

    python benchmarks/suggestion_cost.py --params 10 50 --observed 10 100 \
        --budgets 20:1024 4:256 --threads 1 2 --repeats 3 > suggest.jsonl

For every combination, a fresh ``Optimizer`` (same seed, hence the same data) completes
``observed`` Sobol trials of a closed-form objective with an outcome constraint (the shape of a
latency-budget search), then times ``repeats`` GP suggestions of one trial each, completing each
before the next. One JSON line per combination goes to stdout, with the median and the
1-minute load average before and after (the cores may be shared).

    python benchmarks/suggestion_cost.py --loop --params 12 --trials 20 --observed 8 \
        --trial-seconds 15 --concurrency 2

runs the real Ray Tune + Ax loop instead, with trials that keep one core busy for
``--trial-seconds`` (as fine-tuning does), and prints the share of the wall time spent in Ax.
Imports of Ax and torch are deferred so that Tune's workers, which import this module to run
its trainable, stay light.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any


def _metrics(point: dict[str, float]) -> dict[str, float]:
    values = list(point.values())
    macs = sum(values) / len(values)
    accuracy = 0.9 - sum((v - 0.3 - 0.4 * (i % 2)) ** 2 for i, v in enumerate(values)) / len(values)
    return {"accuracy": accuracy, "macs": macs}


def time_suggestions(
    *, params: int, observed: int, num_restarts: int, raw_samples: int, threads: int, repeats: int
) -> dict[str, object]:
    """Seconds of ``repeats`` one-trial GP suggestions after ``observed`` completed trials."""
    from vitprune.search import GenerationConfig, Optimizer

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


def _busy_trainable(seconds: float) -> Callable[[dict[str, Any]], None]:
    """A stand-in for fine-tuning: keeps one core busy for ``seconds``, then reports metrics."""

    def busy(config: dict[str, Any]) -> None:
        import torch
        from ray import tune

        from vitprune.search.report import final_result

        torch.set_num_threads(1)
        x = torch.randn(256, 256)
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            x = torch.tanh(x @ x)
        tune.report(final_result(_metrics(config)))

    return busy


def time_search_loop(
    *, params: int, trials: int, observed: int, trial_seconds: float, concurrency: int
) -> dict[str, object]:
    """Share of a real search's wall time that the driver spends in Ax."""
    import ray

    from vitprune.search import AxSearcher, GenerationConfig, Optimizer, run_tune

    optimizer = Optimizer()
    optimizer.configure(
        [f"x{i:02d}" for i in range(params)],
        objective="accuracy",
        outcome_constraints=["macs <= 0.45"],
        generation=GenerationConfig(initial_trials=observed),
    )
    searcher = AxSearcher(optimizer, max_trials=trials)
    ray.init(num_cpus=concurrency, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as storage:
            run = run_tune(
                _busy_trainable(trial_seconds),
                searcher,
                storage_path=storage,
                max_concurrent_trials=concurrency,
                verbose=0,
            )
    finally:
        ray.shutdown()
    gp = run.optimizer.timing("GP")
    return {
        "params": params,
        "trials": trials,
        "observed": observed,
        "trial_seconds": trial_seconds,
        "concurrency": concurrency,
        "wall_s": round(run.wall_s, 1),
        "suggest_s": round(run.suggest_s, 1),
        "suggest_fraction": round(run.suggest_fraction, 3),
        "encode_s": round(run.encode_s, 1),
        "gp_mean_s": round(gp.mean_s, 2),
        "gp_max_s": round(gp.max_s, 2),
        "load_1min": round(os.getloadavg()[0], 2),
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
    parser.add_argument("--loop", action="store_true", help="time a real Ray Tune search instead")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--trial-seconds", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("ax").setLevel(logging.ERROR)
    if args.loop:
        for params in args.params:
            row = time_search_loop(
                params=params,
                trials=args.trials,
                observed=args.observed[0],
                trial_seconds=args.trial_seconds,
                concurrency=args.concurrency,
            )
            print(json.dumps(row), flush=True)
        return
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
