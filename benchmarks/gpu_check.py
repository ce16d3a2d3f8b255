"""GPU evidence for vitprune in one command, ready before the GPU is.

    bash benchmarks/gpu_check.sh OUT_DIR                  # on the GPU machine: wheels, then this
    python benchmarks/gpu_check.py --tiny --out OUT_DIR    # the same code paths on CPU, seconds

Measures in bf16 on one CUDA device, random weights, every latency a median over round-robin
rounds timed with CUDA events after warm-up:

1. ``speedup``: DeiT-S and DeiT-B dense against each dimension alone and the joint policy at
   50 % and 25 % of MACs (batch 256; the joint policies also at batch 1 and 32);
2. ``seeds``: BoundaryDPT, SNP, a STAR-like schedule and Hou & Kung's configurations as vitprune
   policies, next to the papers' claims;
3. ``torch_pruning``: Torch-Pruning's timm ViT recipe at the joint policies' MACs (when its
   wheel came along);
4. ``latency_model``: the latency model fitted as a latency-budget search fits it, its held-out
   error on 12 policies and its fit time;
5. ``training``: a brief distilled fine-tune (bf16 autocast) on synthetic data, and
   ``vitprune evaluate`` end to end.

Writes ``OUT_DIR/gpu_check.json`` and ``OUT_DIR/gpu_check.md`` after every section, so a run cut
short still brings back what finished. A global time budget (``--budget-s``) skips the sections
that no longer fit and says so; a section that fails is recorded and the others still run.
Only the engine is imported (``vitprune.spaces``, ``vitprune.evaluators``), never Ray or Ax.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import time
import tomllib
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FORMAT = "vitprune.gpu_check/1"


class SourceTree(importlib.abc.MetaPathFinder):
    """Imports vitprune's packages from the repository's folders as ``pyproject.toml`` maps them
    (``vitprune.spaces`` = ``spaces/``, ...), for a machine where vitprune is not installed."""

    def __init__(self, root: Path) -> None:
        with open(root / "pyproject.toml", "rb") as file:
            package_dir = tomllib.load(file)["tool"]["setuptools"]["package-dir"]
        self.folders = {name: root / folder for name, folder in package_dir.items()}
        self.served: set[str] = set()

    def find_spec(
        self, name: str, path: Any = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        folder = self.folders.get(name)
        if folder is None:
            return None
        self.served.add(name)
        return importlib.util.spec_from_file_location(
            name, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def environment(source_tree: SourceTree | None) -> dict[str, Any]:
    import timm
    import torch

    import vitprune

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "timm": timm.__version__,
        "pydantic": _version("pydantic"),
        "torch_pruning": _version("torch-pruning"),
        "vitprune": str(Path(vitprune.__file__).resolve().parent),
        "vitprune_from": "source tree" if source_tree and "vitprune" in source_tree.served else "installed",
        "commit": _commit(),
        "cpu_count": os.cpu_count(),
    }
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        env |= {
            "device": torch.cuda.get_device_name(0),
            "device_memory_gib": round(properties.total_memory / 2**30, 1),
            "capability": f"{properties.major}.{properties.minor}",
        }
    else:
        env["device"] = f"cpu ({torch.get_num_threads()} threads)"
    return env


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="where gpu_check.json/.md go")
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU (a dry run, seconds)")
    parser.add_argument(
        "--budget-s", type=float, default=420.0, help="wall-time budget of the sections (default: 420)"
    )
    parser.add_argument("--only", nargs="+", metavar="SECTION", help="run only these sections")
    parser.add_argument(
        "--source-tree", action="store_true", help="import vitprune from this checkout, not an installed copy"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {message}", flush=True)

    source_tree = None
    if args.source_tree:
        if "vitprune" in sys.modules:
            raise RuntimeError("--source-tree: vitprune was imported before the source tree was mapped")
        source_tree = SourceTree(ROOT)
        sys.meta_path.insert(0, source_tree)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `timeout` ends us like Ctrl-C: report kept

    from gpu_report import save  # imports nothing of vitprune's

    try:
        import torch
        from gpu_lab import Lab, OutOfTime, Skipped, gpu_settings, tiny_settings
        from gpu_sections import SECTIONS
    except Exception as error:  # the engine does not import here: say why, in the report too
        log(f"error: importing the engine failed: {type(error).__name__}: {error}")
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.json").write_text(
            json.dumps(
                {
                    "format": FORMAT,
                    "finished": False,
                    "error": f"importing the engine failed: {type(error).__name__}: {error}",
                    "traceback": traceback.format_exc().splitlines()[-12:],
                    "python": platform.python_version(),
                },
                indent=1,
            )
        )
        return 1

    unknown = sorted(set(args.only or ()) - set(SECTIONS))
    if unknown:
        print(
            f"gpu_check: error: --only: unknown section {unknown[0]!r} (known: {', '.join(SECTIONS)})",
            file=sys.stderr,
        )
        return 2
    if not args.tiny and not torch.cuda.is_available():
        print(
            "gpu_check: error: no CUDA device here; --tiny runs the same code paths on the CPU",
            file=sys.stderr,
        )
        return 2
    settings = tiny_settings() if args.tiny else gpu_settings()
    if args.tiny:
        torch.set_num_threads(1)  # tiny models: a second thread only adds synchronisation
    doc: dict[str, Any] = {
        "format": FORMAT,
        "mode": "tiny" if args.tiny else "gpu",
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "finished": False,
        "wall_s": None,
        "budget_s": args.budget_s,
        "environment": environment(source_tree),
        "settings": settings.to_dict(),
        "sections": {name: {"status": "pending"} for name in SECTIONS},
    }

    def checkpoint() -> None:
        doc["wall_s"] = time.monotonic() - started
        save(doc, args.out)

    lab = Lab(settings, deadline=started + args.budget_s, log=log, checkpoint=checkpoint)
    checkpoint()
    log(f"{doc['environment']['device']}, torch {torch.__version__}; report in {args.out}")
    interrupted = False
    for name, run in SECTIONS.items():
        section = doc["sections"][name]
        expected = settings.expected_s.get(name, 0.0)
        if interrupted:
            section |= {"status": "skipped", "reason": "interrupted (time limit or Ctrl-C)"}
        elif args.only and name not in args.only:
            section |= {"status": "skipped", "reason": "not selected (--only)"}
        elif lab.left_s() < expected:
            left = max(0.0, lab.left_s())
            section |= {
                "status": "skipped",
                "reason": f"time budget: {left:.0f} s left, the section needs about {expected:.0f} s",
            }
        else:
            section["status"] = "running"
            log(f"{name}: start ({lab.left_s():.0f} s left)")
            section_started = time.monotonic()
            try:
                run(lab, section)
                section["status"] = "ok"
            except Skipped as reason:
                section |= {"status": "skipped", "reason": str(reason)}
            except OutOfTime as reason:
                section |= {"status": "partial", "reason": f"time budget: {reason}"}
            except KeyboardInterrupt:
                section |= {"status": "interrupted", "reason": "interrupted (time limit or Ctrl-C)"}
                interrupted = True
            except Exception as error:  # one failure is recorded; the other sections still run
                section |= {
                    "status": "failed",
                    "error": f"{type(error).__name__}: {error}",
                    "traceback": traceback.format_exc().splitlines()[-12:],
                }
            section["seconds"] = time.monotonic() - section_started
            note = section.get("reason") or section.get("error") or ""
            log(f"{name}: {section['status']} in {section['seconds']:.0f} s {note}")
            lab.release()
        checkpoint()
    doc["finished"] = True
    doc["imported_ray_or_ax"] = any(module in sys.modules for module in ("ray", "ax"))
    checkpoint()
    failed = [name for name, section in doc["sections"].items() if section["status"] == "failed"]
    log(
        f"done in {doc['wall_s']:.0f} s; {args.out / 'gpu_check.json'}"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed or interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
