"""What the scripts of ``benchmarks/`` share: the ``--quick`` settings, the environment record,
progress lines, writing the JSON report, and reading a finished search's ``trials.csv``."""

from __future__ import annotations

import csv
import datetime
import importlib.metadata
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from vitprune.search.rundir import RunDir
from vitprune.search.spec import SearchSpec, TrialsSpec

# --quick's DeiT-S stand-in for the latency race: 4 blocks of width 64 at 32 px (16 patches).
QUICK_LATENCY_ARGS = {
    "img_size": 32,
    "patch_size": 8,
    "depth": 4,
    "embed_dim": 64,
    "num_heads": 4,
    "num_classes": 10,
}


def quick_spec(spec: SearchSpec) -> SearchSpec:
    """A tiny digits ViT (dim 32, depth 2) trained for 12 epochs on 512 images (about 55 % test
    accuracy, a few seconds); 1 fine-tune epoch, 1 calibration batch, 2 search trials."""
    return spec.model_copy(
        update={
            "model": spec.model.model_copy(update={"args": {"embed_dim": 32, "depth": 2, "num_heads": 2}}),
            "data": spec.data.model_copy(update={"max_train_samples": 512, "augment_shift": 0}),
            "dense_training": spec.dense_training.model_copy(update={"epochs": 12, "lr": 5e-3}),
            "criteria": spec.criteria.model_copy(update={"calibration_batches": 1}),
            "finetune": spec.finetune.model_copy(update={"epochs": 1}),
            "trials": TrialsSpec(total=2, concurrent=2, initial=2, max_failures=0),
            "generation": spec.generation.model_copy(update={"num_restarts": 2, "raw_samples": 64}),
        }
    )


def environment() -> dict[str, Any]:
    """Python, CPUs, load average and package versions: what a figure needs to be read."""
    versions = {}
    for package in ("torch", "timm", "torch-pruning", "ax-platform", "botorch", "ray"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "versions": versions,
    }


def command(script: str, argv: list[str] | None) -> str:
    return " ".join(["python", f"benchmarks/{script}", *(sys.argv[1:] if argv is None else argv)])


def report_header(name: str, version: int, argv: list[str] | None) -> dict[str, Any]:
    """What every JSON report of ``benchmarks/NAME.py`` starts with: its format, the date, the
    exact command and the environment."""
    return {
        "format": f"vitprune.{name}/{version}",
        "date": datetime.date.today().isoformat(),
        "command": command(f"{name}.py", argv),
        "environment": environment(),
    }


def log(line: str) -> None:
    """A progress line on stderr (the tables go to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def write_report(path: Path | None, report: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, default=str))


def trial_rows(run: RunDir, *, status: str | None = None) -> list[dict[str, str]]:
    """The rows of a finished search's ``trials.csv`` in trial order, only those of ``status``
    (e.g. ``"COMPLETED"``) if given."""
    with open(run.trials_csv, newline="") as file:
        return [row for row in csv.DictReader(file) if status is None or row["status"] == status]
