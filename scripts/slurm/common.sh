# Shared settings of the local SLURM test cluster; sourced by install.sh, cluster_up.sh and cluster_down.sh.
#
# Everything lives under ICG_SLURM_DIR (config, munge key and socket, spool, state, logs, pids), so the cluster
# never touches /etc/slurm or the system munge. In "netns" mode the two compute hosts are network namespaces
# with their own hostname (node1, node2) and address on a private bridge that only these scripts create.

ICG_SLURM_DIR=${ICG_SLURM_DIR:-/tmp/icg-slurm}
# netns: two hosts in network namespaces (default where they can be made); local: one node on 127.0.0.1.
ICG_SLURM_MODE=${ICG_SLURM_MODE:-auto}
# A /24 that nothing else on this machine uses; the bridge takes .1, nodeN takes .(10+N).
ICG_SLURM_SUBNET=${ICG_SLURM_SUBNET:-10.213.7}
ICG_SLURM_NODES=${ICG_SLURM_NODES:-2}
ICG_SLURM_CPUS=${ICG_SLURM_CPUS:-2}
# stand-in GPUs per node (a gres count; nothing behind it): lets jobs ask for --gpus-per-node like on a GPU cluster
ICG_SLURM_GPUS=${ICG_SLURM_GPUS:-2}
ICG_SLURM_BRIDGE=${ICG_SLURM_BRIDGE:-icgslurm0}
ICG_SLURM_NS_PREFIX=${ICG_SLURM_NS_PREFIX:-icg-slurm-}
ICG_SLURM_CTLD_PORT=${ICG_SLURM_CTLD_PORT:-6817}
ICG_SLURM_SLURMD_PORT=${ICG_SLURM_SLURMD_PORT:-6818}

SLURM_CONF_FILE="$ICG_SLURM_DIR/etc/slurm.conf"
STATE_FILE="$ICG_SLURM_DIR/state"  # one "kind value" line per thing cluster_up.sh made, read by cluster_down.sh

log() { printf '[icg-slurm %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "$0 must run as root (it starts munged, slurmctld, slurmd and makes namespaces)"; }
