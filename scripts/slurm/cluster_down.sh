#!/usr/bin/env bash
# Stop the local SLURM cluster started by cluster_up.sh and undo exactly what it made (listed in
# $ICG_SLURM_DIR/state): cancel jobs, stop slurmd/slurmctld/munged by pid, end the processes left in our
# namespaces, delete namespaces, links and /etc/netns entries. Logs stay in $ICG_SLURM_DIR/log unless --purge.
# Safe to run twice, and after a half-finished cluster_up.sh.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/common.sh"
need_root
purge=0
[ "${1:-}" = --purge ] && purge=1
if [ ! -e "$STATE_FILE" ]; then
  log "no cluster state in $ICG_SLURM_DIR: nothing to stop"
  [ $purge = 1 ] && rm -rf "${ICG_SLURM_DIR:?}"
  exit 0
fi
t0=$(date +%s%N)
export SLURM_CONF="$SLURM_CONF_FILE"

# Cancel jobs while the daemons still run, so job steps end cleanly.
if grep -q ' slurmctld$' "$STATE_FILE" && [ -e "$SLURM_CONF" ]; then
  jobs=$(timeout 10 squeue -h -o %A 2>/dev/null | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    log "cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    timeout 10 scancel $jobs 2>/dev/null
    for _ in $(seq 30); do [ -z "$(timeout 5 squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.5; done
  fi
fi

stop_pid() {  # stop_pid PID NAME: TERM, wait up to 10 s, then KILL; only if the pid still runs NAME.
  local pid=$1 name=$2
  [ -r "/proc/$pid/comm" ] || return 0
  [ "$(cat "/proc/$pid/comm")" = "$name" ] || { log "pid $pid is no longer $name, left alone"; return 0; }
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 100); do [ -r "/proc/$pid/comm" ] || return 0; sleep 0.1; done
  log "$name ($pid) ignored SIGTERM, killing"
  kill -KILL "$pid" 2>/dev/null
}

# Undo in reverse order of creation.
tac "$STATE_FILE" | while read -r kind a b; do
  case "$kind" in
    pid) stop_pid "$a" "$b" ;;
    netns)
      # Whatever still runs in a namespace we made (job steps, tasks) is ours: end it before deleting it.
      pids=$(ip netns pids "$a" 2>/dev/null | tr '\n' ' ')
      if [ -n "${pids// /}" ]; then
        log "ending processes left in $a: $pids"
        # shellcheck disable=SC2086
        kill -TERM $pids 2>/dev/null; sleep 1
        pids=$(ip netns pids "$a" 2>/dev/null | tr '\n' ' ')
        # shellcheck disable=SC2086
        [ -n "${pids// /}" ] && kill -KILL $pids 2>/dev/null
      fi
      ip netns del "$a" 2>/dev/null || log "could not delete namespace $a"
      ;;
    link) ip link del "$a" 2>/dev/null ;;
    file) rm -f "$a" ;;
    dir) rmdir "$a" 2>/dev/null || log "left $a (not empty)" ;;
    mode) ;;
    *) log "unknown state line: $kind $a $b" ;;
  esac
done
rm -f "$STATE_FILE"
if [ $purge = 1 ]; then rm -rf "${ICG_SLURM_DIR:?}"; fi
log "cluster down in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
