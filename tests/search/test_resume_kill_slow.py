"""Slow: a search whose driver is killed (SIGKILL) at random moments, again and again, and resumed
each time, still completes every planned trial exactly once, and never runs a finished one again.

Each driver runs in a PID namespace of its own (``unshare --pid --fork --mount-proc
--kill-child``), so killing it also ends the Ray processes it started and nothing else.
"""

import csv
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[2]
PLANNED = 12
KILLS = 12

SPEC = {
    "name": "killed",
    "model": {"name": "vitprune_digits_vit", "args": {"depth": 2, "embed_dim": 32, "num_heads": 2}},
    "dense_training": {"epochs": 3},
    "budget": {"macs": "50%", "batch_size": 4},
    "finetune": {"epochs": 1, "steps": 4},
    "trials": {"total": PLANNED, "concurrent": 2, "initial": 3, "max_failures": 0},
    "generation": {"num_restarts": 2, "raw_samples": 64, "maxiter": 20},
    "criteria": {"calibration_batches": 1},
}


def _driver(tmp_path: Path, *, resume: bool) -> subprocess.Popen:
    command = [
        "unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
        sys.executable, "-m", "vitprune", "search", str(tmp_path / "spec.yaml"),
        "--run-dir", str(tmp_path / "run"),
        *(["--resume"] if resume else []),
    ]  # fmt: skip
    env = {**os.environ, "VITPRUNE_CACHE": str(tmp_path / "cache")}
    log = open(tmp_path / "drivers.log", "a")  # noqa: SIM115  (closed with the process)
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, text=True)


def _after_next_end(run: Path, driver: subprocess.Popen, timeout: float = 120.0) -> float:
    """When the next trial of this driver ended (``progress.json`` changed), or the timeout."""
    progress = run / "progress.json"
    start = progress.stat().st_mtime if progress.exists() else 0.0
    deadline = time.monotonic() + timeout
    while driver.poll() is None and time.monotonic() < deadline:
        if progress.exists() and progress.stat().st_mtime != start:
            state = json.loads(progress.read_text() or "{}")
            if (
                state.get("session_elapsed_s", 0) > 0
                and state.get("completed", 0) + state.get("failed", 0) > 0
            ):
                return time.monotonic()
            start = progress.stat().st_mtime
        time.sleep(0.05)
    return time.monotonic()


def _finished(run: Path) -> dict[int, tuple[int, int]]:
    """Trials whose model and metrics are on disk: index → (inode, mtime) of the weights."""
    seen = {}
    for metrics in sorted(run.glob("trials/*/metrics.json")):
        weights = metrics.with_name("model.safetensors")
        stat = weights.stat()
        seen[int(metrics.parent.name)] = (stat.st_ino, stat.st_mtime_ns)
    return seen


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux) for PID namespaces")
def test_a_search_killed_at_random_moments_loses_nothing_and_repeats_nothing(tmp_path):
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    rng = random.Random(20261128)
    env = {**os.environ, "VITPRUNE_CACHE": str(tmp_path / "cache")}
    subprocess.run(  # the dense model, trained once and cached, so that every driver reaches its trials
        [sys.executable, "-m", "vitprune", "train-dense", str(tmp_path / "spec.yaml")],
        env=env, check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    run = tmp_path / "run"
    finished: dict[int, tuple[int, int]] = {}
    kills, resume = 0, False
    while kills < KILLS and not (run / "best_policy.json").exists():
        driver = _driver(tmp_path, resume=resume)
        if kills % 4 == 3:  # now and then during the resume itself (restore, first suggestions)
            deadline = time.monotonic() + rng.uniform(1.0, 10.0)
        else:  # otherwise just after a trial ended: suggestions, snapshot writes, Tune checkpoints
            deadline = _after_next_end(run, driver) + rng.uniform(0.0, 3.0)
        while driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if driver.poll() is None:
            driver.kill()  # SIGKILL: no handler runs
            driver.wait(timeout=60)
            kills += 1
        resume = resume or (run / "plan.json").exists()
        now = _finished(run)
        changed = [index for index, stamp in finished.items() if now.get(index) != stamp]
        assert not changed, f"finished trials {changed} ran again"
        finished = now
    if not (run / "best_policy.json").exists():
        driver = _driver(tmp_path, resume=True)
        assert driver.wait(timeout=900) == 0, (tmp_path / "drivers.log").read_text()[-3000:]
    assert kills >= 10 or (run / "best_policy.json").exists()

    with open(run / "trials.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(int(row["trial"]) for row in rows) == list(range(PLANNED))  # none lost, none extra
    assert [row["status"] for row in rows] == ["COMPLETED"] * PLANNED, [row["reason"] for row in rows]
    final = _finished(run)
    assert sorted(final) == list(range(PLANNED))
    assert all(final[index] == stamp for index, stamp in finished.items())  # none ran twice
    points = {
        json.dumps(json.loads((run / "trials" / f"{i:04d}" / "metrics.json").read_text())["point"])
        for i in final
    }
    assert len(points) == PLANNED  # every trial a different point, run once
