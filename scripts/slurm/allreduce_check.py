"""Cross-node smoke test of the path Lightning's DDP takes under SLURM: rendezvous from SLURM's environment, gloo.

Run under ``srun`` (one task per node): each task reads rank, world size, master address and port exactly as
Lightning's ``SLURMEnvironment`` does (master = first host of ``SLURM_NODELIST``, port derived from the job id),
joins a gloo process group over TCP, all-reduces ``rank + 1`` and prints one JSON line per rank. Exit status is
non-zero when the sum differs from ``world_size * (world_size + 1) / 2``.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys

import torch
import torch.distributed as dist
from lightning.fabric.plugins.environments import SLURMEnvironment


def main() -> int:
    """Join the process group, all-reduce, print this rank's report; return the exit status."""
    env = SLURMEnvironment()
    if not env.detect():
        sys.stderr.write("allreduce_check.py must run inside a SLURM job step (srun)\n")
        return 2
    rank, world = env.global_rank(), env.world_size()
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://{env.main_address}:{env.main_port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    value = torch.tensor([float(rank + 1)])
    dist.all_reduce(value)
    expected = world * (world + 1) / 2
    report = {
        "rank": rank,
        "world_size": world,
        "node_id": int(os.environ["SLURM_NODEID"]),
        "hostname": socket.gethostname(),
        "main_address": env.main_address,
        "main_port": env.main_port,
        "all_reduce_sum": value.item(),
        "ok": value.item() == expected,
    }
    print(json.dumps(report), flush=True)
    dist.destroy_process_group()
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
