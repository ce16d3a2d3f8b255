"""The scripts of ``benchmarks/`` import one another as top-level modules (``peers_setup``, ...):
a test imports them with that folder on ``sys.path``."""

from __future__ import annotations

from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def benchmarks_on_path():
    """``benchmarks/`` first on ``sys.path`` for one test module, removed afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCHMARKS))
        yield BENCHMARKS
