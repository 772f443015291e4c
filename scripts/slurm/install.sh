#!/usr/bin/env bash
# Install Debian's SLURM (slurm-wlm: slurmctld, slurmd, client tools) and munge for the local test cluster.
# Idempotent: does nothing when every binary is already there. Needs root and the Debian package registry.
set -euo pipefail
source "$(dirname "$0")/common.sh"
need_root

missing=()
for bin in munged slurmctld slurmd srun sbatch scontrol ip unshare runuser; do
  command -v "$bin" >/dev/null || missing+=("$bin")
done
if [ ${#missing[@]} -eq 0 ]; then
  log "slurm-wlm, munge and iproute2 already installed ($(slurmctld -V))"
  exit 0
fi
log "missing: ${missing[*]}; installing slurm-wlm munge iproute2"
start=$(date +%s%N)
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  slurm-wlm munge iproute2 util-linux >/dev/null
# Debian's packages enable services; in a container without systemd nothing starts, elsewhere we stop them so
# the system munged/slurmd do not hold the ports and socket the local cluster uses.
if command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
  systemctl stop slurmd slurmctld munge 2>/dev/null || true
fi
log "installed $(slurmctld -V) in $(( ($(date +%s%N) - start) / 1000000 )) ms"
