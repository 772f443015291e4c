"""Checkpoint writes that a crash cannot tear: write a temporary file beside the target, then rename.

Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction whose temporary file lives in the system temp
folder; when that is another filesystem than the checkpoint folder (a node-local /tmp and shared storage on a
cluster), the final move is a copy, and a job killed during it (SLURM preemption, OOM) leaves a truncated
``last.ckpt``. Here the temporary file sits in the target folder and ``os.replace`` swaps it in atomically, so the
previous checkpoint stays loadable until the new one is complete. ``icg``'s CLI installs it on every Trainer that has
no CheckpointIO of its own.
"""

from __future__ import annotations

from typing import Any

from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from icg.ckpt import atomic_torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with same-folder temporary file + atomic rename (local and shared POSIX filesystems)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_torch_save(checkpoint, path)
