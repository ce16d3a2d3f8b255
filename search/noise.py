"""Third-party output a vitprune user cannot act on, silenced once per process.

- Ax logs every generated trial at INFO, and announces its SQL storage when the storage module is
  imported (``Ax SQL storage initialized with SQLAlchemy ...``): its stderr handler goes to ERROR
  before anything imports that module.
- BoTorch, GPyTorch, pandas 3 and Ray emit deprecation warnings on every step.
- Ray announces ``Started a local Ray instance`` and warns that token authentication is enabled
  (it is, on purpose, for the private cluster a search starts).

vitprune's own progress lines say what matters; ``search.log`` keeps vitprune's log.
"""

from __future__ import annotations

import logging
import os
import warnings

_done = False


def quiet_third_party() -> None:
    """Silence the output listed in the module docstring (idempotent)."""
    global _done
    if _done:
        return
    _done = True
    for module in ("ax", "botorch", "gpytorch", "linear_operator", "pandas", "ray", "torch.jit"):
        warnings.filterwarnings("ignore", module=module)
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.script.*")
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)  # the storage module logs at import, before its level can be set
    try:
        from ax.utils.common.logger import set_stderr_log_level
    finally:
        logging.disable(previous)
    set_stderr_log_level(logging.ERROR)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter honours verbose=0
    for name, level in (
        ("ray.tune", logging.WARNING),
        ("ray._private.worker", logging.WARNING),
        ("ray._private.authentication.authentication_token_setup", logging.ERROR),
    ):
        logging.getLogger(name).setLevel(level)
