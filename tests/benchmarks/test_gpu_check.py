"""The GPU check (benchmarks/gpu_check.sh → gpu_check.py) runs its GPU code paths on tiny CPU
models, so that the script is known to work before a GPU is lent for a few minutes."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
SECTIONS = ("speedup", "seeds", "torch_pruning", "latency_model", "training")
FAMILIES = {
    "heads",
    "qk",
    "v",
    "qk+v (equal widths)",
    "mlp neurons",
    "tokens",
    "depth (GELU, then attention)",
}
JOINT = "joint (all six)"
LATENCY_FIGURES = (
    "macs_ratio",
    "dense_ms",
    "pruned_ms",
    "latency_ratio",
    "speedup",
    "efficiency",
    "img_per_s",
)


def torch_pruning_expected() -> bool:
    """Torch-Pruning is there, or the wrapper installs it from benchmarks/wheels/."""
    installed = importlib.util.find_spec("torch_pruning") is not None
    return installed or any((BENCHMARKS / "wheels").glob("torch_pruning-*.whl"))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, Path]:
    """One ``--tiny`` run through the wrapper, as on the GPU machine: (report, Markdown, folder)."""
    out = tmp_path_factory.mktemp("gpu_check")
    env = os.environ | {"PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_check.sh"), str(out), "--tiny"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text(), out


def test_every_section_has_figures_or_a_reason(run):
    doc, _, _ = run
    assert doc["format"] == "vitprune.gpu_check/1"
    assert doc["finished"] is True
    assert doc["mode"] == "tiny"
    statuses = {name: section["status"] for name, section in doc["sections"].items()}
    expected = dict.fromkeys(SECTIONS, "ok") | {
        "torch_pruning": "ok" if torch_pruning_expected() else "skipped"
    }
    assert statuses == expected
    for section in doc["sections"].values():
        assert section["seconds"] >= 0
        assert section["status"] == "ok" or "torch-pruning" in section["reason"]


def test_only_the_engine_is_imported_from_the_source_tree(run):
    doc, _, _ = run
    env = doc["environment"]
    assert env["vitprune_from"] == "source tree"
    assert Path(env["vitprune"]) == ROOT / "vitprune"
    assert doc["imported_ray_or_ax"] is False
    assert doc["sections"]["training"]["evaluate"]["imported_ray_or_ax"] is False


def _latency_rows(doc: dict) -> list[dict]:
    return [
        row for name in ("speedup", "seeds", "torch_pruning") for row in doc["sections"][name].get("rows", [])
    ]


def test_latency_figures_are_finite_positive_and_consistent(run):
    doc, _, _ = run
    rows = _latency_rows(doc)
    assert len(rows) > 50
    for row in rows:
        for key in LATENCY_FIGURES:
            assert math.isfinite(row[key]) and row[key] > 0, (key, row)
        assert row["pruned_min_ms"] <= row["pruned_ms"] <= row["pruned_max_ms"]
        assert row["speedup"] * row["latency_ratio"] == pytest.approx(1.0)
        assert row["efficiency"] == pytest.approx(row["speedup"] * row["macs_ratio"])
        assert row["img_per_s"] == pytest.approx(row["batch"] * 1e3 / row["pruned_ms"])


def test_speedup_covers_every_dimension_budget_and_batch(run):
    doc, _, _ = run
    settings = doc["settings"]
    rows = doc["sections"]["speedup"]["rows"]
    big = {(r["model"], r["family"], r["budget"]) for r in rows if r["batch"] == settings["batch"]}
    models = {"DeiT-S (tiny)", "DeiT-B (tiny)"}
    assert big == {(m, f, b) for m in models for f in FAMILIES | {JOINT} for b in (0.5, 0.25)}
    small = {(r["model"], r["budget"], r["batch"]) for r in rows if r["batch"] != settings["batch"]}
    assert small == {(m, b, n) for m in models for b in (0.5, 0.25) for n in settings["small_batches"]}
    for row in rows:
        assert row["macs_ratio"] <= row["budget"] or not row["reached"]
        if row["family"] == JOINT:
            assert row["reached"] and row["macs_ratio"] > 0.9 * row["budget"]


def test_seeds_are_the_papers_configurations_with_their_claims(run):
    doc, _, _ = run
    section = doc["sections"]["seeds"]
    assert set(section["claims"]) == {"boundarydpt", "snp_2.0G", "snp_1.3G", "star_like", "hou_kung_60"}
    for about in section["claims"].values():
        assert {"gpu", "batch", "precision", "text", "source"} <= set(about["claim"])
    assert section["claims"]["snp_2.0G"]["claim"]["gpu"] == "RTX 3090"
    policies = section["policies"]
    assert policies["boundarydpt"]["attention_removed"] == [0, 3, 7, 8, 11]
    assert policies["boundarydpt"]["gelu_removed"] == [2, 7, 8, 10, 11]
    deit_s_macs = 4_598_882_304  # analytic MACs of the full-size DeiT-S (FlopCounterMode agrees)
    assert policies["snp_2.0G"]["macs_ratio"] <= 2.0e9 / deit_s_macs
    assert policies["snp_1.3G"]["macs_ratio"] <= 1.3e9 / deit_s_macs
    assert policies["hou_kung_60"]["macs_ratio"] <= 0.6
    assert all(policy["reached"] for policy in policies.values())
    star = [row for row in section["rows"] if row["seed"] == "star_like"]
    assert star and all(row["vs_deit_tiny"] > 0 for row in star)
    batches = {row["batch"] for row in section["rows"]}
    assert batches == {*doc["settings"]["small_batches"], doc["settings"]["batch"]}


@pytest.mark.skipif(not torch_pruning_expected(), reason="torch-pruning is not installed (optional)")
def test_torch_pruning_lands_at_the_joint_policies_macs(run):
    doc, _, _ = run
    section = doc["sections"]["torch_pruning"]
    for check in section["macs_counter_check"]:
        assert check["counted"] == check["analytic"]
    by_budget = {}
    for row in section["rows"]:
        by_budget.setdefault(row["budget"], {})[row["method"]] = row
    assert set(by_budget) == {0.5, 0.25}
    for pair in by_budget.values():
        tp, vitprune = pair["torch-pruning"], pair["vitprune joint"]
        assert tp["reached"] and tp["macs_counted"] <= vitprune["macs_counted"]
        assert tp["embed_dim"] % 8 == 0


def test_latency_model_is_checked_on_twelve_held_out_policies(run):
    doc, _, _ = run
    (row,) = doc["sections"]["latency_model"]["rows"]
    assert len(row["held_out"]) == 12
    assert row["fit_s"] > 0 and row["factor"] > 0 and row["exponent"] > 0 and row["dense_ms"] > 0
    assert row["mean_error"] == pytest.approx(
        sum(abs(p["predicted_ms"] - p["measured_ms"]) / p["measured_ms"] for p in row["held_out"]) / 12
    )
    assert row["goal_met"] == (row["mean_error"] <= 0.10)
    assert all(0 < p["macs_ratio"] < 1 for p in row["held_out"])


def test_finetune_and_evaluate_run_end_to_end(run):
    doc, _, _ = run
    section = doc["sections"]["training"]
    finetune = section["finetune"]
    assert finetune["steps"] == doc["settings"]["finetune_steps"]
    assert finetune["loss_finite"] and finetune["weights_finite"]
    assert all(math.isfinite(loss) and loss > 0 for loss in finetune["epoch_losses"])
    assert finetune["steps_per_s"] > 0
    report = section["evaluate"]["report"]
    assert 0 <= report["accuracy"] <= 1
    assert 0.4 < report["macs_ratio"] <= 0.5
    assert report["latency_ms"] > 0 and report["dense"]["latency_ms"] > 0


def test_markdown_table_is_written(run):
    doc, markdown, out = run
    assert markdown.startswith("# vitprune GPU check (--tiny)")
    for title in (
        "1. Dense against",
        "2. The seed papers'",
        "3. Torch-Pruning",
        "4. The latency model",
        "5. Fine-tune",
    ):
        assert f"## {title}" in markdown
    assert "| model | family | budget | reached | MACs ratio | batch |" in markdown
    table_rows = [line for line in markdown.splitlines() if line.startswith("| DeiT-")]
    assert len(table_rows) >= len(doc["sections"]["speedup"]["rows"])
    assert sorted(path.name for path in out.iterdir()) == ["gpu_check.json", "gpu_check.md"]


# -- the runner's guards, with fake sections (in process, instant) --------------------------------


@pytest.fixture
def gpu_check(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    handler = signal.getsignal(signal.SIGTERM)
    import gpu_check
    import gpu_sections

    yield gpu_check, gpu_sections
    signal.signal(signal.SIGTERM, handler)  # main() turns SIGTERM into KeyboardInterrupt


def test_a_failing_section_is_recorded_and_the_others_still_run(gpu_check, monkeypatch, tmp_path):
    module, sections = gpu_check
    from gpu_lab import OutOfTime, Skipped

    def fails(lab, out):
        out["rows"] = [{"kept": "rows before the failure"}]
        raise ValueError("boom")

    def partial(lab, out):
        raise OutOfTime("latency model deit_b: 3 s left, about 50 s needed")

    def skipped(lab, out):
        raise Skipped("torch-pruning is not installed")

    def ok(lab, out):
        out["figure"] = 1.5

    fakes = {
        "speedup": fails,
        "seeds": ok,
        "torch_pruning": skipped,
        "latency_model": partial,
        "training": ok,
    }
    monkeypatch.setattr(sections, "SECTIONS", fakes)
    assert module.main(["--tiny", "--out", str(tmp_path)]) == 1
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    got = doc["sections"]
    assert {name: section["status"] for name, section in got.items()} == {
        "speedup": "failed",
        "seeds": "ok",
        "torch_pruning": "skipped",
        "latency_model": "partial",
        "training": "ok",
    }
    assert got["speedup"]["error"] == "ValueError: boom"
    assert got["speedup"]["rows"] == [{"kept": "rows before the failure"}]
    assert "raise ValueError" in "\n".join(got["speedup"]["traceback"])
    assert got["latency_model"]["reason"].startswith("time budget: latency model deit_b")
    assert got["seeds"]["figure"] == 1.5
    assert "**failed**" in (tmp_path / "gpu_check.md").read_text()


def test_sections_past_the_time_budget_are_skipped_with_the_reason(gpu_check, monkeypatch, tmp_path):
    module, sections = gpu_check
    calls = []
    monkeypatch.setattr(sections, "SECTIONS", {name: lambda lab, out: calls.append(out) for name in SECTIONS})
    assert module.main(["--tiny", "--out", str(tmp_path), "--budget-s", "0"]) == 0
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    assert not calls
    assert doc["finished"] is True
    for section in doc["sections"].values():
        assert section["status"] == "skipped" and section["reason"].startswith("time budget:")


def test_an_interrupt_keeps_what_finished(gpu_check, monkeypatch, tmp_path):
    module, sections = gpu_check

    def interrupted(lab, out):
        raise KeyboardInterrupt

    fakes = dict.fromkeys(SECTIONS, lambda lab, out: out.update(figure=1.0)) | {"torch_pruning": interrupted}
    monkeypatch.setattr(sections, "SECTIONS", fakes)
    assert module.main(["--tiny", "--out", str(tmp_path)]) == 1
    got = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]
    assert [got[name]["status"] for name in SECTIONS] == ["ok", "ok", "interrupted", "skipped", "skipped"]
    assert got["seeds"]["figure"] == 1.0
