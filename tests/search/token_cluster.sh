#!/usr/bin/env bash
# Run by tests/search/test_address_slow.py as
#   unshare --pid --fork --kill-child --mount-proc bash token_cluster.sh PYTHON WORK
# A Ray head with token authentication (`ray start --head`, the way a user starts a cluster), then
# vitprune's connect() to it by explicit HOST:PORT: with this machine's token, and without one.
# The PID and mount namespaces are private: `ray stop` here touches no other Ray on the host.
set -u
python=$1 work=$2
ray=$(dirname "$python")/ray
mkdir -p "$work/tmp-ray" "$work/home" "$work/empty"
mount --bind "$work/tmp-ray" /tmp/ray
export HOME="$work/home"
port=$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$ray" get-auth-token --generate >/dev/null 2>&1  # token authentication on, as after any local ray.init()
"$ray" start --head --port="$port" --num-cpus=1 --include-dashboard=false --disable-usage-stats \
    >"$work/start.log" 2>&1 || { echo "ray start failed"; cat "$work/start.log"; exit 3; }
probe='
import sys
from vitprune.search.lifecycle import connect
from vitprune.spaces import InputError
try:
    connect(sys.argv[1])
    import ray
    print("joined", int(ray.cluster_resources().get("CPU", 0)), "CPU")
except InputError as error:
    print("error:", error)
'
echo "with token: $("$python" -c "$probe" "127.0.0.1:$port" 2>>"$work/driver.log" | tail -1)"
echo "without token: $(HOME="$work/empty" "$python" -c "$probe" "127.0.0.1:$port" 2>>"$work/driver.log" | tail -1)"
"$ray" stop --force >/dev/null 2>&1
