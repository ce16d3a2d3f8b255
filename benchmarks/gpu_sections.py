"""The five sections of the GPU check. Each fills its ``out`` dict (rows appear as groups finish,
and ``lab.checkpoint()`` writes them), raises :class:`~gpu_lab.Skipped` when it cannot run here
and :class:`~gpu_lab.OutOfTime` when the time budget runs out part-way."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import gpu_torch_pruning as tp_baseline
import timm
import torch
from gpu_lab import JOINT, Lab, Skipped, fit_family
from gpu_seeds import SEEDS
from gpu_timing import compare
from latency_model import policies as search_policies  # benchmarks/latency_model.py
from speedup import families
from torch.utils.data import TensorDataset

from vitprune.evaluators import apply_policy, describe, save_pruned
from vitprune.evaluators.config import DataConfig, FinetuneConfig
from vitprune.evaluators.criteria import get_criterion
from vitprune.evaluators.data import DataSplits
from vitprune.evaluators.finetune import finetune
from vitprune.evaluators.latency_model import fit_latency_model, materialize
from vitprune.evaluators.measure import latency_side_by_side
from vitprune.spaces import Policy, macs
from vitprune.spaces.space import SearchSpace


def speedup(lab: Lab, out: dict[str, Any]) -> None:
    """Dense against each dimension alone and all six jointly, at each MACs budget."""
    settings = lab.settings
    out["setup"] = (
        "benchmarks/speedup.py's families (magnitude ranking, random weights), each projected onto "
        "each budget by the search's bisection; a family that cannot reach a budget is pruned as far "
        f"as it goes (reached: false). {settings.dtype}, batch {settings.batch}; the joint policies "
        f"also at batch {', '.join(map(str, settings.small_batches))}."
    )
    rows = out.setdefault("rows", [])
    for key in settings.speedup_models:
        lab.check_time(settings.expected_s.get("speedup", 0) / 3, f"speedup {key}")
        dense = lab.dense(key)
        chosen = {
            (name, budget): fit_family(family, budget * dense.macs)
            for name, family in families(dense.base, dense.scores).items()
            for budget in settings.budgets
        }
        ids: dict[str, str] = {}  # policy JSON → model name in the timed group (no policy timed twice)
        models = {"dense": lab.place(dense.model, copy_first=True)}
        for policy, _ in chosen.values():
            if policy.to_json() not in ids:
                ids[policy.to_json()] = name = f"policy{len(ids)}"
                models[name] = lab.place(apply_policy(dense.model, policy))
        lab.log(f"speedup: {dense.label}, {len(models) - 1} distinct policies at batch {settings.batch}")
        timings = lab.time(models, settings.batch)
        for (name, budget), (policy, reached) in chosen.items():
            figures = compare(
                timings["dense"],
                timings[ids[policy.to_json()]],
                batch=settings.batch,
                macs_ratio=macs(policy) / dense.macs,
            )
            rows.append(
                {"model": dense.label, "family": name, "budget": budget, "reached": reached} | figures
            )
        joint = {f"{JOINT} {budget:.0%}": chosen[JOINT, budget] for budget in settings.budgets}
        group = {"dense": models["dense"]} | {
            label: models[ids[policy.to_json()]] for label, (policy, _) in joint.items()
        }
        for batch in settings.small_batches:
            timings = lab.time(group, batch)
            for budget, (label, (policy, reached)) in zip(settings.budgets, joint.items(), strict=True):
                figures = compare(
                    timings["dense"], timings[label], batch=batch, macs_ratio=macs(policy) / dense.macs
                )
                rows.append(
                    {"model": dense.label, "family": JOINT, "budget": budget, "reached": reached} | figures
                )
        lab.checkpoint()
        del models, group
        lab.release()


def seeds(lab: Lab, out: dict[str, Any]) -> None:
    """The seed papers' configurations against their claims (see :mod:`gpu_seeds`)."""
    settings = lab.settings
    out["claims"] = {
        seed.key: {"paper": seed.paper, "model": seed.model, "policy": seed.policy, "claim": seed.claim}
        for seed in SEEDS
    }
    rows = out.setdefault("rows", [])
    for key in dict.fromkeys(seed.model for seed in SEEDS):
        group = [seed for seed in SEEDS if seed.model == key]
        lab.check_time(settings.expected_s.get("seeds", 0) / 3, f"seeds on {key}")
        dense = lab.dense(key)
        built = {seed.key: seed.build(dense) for seed in group}
        for name, (policy, reached) in built.items():
            out.setdefault("policies", {})[name] = {
                "macs_ratio": macs(policy) / dense.macs,
                "reached": reached,
                "attention_removed": [i for i, layer in enumerate(policy.layers) if not layer.attention],
                "gelu_removed": [i for i, layer in enumerate(policy.layers) if not layer.activation],
                "summary": policy.summary(),
            }
        models = {"dense": lab.place(dense.model, copy_first=True)} | {
            name: lab.place(apply_policy(dense.model, policy)) for name, (policy, _) in built.items()
        }
        reference = None
        if any("vs_deit_tiny" in seed.claim for seed in group):  # STAR compares with DeiT-Tiny
            reference = lab.dense("deit_t")
            models["deit_t"] = lab.place(reference.model, copy_first=True)
        lab.log(f"seeds: {dense.label}, {', '.join(built)}")
        for batch in (*settings.small_batches, settings.batch):
            timings = lab.time(models, batch)
            for seed in group:
                policy, reached = built[seed.key]
                row = {"seed": seed.key, "paper": seed.paper, "model": dense.label, "reached": reached}
                row |= {"macs": macs(policy), "dense_macs": dense.macs}
                row |= compare(
                    timings["dense"], timings[seed.key], batch=batch, macs_ratio=macs(policy) / dense.macs
                )
                if reference is not None and "vs_deit_tiny" in seed.claim:
                    tiny_img_per_s = batch * 1e3 / timings["deit_t"].median_ms
                    row |= {
                        "deit_tiny_img_per_s": tiny_img_per_s,
                        "vs_deit_tiny": row["img_per_s"] / tiny_img_per_s,
                    }
                rows.append(row)
        lab.checkpoint()
        del models
        lab.release()


