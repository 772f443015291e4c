#!/usr/bin/env bash
# Start a local SLURM cluster for testing icg's multi-node path: munged, slurmctld and one slurmd per node.
#
# netns mode (default where `ip netns` works): nodes node1..nodeN are network namespaces, each with its own
# hostname (unshare --uts), an address ICG_SLURM_SUBNET.(10+i) on a private bridge, and its own slurmd
# (`slurmd -N nodeI`); slurmctld listens on the bridge address ICG_SLURM_SUBNET.1. Name resolution inside the
# namespaces comes from /etc/netns/<ns>/hosts, which `ip netns exec` bind-mounts over /etc/hosts, so the
# machine's own /etc/hosts is never edited. local mode: one node named after this machine (`hostname -s`, which
# must resolve, as the DDP master address is the first node's name) on 127.0.0.1 with ICG_SLURM_CPUS CPUs.
#
# Every daemon, namespace, link and file made here is listed in $ICG_SLURM_DIR/state; cluster_down.sh undoes
# exactly that list. On success prints the line to source: `source $ICG_SLURM_DIR/env.sh` (sets SLURM_CONF).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/common.sh"
need_root
for bin in munged munge slurmctld slurmd sinfo ip unshare runuser; do
  command -v "$bin" >/dev/null || die "'$bin' not found; run scripts/slurm/install.sh first"
done
[ -e "$STATE_FILE" ] && die "a cluster is already up (see $STATE_FILE); run scripts/slurm/cluster_down.sh first"

t0=$(date +%s%N)
record() { echo "$*" >>"$STATE_FILE"; }
# A failure half-way leaves nothing behind: undo whatever was recorded so far.
trap 'rc=$?; if [ $rc -ne 0 ]; then log "cluster_up failed (exit $rc), undoing"; "$HERE/cluster_down.sh" || true; fi' EXIT

if [ "$ICG_SLURM_MODE" = auto ]; then
  if ip netns add "${ICG_SLURM_NS_PREFIX}probe" 2>/dev/null; then
    ip netns del "${ICG_SLURM_NS_PREFIX}probe"
    ICG_SLURM_MODE=netns
  else
    log "network namespaces cannot be made here: falling back to one node on 127.0.0.1"
    ICG_SLURM_MODE=local
  fi
fi
case "$ICG_SLURM_MODE" in
  netns) ;;
  local)
    ICG_SLURM_NODES=1
    getent hosts "$(hostname -s)" >/dev/null || die "local mode: this machine's name $(hostname -s) does not resolve"
    ;;
  *) die "ICG_SLURM_MODE must be auto, netns or local, got '$ICG_SLURM_MODE'" ;;
esac

mkdir -p "$ICG_SLURM_DIR"
chmod 0755 "$ICG_SLURM_DIR"
runuser -u munge -- test -x "$ICG_SLURM_DIR" ||
  die "the munge user cannot enter $ICG_SLURM_DIR: every folder above it must be searchable by others (o+x)"
rm -rf "${ICG_SLURM_DIR:?}"/{etc,munge,ctld,spool,run,log,env.sh}
mkdir -p "$ICG_SLURM_DIR"/{etc,munge,ctld,run,log}
node_name() { if [ "$ICG_SLURM_MODE" = netns ]; then echo "node$1"; else hostname -s; fi; }
for i in $(seq "$ICG_SLURM_NODES"); do mkdir -p "$ICG_SLURM_DIR/spool/$(node_name "$i")"; done
: >"$STATE_FILE"
record "mode $ICG_SLURM_MODE"

