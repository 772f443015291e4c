"""A fresh ``icg fit`` never writes beside an earlier run's checkpoints (STYLE.md habit 18).

Stages chain through fixed checkpoint paths (``preference_ckpt: runs/demo/stage1/checkpoints/last.ckpt``). When a
second run finds the first run's ``last.ckpt`` in its ``ModelCheckpoint`` folder, Lightning writes ``last-v1.ckpt``
beside it, and every later stage silently reads the *old* model. So a fit that is not a resume refuses to start over
a folder holding checkpoints; ``--overwrite true`` deletes them first (they are this stage's own outputs, never an
input). A resume -- ``--ckpt_path``, or a SLURM job requeued onto its ``hpc_ckpt_*.ckpt`` -- is left alone.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.environments import SLURMEnvironment

from icg.errors import RunFolderError

log = logging.getLogger(__name__)


def _is_requeued_slurm_job() -> bool:
    """SLURM counts restarts of a requeued job; the first run of a job has none."""
    return SLURMEnvironment.detect() and int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0


def checkpoint_dir(callback: ModelCheckpoint, trainer: Trainer) -> Path:
    """Where ``callback`` will write, resolved as Lightning does when its ``dirpath`` is not set."""
    if callback.dirpath is not None:
        return Path(callback.dirpath)
    if trainer.loggers:
        logger = trainer.loggers[0]
        version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
        return Path(logger.save_dir or trainer.default_root_dir, str(logger.name), version, "checkpoints")
    return Path(trainer.default_root_dir, "checkpoints")


def earlier_checkpoints(trainer: Trainer) -> list[Path]:
    """Checkpoint files already present where this trainer will write: ModelCheckpoint folders and HPC saves."""
    found: list[Path] = []
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint):
            found += sorted(checkpoint_dir(callback, trainer).glob("*.ckpt"))
    found += sorted(Path(trainer.default_root_dir).glob("hpc_ckpt_*.ckpt"))
    return list(dict.fromkeys(found))


def prepare_run_folders(trainer: Trainer, ckpt_path: str | None, overwrite: bool) -> None:
    """Refuse (or, with ``overwrite``, clear) a fresh fit's checkpoint folders that hold an earlier run's files.

    Args:
        trainer: the instantiated Trainer of the fit.
        ckpt_path: ``--ckpt_path`` of the fit (any value means a deliberate resume).
        overwrite: ``--overwrite``: delete the earlier checkpoints instead of refusing.
    """
    if ckpt_path is not None or _is_requeued_slurm_job():
        return
    stale = earlier_checkpoints(trainer)
    if not stale:
        return
    names = ", ".join(str(p) for p in stale[:4]) + (f" and {len(stale) - 4} more" if len(stale) > 4 else "")
    if not overwrite:
        last = next((p for p in stale if p.name == "last.ckpt"), stale[0])
        raise RunFolderError(
            f"this run would write beside an earlier run's checkpoints ({names}), and a later stage naming "
            f"{last.parent}/last.ckpt would read the old one. Start over with --overwrite true (deletes them), write "
            f"elsewhere (--trainer.default_root_dir and the ModelCheckpoint dirpath), or resume with --ckpt_path {last}"
        )
    if rank_zero_only.rank == 0:
        for path in stale:
            path.unlink(missing_ok=True)
        log.warning("--overwrite: deleted %d checkpoint(s) of an earlier run: %s", len(stale), names)
