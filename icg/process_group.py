"""Destroy a torch.distributed process group left open at interpreter exit.

Lightning destroys its process group at exit only for NCCL. A gloo group left alive reaches C++ static destruction
with its worker threads still joinable, and about one exit in seven then aborts ("terminate called without an active
exception"): a 2-rank ``icg generate`` on SLURM or a ``ddp_spawn`` fit that finished its work exits non-zero.
``icg`` registers :func:`destroy_at_exit` once, on import, so every process that ran icg code (a SLURM task, a spawned
worker) releases its group while Python is still alive.
"""

from __future__ import annotations

import atexit
import sys


def destroy_at_exit() -> None:
    """Destroy the default process group if this process made one; a no-op where torch.distributed was never used."""
    dist = sys.modules.get("torch.distributed")  # never import torch only to find that nothing is open
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def register() -> None:
    """Run :func:`destroy_at_exit` at interpreter exit (once, however often it is called)."""
    atexit.unregister(destroy_at_exit)
    atexit.register(destroy_at_exit)
