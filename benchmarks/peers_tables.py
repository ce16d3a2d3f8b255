"""The race's report as Markdown tables, and its goals (issue 13) checked against the figures.

Goals, on test accuracy (mean over the fine-tune seeds) at equal MACs budgets:
- vitprune's search ≥ Torch-Pruning + 1 point at 25 % MACs (and below), ≥ Torch-Pruning above;
- vitprune's uniform policy over every dimension ≥ Torch-Pruning at every budget (its search
  start, and the token schedule chosen by search-val);
- latency ratio ÷ MACs ratio of vitprune's policies ≤ Torch-Pruning's at every budget and batch.

An accuracy goal also carries the paired difference on this run's test images and its 95 %
bootstrap interval (``benchmarks/race_paired.py``), and whether the interval decides the goal.
"""

from __future__ import annotations

from typing import Any

from race_paired import RaceError, contenders, paired_difference

WHAT = {
    "torch-pruning": "Torch-Pruning 1.6, best variant by search-val",
    "uniform-all": "vitprune uniform, every dimension",
    "uniform-widths": "vitprune uniform, widths (heads, q/k, v, MLP)",
    "matched": "vitprune uniform, every dimension, at Torch-Pruning's MACs",
    "uniform-schedules": "vitprune uniform, every dimension, token schedule chosen by search-val",
    "torch-pruning-slack": "Torch-Pruning 1.6, best variant, allowed 1 % over the budget (information)",
    "search": "vitprune search (its best policy, fine-tuned from dense)",
}


def _pm(stats: dict[str, float]) -> str:
    return f"{stats['mean']:.4f} ± {stats['sd']:.4f}"


def goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of issue 13 that this run's figures can decide, with the figures."""
    checks = []
    for key, entry in report.get("accuracy", {}).get("budgets", {}).items():
        contenders = entry["contenders"]
        if "torch-pruning" not in contenders:
            continue
        rival = contenders["torch-pruning"]
        margin = 0.01 if entry["target"] <= 0.25 else 0.0
        for name, need in (("search", margin), ("uniform-all", 0.0), ("uniform-schedules", 0.0)):
            if name in contenders:
                ours = contenders[name]
                checks.append(
                    {
                        "goal": f"{name} test ≥ torch-pruning + {need:.2f} at {key} MACs",
                        "vitprune": ours["test"]["mean"],
                        "torch_pruning": rival["test"]["mean"],
                        "macs_ratios": [ours["macs_ratio"], rival["macs_ratio"]],
                        "met": ours["test"]["mean"] >= rival["test"]["mean"] + need - 1e-12,
                    }
                    | _paired(report, key, name, need)
                )
    rows = report.get("latency", {}).get("rows", [])
    chosen = {
        entry["target"]: entry["contenders"]["torch-pruning"]["variant"].split("/")[1]
        for entry in report.get("accuracy", {}).get("budgets", {}).values()
        if "torch-pruning" in entry["contenders"]
    }
    for row in rows:
        if not row["contender"].startswith("vitprune"):
            continue
        structure = chosen.get(row["budget"], "head_dims")
        rivals = [
            r
            for r in rows
            if r["contender"] == f"torch-pruning {structure}"
            and (r["budget"], r["batch"]) == (row["budget"], row["batch"])
        ]
        if rivals:
            checks.append(
                {
                    "goal": f"{row['contender']} latency ÷ MACs ≤ torch-pruning {structure} at "
                    f"{row['budget']:.0%} MACs, batch {row['batch']}",
                    "vitprune": row["latency_per_macs"],
                    "torch_pruning": rivals[0]["latency_per_macs"],
                    "met": row["latency_per_macs"] <= rivals[0]["latency_per_macs"],
                }
            )
    return checks