def torch_pruning(lab: Lab, out: dict[str, Any]) -> None:
    """Torch-Pruning's timm ViT recipe at the MACs of vitprune's joint policies."""
    settings = lab.settings
    version = tp_baseline.version()
    if version is None:
        raise Skipped("torch-pruning is not installed (no wheel for it in benchmarks/wheels/)")
    out["version"] = version
    out["recipe"] = tp_baseline.__doc__.split("\n\n")[1].replace("\n", " ").replace("``", "`")
    rows = out.setdefault("rows", [])
    checks = out.setdefault("macs_counter_check", [])
    for key in settings.tp_models:
        dense = lab.dense(key)
        dense_counted = tp_baseline.count_macs(dense.model)
        models = {"dense": lab.place(dense.model, copy_first=True)}
        found: dict[float, tuple[float, tp_baseline.Pruned]] = {}
        for budget in settings.budgets:
            lab.check_time(
                settings.expected_s.get("torch_pruning", 0) / 4, f"torch-pruning {key} {budget:.0%}"
            )
            policy, _ = lab.joint(key, budget)
            vitprune_model = apply_policy(dense.model, policy)
            counted = tp_baseline.count_macs(vitprune_model)
            checks.append(
                {
                    "model": dense.label,
                    "policy": f"{JOINT} {budget:.0%}",
                    "analytic": macs(policy),
                    "counted": counted,
                }
            )
            pruned = tp_baseline.prune_to_macs(
                dense.model, counted, dense_macs=dense_counted, max_evaluations=settings.tp_max_evaluations
            )
            lab.log(
                f"torch-pruning: {dense.label} {budget:.0%}: ratio {pruned.ratio:.3f}, "
                f"MACs {pruned.macs / dense_counted:.3f} of dense (vitprune {counted / dense_counted:.3f}), "
                f"{pruned.evaluations} prunes, {pruned.seconds:.0f} s"
            )
            found[budget] = (counted, pruned)
            models[f"vitprune {budget:.0%}"] = lab.place(vitprune_model)
            models[f"torch-pruning {budget:.0%}"] = lab.place(pruned.model)
        for batch in (*settings.small_batches, settings.batch):
            timings = lab.time(models, batch)
            for budget, (counted, pruned) in found.items():
                common = {"model": dense.label, "budget": budget, "dense_macs_counted": dense_counted}
                rows.append(
                    common
                    | {"method": "vitprune joint", "macs_counted": counted}
                    | compare(
                        timings["dense"],
                        timings[f"vitprune {budget:.0%}"],
                        batch=batch,
                        macs_ratio=counted / dense_counted,
                    )
                )
                rows.append(
                    common
                    | {"method": "torch-pruning", "macs_counted": pruned.macs, "reached": pruned.reached}
                    | {"ratio": pruned.ratio, "evaluations": pruned.evaluations, "prune_s": pruned.seconds}
                    | pruned.structure()
                    | compare(
                        timings["dense"],
                        timings[f"torch-pruning {budget:.0%}"],
                        batch=batch,
                        macs_ratio=pruned.macs / dense_counted,
                    )
                )
        lab.checkpoint()
        del models, found
        lab.release()


