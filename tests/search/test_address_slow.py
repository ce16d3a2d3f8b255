"""Slow: `--address HOST:PORT` joins a cluster started with `ray start --head` and token
authentication (Ray 2.60's default once a token exists), and says in one line what is missing when
this machine has no token. Runs in its own PID and mount namespaces (its `ray stop` ends nothing
else)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]

SCRIPT = Path(__file__).with_name("token_cluster.sh")


@pytest.mark.skipif(
    shutil.which("unshare") is None or os.geteuid() != 0, reason="needs root and unshare for namespaces"
)
def test_an_explicit_address_joins_a_token_cluster_or_says_what_is_missing(tmp_path):
    done = subprocess.run(
        [
            "unshare",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "bash",
            str(SCRIPT),
            sys.executable,
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    assert lines.get("with token") == "joined 1 CPU", done.stdout + done.stderr
    assert (
        lines.get("without token", "").startswith("error: --address 127.0.0.1:")
        and "requires token authentication and this machine has no matching token" in lines["without token"]
    )
