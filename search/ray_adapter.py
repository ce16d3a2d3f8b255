"""Every use of Ray internals, in one place (the Ray counterpart of ``ax_adapter``).

Ray 2.60 turns on token authentication for a driver by itself only when it joins with
``address="auto"``. A driver given an explicit ``HOST:PORT`` of a cluster with token
authentication fails after 20 retries (``ConnectionError``, the cause being ``InvalidAuthToken``),
and setting ``RAY_AUTH_MODE=token`` after ``import ray`` has no effect, because Ray has cached its
configuration. Ray's own helper, which ``address="auto"`` runs, enables token mode and refreshes
that configuration. ``tests/search/test_ray_adapter.py`` fails loudly if an upgrade moves it.
"""

from __future__ import annotations

TOKEN_SETUP = "ray._private.authentication.authentication_token_setup"


def enable_token_auth_if_available() -> None:
    """Token mode for this driver when the machine has a token (``~/.ray/auth_token``,
    ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``) and ``RAY_AUTH_MODE`` is unset. A cluster
    without token authentication accepts a driver in token mode."""
    import importlib

    setup = importlib.import_module(TOKEN_SETUP)
    setup.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