def _paired(report: dict[str, Any], budget: str, name: str, need: float) -> dict[str, Any]:
    """``{"paired": ...}``: the difference with Torch-Pruning on the same test images, its 95 %
    interval, and ``decided``: ``"met"`` when the interval lies above ``need``, ``"not met"``
    when below, ``"not resolved"`` otherwise; empty for a report without per-image results."""
    try:
        found = contenders(report, budget, source="this run")
    except RaceError:
        return {}
    row = paired_difference([(found[name], found["torch-pruning"])], resamples=2000)
    decided = "met" if row["low"] >= need else "not met" if row["high"] < need else "not resolved"
    return {"paired": row | {"decided": decided}}


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# The race against Torch-Pruning ({report['date']}{', --quick' if report['quick'] else ''})",
        "",
    ]
    accuracy = report.get("accuracy")
    if accuracy:
        recipe = accuracy["recipe"]
        lines += [
            f"## Accuracy: {accuracy['model']} (dense test {accuracy['dense']['test']:.4f}); fine-tune "
            f"{recipe['epochs']} epochs, lr {recipe['lr']:g}, kd {recipe['kd']}, seeds {recipe['seeds']}",
            "",
            "| budget | contender | MACs ratio | search-val | test | structure |",
            "|---|---|---|---|---|---|",
        ]
        for key, entry in accuracy["budgets"].items():
            for name, c in entry["contenders"].items():
                what = WHAT.get(name, name) + (f" ({c['variant_label']})" if "variant_label" in c else "")
                what += f" ({c['schedule']})" if name == "uniform-schedules" else ""
                lines.append(
                    f"| {key} | {what} | {c['macs_ratio']:.3f} | {_pm(c['search-val'])} | "
                    f"**{_pm(c['test'])}** | {_structure(c.get('structure'))} |"
                )
        lines += ["", "Torch-Pruning variants (seed 0 of the recipe):", ""]
        lines += [
            "| budget | limit | variant | ratio | MACs ratio | search-val | test |",
            "|---|---|---|---|---|---|---|",
        ]
        for key, entry in accuracy["budgets"].items():
            for name in ("torch_pruning", "torch_pruning_slack"):
                limit = "budget + slack" if name.endswith("slack") else "budget"
                for row in entry.get(f"{name}_variants", []):
                    start = (
                        f"| {key} | {limit} | {row['label']} | {row['ratio']:.3f} | {row['macs_ratio']:.3f} |"
                    )
                    if "runs" not in row:
                        lines.append(f"{start} {row['note']} | |")
                        continue
                    run = row["runs"][0]
                    lines.append(
                        f"{start} {run['search-val']['accuracy']:.4f} | {run['test']['accuracy']:.4f} |"
                    )
        for key, entry in accuracy["budgets"].items():
            search = entry["contenders"].get("search", {}).get("search")
            if search:
                lines.append(
                    f"\nSearch at {key}: {search['trials']} trials ({search['completed']} completed), "
                    f"{search['wall_s']:.0f} s; best trial {search['best_trial']}: search-val "
                    f"{search['trial_search_val']:.4f}, its own model's test "
                    f"{search['trial_model_test']:.4f}."
                )
    latency = report.get("latency")
    if latency:
        lines += [
            "",
            f"## Latency: {latency['model']} (random weights), fp32 CPU, {latency['threads']} threads",
            "",
            "| budget | batch | contender | MACs ratio | dense ms | pruned ms | latency ratio "
            "| latency ÷ MACs |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in sorted(latency["rows"], key=lambda r: (-r["budget"], r["batch"])):
            lines.append(
                f"| {row['budget']:.0%} | {row['batch']} | {row['contender']} | {row['macs_ratio']:.3f} | "
                f"{row['dense_ms']:.1f} | {row['pruned_ms']:.1f} | {row['latency_ratio']:.3f} | "
                f"**{row['latency_per_macs']:.2f}** |"
            )
        unreached = [k for k, m in latency["models"].items() if m.get("reached") is False or "error" in m]
        if unreached:
            lines.append(f"\nNot timed (cannot reach the budget): {', '.join(unreached)}.")
    if report.get("goals"):
        lines += ["", "## Goals (issue 13)", ""]
        for check in report["goals"]:
            mark = "met" if check["met"] else "**not met**"
            paired = check.get("paired")
            interval = (
                f" (paired on the test images: {100 * paired['difference']:+.2f} points, 95 % interval "
                f"[{100 * paired['low']:+.2f}, {100 * paired['high']:+.2f}]: {paired['decided']})"
                if paired
                else ""
            )
            figures = f"{check['vitprune']:.4f} vs {check['torch_pruning']:.4f}"
            lines.append(f"- {check['goal']}: {figures}, {mark}{interval}")
    return "\n".join(lines)


def _structure(structure: dict[str, Any] | None) -> str:
    if not structure:
        return ""
    return ", ".join(f"{k} {v}" for k, v in structure.items())
