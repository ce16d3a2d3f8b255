"""Run the search carried by the cluster YAML itself, on the cluster's head node.

    ray up search.yaml                                     # from the repository root
    ray submit search.yaml docker/ray_search.py            # extra args go to `vitprune search`
    ray submit search.yaml docker/ray_search.py --smoke-test
    ray submit search.yaml docker/ray_search.py --run-dir /mnt/shared/vitprune-runs/x

Ray copies the cluster YAML to the head node as ~/ray_bootstrap_config.yaml, with the free-form
`metadata` key intact; vitprune reads its spec from `metadata.vitprune` and joins the running
cluster (--address auto), so every trial is dispatched to the cluster's nodes.

The run directory is always absolute, and `vitprune search` logs it first: ``--run-dir`` if given,
else ``metadata.vitprune.run_dir``, else ``<name>`` (``<name>-smoke`` with ``--smoke-test``); a
relative one lies under ``~/vitprune-runs`` on the head, never in whatever folder ``ray submit``
happens to run in. With worker nodes it must be on a file system that every node mounts at the
same path (NFS, ...): trials write their results into it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

CONFIG = Path.home() / "ray_bootstrap_config.yaml"
RUNS = Path.home() / "vitprune-runs"


def search_argv(argv: Sequence[str], *, config: Path = CONFIG, runs: Path = RUNS) -> list[str]:
    """The ``vitprune search`` arguments for ``ray_search.py ARGV``: the cluster's spec, joined with
    ``--address auto``, and an absolute ``--run-dir``."""
    from vitprune.search.spec import load_spec

    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--run-dir", type=Path)
    parser.add_argument("--smoke-test", action="store_true")
    known, rest = parser.parse_known_args(argv)
    run_dir = known.run_dir
    if run_dir is None:
        spec, _ = load_spec(config)
        run_dir = spec.run_dir or Path(spec.name)
        if known.smoke_test:  # as `vitprune search --smoke-test` does: never mix a smoke run into a real one
            run_dir = run_dir.with_name(run_dir.name + "-smoke")
    run_dir = runs / run_dir.expanduser()  # an absolute path replaces `runs`
    smoke = ["--smoke-test"] if known.smoke_test else []
    return ["search", str(config), "--address", "auto", "--run-dir", str(run_dir), *smoke, *rest]


if __name__ == "__main__":
    from vitprune.cli import main
    from vitprune.spaces import InputError

    try:
        args = search_argv(sys.argv[1:])
    except InputError as error:  # a bad or missing cluster YAML: one line, as the CLI reports it
        print(f"vitprune: error: {error}", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(args))