def latency_model(lab: Lab, out: dict[str, Any]) -> None:
    """The latency model fitted as a latency-budget search fits it, checked on held-out policies."""
    settings = lab.settings
    out["setup"] = (
        "the search's fit (search/plan.py): op tables on the aligned grid plus a whole-model power "
        "law fitted on the dense model and 6 calibration policies (seed 1), measured in one run and "
        "decoded from random points of the compact space over 25–85 % "
        f"of dense MACs; {settings.holdout} held-out policies (seed 2) measured end to end twice "
        "(noise floor: how far the two measurements differ). Goal: mean held-out error ≤ 10 %."
    )
    rows = out.setdefault("rows", [])
    for key in settings.latency_models:
        lab.check_time(settings.expected_s.get("latency_model", 0) / 2, f"latency model {key}")
        dense = lab.dense(key)
        space = SearchSpace("compact", depth=dense.base.depth)
        batch, device, dtype = settings.latency_batch, lab.device, lab.dtype
        started = time.perf_counter()
        calibration = search_policies(dense.base, dense.scores, space, seed=1, count=6)
        model = fit_latency_model(
            dense.base, batch_size=batch, device=device, dtype=dtype, calibration=calibration
        )
        fit_s = time.perf_counter() - started
        started = time.perf_counter()
        held_out = search_policies(dense.base, dense.scores, space, seed=2, count=settings.holdout)
        first, second = _measure_twice(held_out, batch=batch, device=device, dtype=dtype)
        predicted = [model.predict(policy) for policy in held_out]
        errors = [abs(p - m) / m for p, m in zip(predicted, first, strict=True)]
        noise = statistics.mean(abs(a - b) / b for a, b in zip(first, second, strict=True))
        mean_error = statistics.mean(errors)
        lab.log(
            f"latency model: {dense.label}: held-out error {mean_error:.1%} "
            f"(max {max(errors):.1%}), fit {fit_s:.0f} s"
        )
        rows.append(
            {
                "model": dense.label,
                "batch": batch,
                "dtype": settings.dtype,
                "mean_error": mean_error,
                "max_error": max(errors),
                "noise_floor": noise,
                "fit_s": fit_s,
                "check_s": time.perf_counter() - started,
                "goal": 0.10,
                "goal_met": mean_error <= 0.10,
                "factor": model.correction[1],
                "exponent": model.exponent,
                "dense_ms": model.dense_ms,
                "fixed_ms": model.fixed_ms,
                "held_out": [
                    {
                        "macs_ratio": macs(policy) / dense.macs,
                        "measured_ms": m,
                        "predicted_ms": p,
                        "again_ms": a,
                    }
                    for policy, m, p, a in zip(held_out, first, predicted, second, strict=True)
                ],
            }
        )
        lab.checkpoint()
        lab.release()


def _measure_twice(
    policies: list[Policy], *, batch: int, device: torch.device, dtype: torch.dtype
) -> tuple[list[float], list[float]]:
    """Two measurements of each policy as ``measure_policies`` takes one (random weights, side by
    side, its warm-up and repeats), from one set of models: materializing a model on the meta device
    costs more CPU time than measuring it."""
    models = {str(i): materialize(policy, device=device, dtype=dtype) for i, policy in enumerate(policies)}
    first, second = (
        latency_side_by_side(models, batch_size=batch, device=device, dtype=dtype, warmup=2, repeats=5)
        for _ in range(2)
    )
    return [first[name].median_ms for name in models], [second[name].median_ms for name in models]


