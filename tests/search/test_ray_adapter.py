"""Ray internals vitprune uses still exist; connection failures are one line, at once."""

import importlib
import socket

import pytest

from vitprune.search import ray_adapter
from vitprune.search.lifecycle import connect
from vitprune.spaces import InputError


def test_the_private_ray_helper_vitprune_calls_exists():
    module = importlib.import_module(ray_adapter.TOKEN_SETUP)
    assert hasattr(module, "maybe_enable_token_auth_if_token_available"), (
        f"{ray_adapter.TOKEN_SETUP} moved: update vitprune/search/ray_adapter.py before raising the Ray pin"
    )


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("nonsense", "--address nonsense: expected auto or HOST:PORT"),
        ("127.0.0.1:{port}", "--address 127.0.0.1:{port}: nothing answers there (Connection refused)"),
        ("no-such-host.invalid:6379", "--address no-such-host.invalid:6379: nothing answers there"),
    ],
)
def test_a_ray_address_that_does_not_answer_is_one_line_at_once(address, message, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(InputError) as raised:
        connect(address.format(port=port))
    assert str(raised.value).startswith(message.format(port=port)) and "\n" not in str(raised.value)
