"""Slow: the real embedded default through the CLI, and a Ctrl-C'd search resumed from the CLI."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[2]
VITPRUNE = [sys.executable, "-m", "vitprune"]


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "trials.csv") as handle:
        return list(csv.DictReader(handle))


def test_the_embedded_default_smoke_test(tmp_path):
    """``vitprune search search.yaml --smoke-test``: the whole pipeline, tiny settings."""
    env = {**os.environ, "VITPRUNE_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [*VITPRUNE, "search", str(ROOT / "search.yaml"), "--smoke-test", "--run-dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "best policy:" in done.stderr and "of dense MACs" in done.stderr
    assert len(_rows(tmp_path / "run")) == 3  # no timing asserted: it took 189 s on 2 loaded cores


def test_an_interrupted_search_resumes_with_exactly_the_planned_trials(tmp_path):
    spec = yaml.safe_load((ROOT / "search.yaml").read_text())["metadata"]["vitprune"]
    spec |= {
        "model": {"name": "vitprune_digits_vit", "args": {"depth": 2, "embed_dim": 32, "num_heads": 2}},
        "dense_training": {"epochs": 5},
        "finetune": {"epochs": 2},
        "trials": {"total": 6, "concurrent": 2, "initial": 3, "max_failures": 0},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    env = {**os.environ, "VITPRUNE_CACHE": str(tmp_path / "cache")}
    command = [*VITPRUNE, "search", str(tmp_path / "spec.yaml"), "--run-dir", str(tmp_path / "run")]
    driver = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    snapshot = tmp_path / "run" / "experiment.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and driver.poll() is None:  # Ctrl-C once two trials have ended
        if snapshot.exists() and sum(t["status"] in ("COMPLETED",) for t in _trial_statuses(snapshot)) >= 2:
            driver.send_signal(signal.SIGINT)
            break
        time.sleep(0.5)
    driver.communicate(timeout=120)
    interrupted = len(_trial_statuses(snapshot))
    assert 2 <= interrupted < 6, "the driver should have been interrupted mid-search"

    resumed = subprocess.run(
        [*command, "--resume"], capture_output=True, text=True, env=env, timeout=600, check=False
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    rows = _rows(tmp_path / "run")
    assert len(rows) == 6  # none lost
    points = {tuple(value for key, value in row.items() if key in spec_parameters(rows)) for row in rows}
    assert len(points) == 6  # none run twice
    assert all(row["status"] == "COMPLETED" for row in rows)


def spec_parameters(rows: list[dict[str, str]]) -> set[str]:
    from vitprune.spaces.space import SearchSpace

    return {f"point_{name}" for name in SearchSpace("compact", depth=2).parameters()} & set(rows[0])


def _trial_statuses(snapshot: Path) -> list[dict[str, str]]:
    """Trial statuses straight from the Ax JSON snapshot (no Ax import needed in the test)."""
    from vitprune.search.optimizer import Optimizer

    return [{"status": record.status} for record in Optimizer.restore(snapshot).trials()]