def _synthetic_splits(dense_base: Any, *, images: int, batch: int, pin_memory: bool) -> DataSplits:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(images, dense_base.in_chans, *dense_base.model_args["img_size"], generator=generator)
    y = torch.randint(0, dense_base.num_classes, (images,), generator=generator)
    data = TensorDataset(x, y)
    config = DataConfig(batch_size=batch, pin_memory=pin_memory)
    return DataSplits(
        train=data,
        search_val=data,
        test=data,
        num_classes=dense_base.num_classes,
        config=config,
        train_clean=data,
    )


def training(lab: Lab, out: dict[str, Any]) -> None:
    """A brief distilled fine-tune on the device (bf16 autocast on CUDA), then ``vitprune evaluate``."""
    settings = lab.settings
    dense = lab.dense("deit_s")
    policy, _ = lab.joint("deit_s", settings.budgets[0])
    student = apply_policy(dense.model, policy)
    teacher = copy.deepcopy(dense.model)  # finetune moves it to the device; the lab's copy stays
    data = _synthetic_splits(
        dense.base,
        images=settings.finetune_images,
        batch=settings.finetune_batch,
        pin_memory=lab.device.type == "cuda",
    )
    config = FinetuneConfig(steps=settings.finetune_steps, lr=1e-4)
    lab.log(
        f"training: {settings.finetune_steps} steps of {dense.label} {JOINT}, batch {settings.finetune_batch}"
    )
    result = finetune(student, data=data, config=config, teacher=teacher, device=lab.device)
    later = result.history[1:]  # the first epoch carries the warm-up (kernel selection, allocator)
    steady_steps = result.steps - result.history[0].steps
    losses = [epoch.train_loss for epoch in result.history]
    out["finetune"] = {
        "model": f"{dense.label} {JOINT} {settings.budgets[0]:.0%}",
        "device": str(lab.device),
        "autocast": "bfloat16" if lab.device.type == "cuda" else None,
        "kd": "soft, from the dense model",
        "batch": settings.finetune_batch,
        "steps": result.steps,
        "seconds": result.seconds,
        "steps_per_s": result.steps / result.seconds,
        "steady_steps_per_s": steady_steps / sum(e.seconds for e in later) if later else None,
        "images_per_s": result.steps * settings.finetune_batch / result.seconds,
        "epoch_losses": losses,
        "loss_finite": all(math.isfinite(loss) for loss in losses),
        "weights_finite": all(bool(torch.isfinite(p).all()) for p in student.parameters()),
    }
    lab.checkpoint()
    del student, teacher
    lab.release()
    out["evaluate"] = _evaluate(lab)


def _evaluate(lab: Lab) -> dict[str, Any]:
    """``vitprune evaluate`` on the digits ViT (random weights: accuracy is chance), through the CLI."""
    from vitprune.cli import main as vitprune_main

    name = "vitprune_digits_vit"
    torch.manual_seed(0)
    dense = timm.create_model(name, pretrained=False).eval()
    base = describe(dense, name=name)
    keep_all = Policy.keep_all(base)
    scores = get_criterion("magnitude")(dense, base=base)
    policy, _ = fit_family(families(base, scores)[JOINT], lab.settings.budgets[0] * macs(keep_all))
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        dense_dir, pruned_dir = Path(work) / "dense", Path(work) / "pruned"
        save_pruned(apply_policy(dense, keep_all), keep_all, dense_dir)
        save_pruned(apply_policy(dense, policy), policy, pruned_dir)
        argv = ["evaluate", str(pruned_dir), "--dense", str(dense_dir), "--data", "digits"]
        argv += ["--finetune-epochs", "1", "--device", lab.device.type, "--batch-size", "32"]
        lab.log("training: vitprune " + " ".join(argv))
        started, stdout, stderr = time.perf_counter(), io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                status = vitprune_main(argv)
            except SystemExit as exit_info:  # argparse's usage errors must not end the check
                status = exit_info.code
        seconds = time.perf_counter() - started
    if status != 0:
        raise RuntimeError(
            f"vitprune evaluate exited with status {status}: {stderr.getvalue().strip()[-500:]}"
        )
    return {
        "command": "vitprune evaluate PRUNED --dense DENSE " + " ".join(argv[4:]),
        "seconds": seconds,
        "report": json.loads(stdout.getvalue()),
        "imported_ray_or_ax": any(module in sys.modules for module in ("ray", "ax")),
    }


SECTIONS = {
    "speedup": speedup,
    "seeds": seeds,
    "torch_pruning": torch_pruning,
    "latency_model": latency_model,
    "training": training,
}