# --- munge: a fresh key and our own munged, running as the munge user like a real install ---
chown munge:munge "$ICG_SLURM_DIR/munge"
chmod 0700 "$ICG_SLURM_DIR/munge"
dd if=/dev/urandom of="$ICG_SLURM_DIR/munge/munge.key" bs=1024 count=1 status=none
chown munge:munge "$ICG_SLURM_DIR/munge/munge.key"
chmod 0400 "$ICG_SLURM_DIR/munge/munge.key"
MUNGE_SOCKET="$ICG_SLURM_DIR/munge/munge.socket"
# --force: munged refuses sockets under a world-writable parent such as /tmp unless told it is fine.
runuser -u munge -- munged --force \
  --key-file="$ICG_SLURM_DIR/munge/munge.key" --socket="$MUNGE_SOCKET" \
  --pid-file="$ICG_SLURM_DIR/munge/munged.pid" --log-file="$ICG_SLURM_DIR/munge/munged.log" \
  --seed-file="$ICG_SLURM_DIR/munge/munged.seed"
for _ in $(seq 50); do [ -s "$ICG_SLURM_DIR/munge/munged.pid" ] && [ -S "$MUNGE_SOCKET" ] && break; sleep 0.1; done
record "pid $(cat "$ICG_SLURM_DIR/munge/munged.pid") munged"
munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET" >/dev/null || die "munge round trip failed, see $ICG_SLURM_DIR/munge/munged.log"
log "munged up"

# --- hosts: namespaces on a private bridge, or loopback ---
CTLD_HOST=$(hostname -s)
if [ "$ICG_SLURM_MODE" = netns ]; then
  CTLD_ADDR="$ICG_SLURM_SUBNET.1"
  ip link add "$ICG_SLURM_BRIDGE" type bridge
  record "link $ICG_SLURM_BRIDGE"
  ip addr add "$CTLD_ADDR/24" dev "$ICG_SLURM_BRIDGE"
  ip link set "$ICG_SLURM_BRIDGE" up
  hosts="127.0.0.1 localhost"$'\n'"$CTLD_ADDR $CTLD_HOST"
  for i in $(seq "$ICG_SLURM_NODES"); do hosts+=$'\n'"$ICG_SLURM_SUBNET.$((10 + i)) node$i"; done
  [ -d /etc/netns ] || { mkdir /etc/netns; record "dir /etc/netns"; }
  for i in $(seq "$ICG_SLURM_NODES"); do
    ns="${ICG_SLURM_NS_PREFIX}node$i"
    ip netns add "$ns"
    record "netns $ns"
    ip link add "icgsl-h$i" type veth peer name "icgsl-n$i"
    record "link icgsl-h$i"
    ip link set "icgsl-n$i" netns "$ns"
    ip link set "icgsl-h$i" master "$ICG_SLURM_BRIDGE"
    ip link set "icgsl-h$i" up
    ip netns exec "$ns" ip addr add "$ICG_SLURM_SUBNET.$((10 + i))/24" dev "icgsl-n$i"
    ip netns exec "$ns" ip link set "icgsl-n$i" up
    ip netns exec "$ns" ip link set lo up
    mkdir -p "/etc/netns/$ns"
    record "dir /etc/netns/$ns"
    printf '%s\n' "$hosts" >"/etc/netns/$ns/hosts"
    record "file /etc/netns/$ns/hosts"
  done
  log "namespaces up: $(for i in $(seq "$ICG_SLURM_NODES"); do printf 'node%s=%s ' "$i" "$ICG_SLURM_SUBNET.$((10 + i))"; done)"
else
  CTLD_ADDR=127.0.0.1
fi

# --- slurm.conf ---
sed -e "s|@DIR@|$ICG_SLURM_DIR|g" -e "s|@CTLD_HOST@|$CTLD_HOST|g" -e "s|@CTLD_ADDR@|$CTLD_ADDR|g" \
  -e "s|@CTLD_PORT@|$ICG_SLURM_CTLD_PORT|g" -e "s|@SLURMD_PORT@|$ICG_SLURM_SLURMD_PORT|g" \
  "$HERE/slurm.conf.in" >"$SLURM_CONF_FILE"
for i in $(seq "$ICG_SLURM_NODES"); do
  if [ "$ICG_SLURM_MODE" = netns ]; then addr="$ICG_SLURM_SUBNET.$((10 + i))"; else addr=127.0.0.1; fi
  echo "NodeName=$(node_name "$i") NodeHostname=$(node_name "$i") NodeAddr=$addr CPUs=$ICG_SLURM_CPUS Gres=gpu:$ICG_SLURM_GPUS State=UNKNOWN" >>"$SLURM_CONF_FILE"
