"""`ray up` works from a bare head: search.yaml's cluster part sets a node up by itself.

The slow test runs ``ray up`` → ``ray submit search.yaml docker/ray_search.py --smoke-test`` →
``ray down`` against an sshd on 127.0.0.1 whose login shell has no Ray, no vitprune and an empty
home, all inside a PID and mount namespace of its own (``loopback_cluster.sh``), because ``ray up``
and ``ray down`` run ``ray stop``, which ends every Ray process it can see. The head's virtualenv
is installed for real, from the package index, as a user's head would get it.
"""

import contextlib
import csv
import getpass
import hashlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("loopback_cluster.sh")
# Ray's fixed default ports, which another Ray on this host may hold: the test's head gets its own.
RAY_PORTS = ("port", "ray-client-server-port", "dashboard-port", "dashboard-agent-listen-port")


def _ray_search():
    spec = importlib.util.spec_from_file_location("ray_search", ROOT / "docker" / "ray_search.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ray_search_runs_in_an_absolute_run_directory(tmp_path):
    """The default is <runs>/<name>[-smoke]; a relative --run-dir lies under <runs>, never the cwd."""
    search_argv = _ray_search().search_argv
    runs = tmp_path / "runs"
    config = ROOT / "search.yaml"
    assert search_argv(["--smoke-test", "--resume"], config=config, runs=runs) == [
        "search", str(config), "--address", "auto", "--run-dir", str(runs / "digits-50pct-macs-smoke"),
        "--smoke-test", "--resume",
    ]  # fmt: skip
    assert search_argv([], config=config, runs=runs)[-1] == str(runs / "digits-50pct-macs")
    assert search_argv(["--run-dir", "a/b"], config=config, runs=runs)[-1] == str(runs / "a" / "b")
    assert search_argv([f"--run-dir={tmp_path}/x"], config=config, runs=runs)[-1] == str(tmp_path / "x")


def test_ray_search_uses_the_spec_run_dir(tmp_path):
    doc = yaml.safe_load((ROOT / "search.yaml").read_text())
    doc["metadata"]["vitprune"]["run_dir"] = str(tmp_path / "shared" / "digits")
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(doc))
    argv = _ray_search().search_argv(["--smoke-test"], config=tmp_path / "cluster.yaml", runs=tmp_path)
    assert argv[argv.index("--run-dir") + 1] == str(tmp_path / "shared" / "digits-smoke")


def _unavailable() -> str | None:
    """Why the loopback cluster cannot run here, or None."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return "needs Linux and root (it mounts inside a namespace of its own)"
    for tool in ("unshare", "rsync", "ssh", "ssh-keygen", "python3"):
        if shutil.which(tool) is None:
            return f"needs `{tool}` on PATH"
    if not os.access("/usr/sbin/sshd", os.X_OK):
        return "needs /usr/sbin/sshd (Debian: apt-get install openssh-server)"
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        return f"cannot make a PID namespace: {probe.stderr.strip()}"
    check = "python3 -c 'import sys, ensurepip; assert sys.version_info >= (3, 11)'"
    login_python = subprocess.run(  # the python3 a bare home's login shell finds, as the head's will
        ["env", "-i", f"HOME={os.devnull}", "bash", "--login", "-c", check], capture_output=True, check=False
    )
    if login_python.returncode != 0:
        return "needs python3 >= 3.11 with its venv module (python3-venv) on the login PATH"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cluster_yaml(work: Path) -> Path:
    """search.yaml pointed at 127.0.0.1 with the test's ssh key, its head on ports of its own."""
    doc = yaml.safe_load((ROOT / "search.yaml").read_text())
    doc["cluster_name"] = f"vitprune-loopback-{os.getpid()}"
    doc["provider"] |= {"head_ip": "127.0.0.1", "worker_ips": []}
    doc["auth"] = {"ssh_user": getpass.getuser(), "ssh_private_key": str(work / "id_ed25519")}
    ports = " ".join(f"--{name}={_free_port()}" for name in RAY_PORTS)
    commands = doc["head_start_ray_commands"]
    started = [i for i, command in enumerate(commands) if "--port=6379" in command]
    assert len(started) == 1, commands  # the one `ray start --head` whose ports the test moves
    commands[started[0]] = commands[started[0]].replace("--port=6379", ports)
    path = work / "cluster.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _line(output: str, prefix: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, f"{prefix!r} in:\n{output[-3000:]}"
    return lines[0]


@pytest.mark.slow
@pytest.mark.ray
def test_ray_up_submit_down_on_a_bare_head(tmp_path):
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    work = tmp_path / "work"
    work.mkdir()
    cluster = _cluster_yaml(work)
    home = work / "home"
    doc = yaml.safe_load(cluster.read_text())
    name = doc["metadata"]["vitprune"]["name"]
    started = time.monotonic()
    try:
        done = subprocess.run(
            ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "bash", str(SCRIPT), str(work),
             str(cluster), str(Path(sys.executable).with_name("ray")), str(_free_port())],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1800, check=False,
        )  # fmt: skip
        output = done.stdout
        (work / "loopback.log").write_text(output)
        steps = [line.removeprefix("STEP ") for line in output.splitlines() if line.startswith("STEP ")]
        print(f"loopback cluster: {', '.join(steps)}; {time.monotonic() - started:.0f}s in all")
        assert done.returncode == 0, output[-4000:]
        # The head was bare: nothing of Ray or vitprune on its login PATH before `ray up` ...
        assert _line(output, "login-before:") == "login-before: ray=MISSING python=MISSING vitprune=MISSING"
        # ... and after it, the venv the setup commands made, which Ray's own processes ran from.
        venv = home / "vitprune-venv" / "bin"
        assert _line(output, "login-after:") == (
            f"login-after: ray={venv / 'ray'} python={venv / 'python'} vitprune={venv / 'vitprune'}"
        )
        assert _line(output, "raylet: ").removeprefix("raylet: ").startswith(f"{home / 'vitprune-venv'}/")
        # The smoke search ran in the documented absolute run directory on the head.
        run_dir = home / "vitprune-runs" / f"{name}-smoke"
        assert f"→ {run_dir}" in output and "best policy:" in output
        with open(run_dir / "trials.csv") as handle:
            assert len(list(csv.DictReader(handle))) == 3
        assert (run_dir / "best_policy.json").is_file()
        assert _line(output, "ray processes after down:") == "ray processes after down: 0"
    finally:
        shutil.rmtree(home / "vitprune-venv", ignore_errors=True)  # gigabytes: torch and CUDA libraries
        _remove_ssh_control_dir(doc["cluster_name"])


def _remove_ssh_control_dir(cluster_name: str) -> None:
    """The ssh ControlMaster folder the launcher keeps in /tmp (its path is Ray's, hard-coded): its
    master ended with the namespace, and only a dead socket would be left there."""
    user, cluster = (hashlib.sha256(s.encode()).hexdigest()[:10] for s in (getpass.getuser(), cluster_name))
    control = Path("/tmp") / f"ray_ssh_{user}" / cluster
    shutil.rmtree(control, ignore_errors=True)
    with contextlib.suppress(OSError):
        control.parent.rmdir()  # only when no other cluster of this user has one
