#!/usr/bin/env bash
# A bare head on 127.0.0.1 for tests/search/test_cluster_slow.py:
#   ray up -> ray submit CLUSTER docker/ray_search.py --smoke-test -> ray down
# against an sshd of its own. Run it ONLY as PID 1 of a namespace of its own, from the repository
# root (the cluster's file mounts are relative to it):
#   unshare --pid --fork --kill-child --mount-proc bash tests/search/loopback_cluster.sh \
#       WORK CLUSTER_YAML RAY SSH_PORT
# `ray up` and `ray down` run `ray stop`, which ends every Ray process it can see; here it sees only
# this namespace's. The private mount namespace also gets
#   - its own /tmp/ray, so this cluster never becomes another Ray user's `address="auto"`;
#   - an /etc/passwd in which this user's home is WORK/home, so the head starts bare: no dotfiles,
#     no ~/.ray/auth_token, the login PATH of /etc/profile.
# WORK must exist; the keys, logs, the head's home (venv, run directory) are made in it.
set -euo pipefail
if [ "$$" != 1 ]; then
    echo "loopback_cluster.sh: run me as: unshare --pid --fork --kill-child --mount-proc bash $0 ..." >&2
    exit 2
fi
work=$1 cluster=$2 ray=$3 port=$4
user=$(id -un)
home=$work/home

mkdir -p "$home/.ssh" "$work/tmp-ray" /tmp/ray /run/sshd
chmod 700 "$home" "$home/.ssh"
mount --bind "$work/tmp-ray" /tmp/ray
awk -F: -v OFS=: -v user="$user" -v home="$home" '$1 == user { $6 = home } 1' /etc/passwd >"$work/passwd"
mount --bind "$work/passwd" /etc/passwd
export HOME=$home
mkdir -p "$work/tmp"
export TMPDIR=$work/tmp  # the launcher's temporary files and config cache (ray-config-*) stay in WORK

ssh-keygen -q -t ed25519 -N '' -f "$work/ssh_host_ed25519_key"
ssh-keygen -q -t ed25519 -N '' -f "$work/id_ed25519"
cp "$work/id_ed25519.pub" "$home/.ssh/authorized_keys"
# Ray's ssh commands have no port option: the client config of this (namespaced) home gives it.
printf 'Host 127.0.0.1\n    Port %s\n' "$port" >"$home/.ssh/config"
cat >"$work/sshd_config" <<EOF
ListenAddress 127.0.0.1
Port $port
HostKey $work/ssh_host_ed25519_key
PidFile $work/sshd.pid
AuthorizedKeysFile $home/.ssh/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
PrintMotd no
EOF
/usr/sbin/sshd -D -e -f "$work/sshd_config" 2>"$work/sshd.log" &

# A command in the head's login shell, the way Ray's command runner starts one.
login() {
    ssh -i "$work/id_ed25519" -o BatchMode=yes -o StrictHostKeyChecking=no \
        -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR "$user@127.0.0.1" \
        "bash --login -i -c 'source ~/.bashrc 2>/dev/null; $1'" 2>/dev/null
}
for _ in $(seq 50); do login true && break || sleep 0.2; done
login true || { echo "sshd on 127.0.0.1:$port does not answer:" >&2; cat "$work/sshd.log" >&2; exit 1; }
path_of() { login "command -v $1 || echo MISSING"; }
echo "login-before: ray=$(path_of ray) python=$(path_of python) vitprune=$(path_of vitprune)"

step() {
    local name=$1 started=$SECONDS
    shift
    "$@"
    echo "STEP $name $((SECONDS - started))s"
}
step up "$ray" up -y --no-config-cache --disable-usage-stats --log-style record "$cluster"
echo "login-after: ray=$(path_of ray) python=$(path_of python) vitprune=$(path_of vitprune)"
raylet=$(pgrep -xo raylet || true)
echo "raylet: $(readlink -f "/proc/${raylet:-none}/exe" || echo NONE)"
step submit "$ray" submit --no-config-cache --log-style record "$cluster" docker/ray_search.py --smoke-test
step down "$ray" down -y --log-style record "$cluster"
ray_processes() { ps -eo comm= | grep -cxE 'raylet|gcs_server' || true; }
for _ in $(seq 20); do
    [ "$(ray_processes)" = 0 ] && break
    sleep 0.5
done
echo "ray processes after down: $(ray_processes)"