done
# Stand-in GPUs: the sbatch templates ask for --gpus-per-node, and this CPU cluster must accept and schedule that
# request as a GPU cluster would (the tests then stack the CPU/gloo trainer fragment). slurmd counts a GPU only
# through a character device in gres.conf, so each one is a node with /dev/null's numbers (1, 3) in our folder;
# nothing opens them, and task/none binds nothing.
mkdir -p "$ICG_SLURM_DIR/dev"
for g in $(seq 0 $((ICG_SLURM_GPUS - 1))); do
  [ -e "$ICG_SLURM_DIR/dev/gpu$g" ] || mknod "$ICG_SLURM_DIR/dev/gpu$g" c 1 3
done
echo "Name=gpu File=$ICG_SLURM_DIR/dev/gpu[0-$((ICG_SLURM_GPUS - 1))]" >"$(dirname "$SLURM_CONF_FILE")/gres.conf"
echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP" >>"$SLURM_CONF_FILE"
export SLURM_CONF="$SLURM_CONF_FILE"
echo "export SLURM_CONF=$SLURM_CONF_FILE" >"$ICG_SLURM_DIR/env.sh"

# --- daemons (foreground mode in the background, so $! is the daemon's own pid) ---
slurmctld -D -c -f "$SLURM_CONF" >"$ICG_SLURM_DIR/log/slurmctld.stdout" 2>&1 </dev/null &
record "pid $! slurmctld"
for i in $(seq "$ICG_SLURM_NODES"); do
  if [ "$ICG_SLURM_MODE" = netns ]; then
    # nsenter, unshare and sh all exec in place, so $! is slurmd's pid, inside node$i's net, uts and mount
    # namespaces. Not `ip netns exec`: it remounts /sys, which hides /sys/fs/cgroup and slurmd then refuses to
    # start. The private mount namespace carries node$i's /etc/hosts (a bind mount, the file stays untouched).
    nsenter --net="/run/netns/${ICG_SLURM_NS_PREFIX}node$i" unshare --uts --mount --propagation private \
      sh -c "mount --bind '/etc/netns/${ICG_SLURM_NS_PREFIX}node$i/hosts' /etc/hosts && hostname node$i \
             && exec slurmd -D -N node$i -f '$SLURM_CONF'" \
      >"$ICG_SLURM_DIR/log/slurmd-node$i.stdout" 2>&1 </dev/null &
  else
    slurmd -D -N "$(node_name "$i")" -f "$SLURM_CONF" >"$ICG_SLURM_DIR/log/slurmd-local.stdout" 2>&1 </dev/null &
  fi
  record "pid $! slurmd"
done
daemons_alive() {  # every daemon recorded so far still runs
  local kind pid _
  while read -r kind pid _; do
    [ "$kind" = pid ] && { [ -d "/proc/$pid" ] || return 1; }
  done <"$STATE_FILE"
  return 0
}

# --- wait until every node is idle ---
for _ in $(seq 120); do
  states=$(sinfo -h -N -o '%N=%T' 2>/dev/null | sort -u | tr '\n' ' ' || true)
  idle=$(grep -o '=idle' <<<"$states" | wc -l || true)
  [ "$idle" -eq "$ICG_SLURM_NODES" ] && break
  daemons_alive || { states="a daemon exited"; break; }
  sleep 0.5
done
[ "$idle" -eq "$ICG_SLURM_NODES" ] || {
  tail -n 20 "$ICG_SLURM_DIR"/log/*.log "$ICG_SLURM_DIR"/log/*.stdout >&2 || true
  die "nodes not idle after 60 s: ${states:-no answer from slurmctld}"
}
log "cluster up in $(( ($(date +%s%N) - t0) / 1000000 )) ms, mode $ICG_SLURM_MODE: $states"
echo "source $ICG_SLURM_DIR/env.sh"
