"""The GPU check's report: ``gpu_check.json`` and the same figures as Markdown tables.

Both files are rewritten atomically after every section (and every measured group within one),
so a run cut short still leaves a complete, readable report of what finished.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

TITLES = {
    "speedup": "1. Dense against each dimension alone and the joint policy",
    "seeds": "2. The seed papers' configurations against their claims",
    "torch_pruning": "3. Torch-Pruning at the MACs of the joint policies",
    "latency_model": "4. The latency model on this device",
    "training": "5. Fine-tune and `vitprune evaluate` on this device",
}


def _write_atomic(path: Path, text: str) -> None:
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w") as file:
        file.write(text)
    os.chmod(staging, 0o644)  # mkstemp makes it private; the report is for reading
    os.replace(staging, path)


def save(doc: dict[str, Any], out_dir: Path) -> None:
    """Write ``gpu_check.json`` and ``gpu_check.md`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_dir / "gpu_check.json", json.dumps(doc, indent=1, default=str) + "\n")
    _write_atomic(out_dir / "gpu_check.md", render(doc))


def _f(value: Any, spec: str = ".3f", suffix: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float | int):
        return f"{value:{spec}}{suffix}"
    return str(value)


Column = tuple[str, Callable[[dict[str, Any]], str]]


def _col(header: str, key: str, spec: str = ".3f", suffix: str = "") -> Column:
    return header, lambda row: _f(row.get(key), spec, suffix)


def _table(columns: Sequence[Column], rows: Sequence[dict[str, Any]]) -> list[str]:
    lines = ["| " + " | ".join(header for header, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row) for _, cell in columns) + " |" for row in rows]
    return [*lines, ""]


MODEL = _col("model", "model")
BATCH = _col("batch", "batch", "d")
MACS_RATIO = _col("MACs ratio", "macs_ratio")
SPEEDUP = _col("speedup", "speedup", ".2f", "×")
EFFICIENCY = _col("efficiency", "efficiency", ".2f")
IMG_PER_S = _col("img/s", "img_per_s", ",.0f")


def _speedup(section: dict[str, Any]) -> list[str]:
    columns = [MODEL, _col("family", "family"), _col("budget", "budget", ".0%"), _col("reached", "reached")]
    columns += [MACS_RATIO, BATCH, _col("dense ms", "dense_ms", ".2f"), _col("pruned ms", "pruned_ms", ".2f")]
    columns += [_col("latency ratio", "latency_ratio"), SPEEDUP, EFFICIENCY, IMG_PER_S]
    return _table(columns, section.get("rows", []))


def _claim(claim: dict[str, Any]) -> str:
    parts = []
    if claim.get("speedup") is not None:
        parts.append(f"{claim['speedup']:.2f}×")
    if claim.get("img_per_s") is not None:
        parts.append(f"{claim['img_per_s']:,} img/s ({claim['vs_deit_tiny']:.2f}× DeiT-Ti)")
    if claim.get("macs_ratio") is not None:
        parts.append(f"MACs ×{claim['macs_ratio']:.2f}, no latency claim")
    return ", ".join(parts) + (f" ({claim['gpu']})" if "stated" not in claim["gpu"] else "")


def _seeds(section: dict[str, Any]) -> list[str]:
    claims = section.get("claims", {})

    def claim(row: dict[str, Any]) -> str:
        return _claim(claims[row["seed"]]["claim"]) if row["seed"] in claims else "–"

    columns = [_col("seed", "seed"), MODEL, ("claim", claim), BATCH, MACS_RATIO, SPEEDUP, EFFICIENCY]
    columns += [IMG_PER_S, _col("vs DeiT-Ti", "vs_deit_tiny", ".2f", "×")]
    order = {key: i for i, key in enumerate(claims)}
    rows = sorted(section.get("rows", []), key=lambda r: (order.get(r["seed"], len(order)), r["batch"]))
    lines = _table(columns, rows)
    for key, about in claims.items():
        lines.append(
            f"- `{key}` ({about['paper']}): {about['policy'].rstrip('.')}. Claim: “{about['claim']['text']}”."
        )
    return [*lines, ""]


def _torch_pruning(section: dict[str, Any]) -> list[str]:
    def structure(r: dict[str, Any]) -> str:
        if r["method"] != "torch-pruning":
            return ""
        return (
            f"D {r['embed_dim']}, head dims {r['head_dims']}, MLP {r['mlp_hidden']}, ratio {r['ratio']:.3f}"
        )

    columns = [MODEL, _col("budget", "budget", ".0%"), _col("method", "method"), MACS_RATIO, BATCH]
    columns += [SPEEDUP, EFFICIENCY, IMG_PER_S, ("structure", structure)]
    lines = [f"Torch-Pruning {section['version']}. {section['recipe']}", ""] if "version" in section else []
    for check in section.get("macs_counter_check", []):
        lines.append(
            f"- MACs counter check, {check['model']} {check['policy']}: analytic {check['analytic']:,}, "
            f"counted {check['counted']:,.0f}"
        )
    return [*lines, "", *_table(columns, section.get("rows", []))]


def _latency_model(section: dict[str, Any]) -> list[str]:
    columns = [MODEL, BATCH, _col("mean error", "mean_error", ".1%"), _col("max error", "max_error", ".1%")]
    columns += [_col("noise floor", "noise_floor", ".1%"), _col("fit s", "fit_s", ".1f")]
    columns += [_col("check s", "check_s", ".1f"), _col("goal ≤ 10 %", "goal_met")]
    return _table(columns, section.get("rows", []))


def _training(section: dict[str, Any]) -> list[str]:
    lines = []
    if "finetune" in section:
        losses = section["finetune"]["epoch_losses"]
        columns = [MODEL, BATCH, _col("steps", "steps", "d"), _col("steps/s", "steps_per_s", ".2f")]
        columns += [
            _col("steady steps/s", "steady_steps_per_s", ".2f"),
            _col("img/s", "images_per_s", ",.0f"),
        ]
        columns += [("loss first → last", lambda _: f"{losses[0]:.3f} → {losses[-1]:.3f}")]
        columns += [("finite", lambda f: _f(f["loss_finite"] and f["weights_finite"]))]
        lines += _table(columns, [section["finetune"]])
    if "evaluate" in section:
        evaluate = section["evaluate"]
        columns = [("command", lambda e: f"`{e['command']}`"), _col("seconds", "seconds", ".1f")]
        columns += [("accuracy", lambda e: _f(e["report"]["accuracy"]))]
        columns += [("MACs ratio", lambda e: _f(e["report"]["macs_ratio"]))]
        columns += [("latency ratio", lambda e: _f(e["report"]["latency_ratio"]))]
        lines += _table(columns, [evaluate])
    return lines


TABLES: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "speedup": _speedup,
    "seeds": _seeds,
    "torch_pruning": _torch_pruning,
    "latency_model": _latency_model,
    "training": _training,
}


def render(doc: dict[str, Any]) -> str:
    """The report as Markdown: the environment, then one table per section with its status."""
    env = doc["environment"]
    lines = [
        f"# vitprune GPU check{' (--tiny)' if doc['mode'] == 'tiny' else ''}",
        "",
        f"{env.get('device')}; torch {env.get('torch')} (CUDA {env.get('cuda')}), timm {env.get('timm')}, "
        f"Python {env.get('python')}; {doc['settings']['dtype']}; started {doc['started_at']}, "
        f"{_f(doc.get('wall_s'), '.0f')} s of a {doc['budget_s']:.0f} s budget"
        f"{'' if doc.get('finished') else ' (not finished)'}.",
        "",
    ]
    for name, section in doc["sections"].items():
        status = section.get("status", "not run")
        note = section.get("reason") or section.get("error") or ""
        lines += [
            f"## {TITLES.get(name, name)}",
            "",
            f"**{status}** ({_f(section.get('seconds'), '.0f')} s){': ' + note if note else ''}",
            "",
        ]
        if section.get("setup"):
            lines += [section["setup"], ""]
        try:
            lines += TABLES[name](section)
        except (KeyError, TypeError, ValueError) as error:  # a half-written section still renders the rest
            lines += [f"(table incomplete: {type(error).__name__}: {error})", ""]
    return "\n".join(lines)
