"""A SLURM requeue callback that is safe under multi-process DDP: the signal handler only sets a flag.

Lightning's own SIGUSR1 handler (``SLURMEnvironment(auto_requeue=True)``) saves the HPC checkpoint *inside* the
signal handler, which runs a collective (``Trainer.save_checkpoint`` ends with a barrier). With several ranks the
signal lands at a different point on each rank: one rank can enter that barrier while another is still inside
DDP's gradient all-reduce, and the job hangs. On the two-node test cluster (tiny stage 1, 2 nodes x 1 task, gloo)
that happened in 1 of 3 tries: no ``hpc_ckpt_*.ckpt`` was written and both ranks waited forever.

Here the handler only records the signal; at the end of every training batch all ranks agree (one boolean
all-reduce) and, when any rank was signalled, all of them save ``hpc_ckpt_N.ckpt`` at the same step, rank 0 runs
``scontrol requeue``, and training stops. Lightning resumes the requeued job from the newest ``hpc_ckpt_*.ckpt`` in
``trainer.default_root_dir`` by itself. Use with ``SLURMEnvironment(auto_requeue=False)`` so Lightning does not
install its own handler for the same signal.

Enable it by stacking ``lightning_configs/slurm/synced_requeue.yaml`` after the trainer fragment.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess

from lightning.pytorch import Callback, LightningModule, Trainer

from icg.errors import ConfigError

# Under lightning.pytorch so these lines reach the job log through the handler Lightning installs.
log = logging.getLogger("lightning.pytorch.callbacks.synced_requeue")


class SyncedSLURMRequeue(Callback):
    """Save an HPC checkpoint on every rank at the same step and requeue, when SLURM sends ``signal_name``.

    Args:
        signal_name: the signal ``#SBATCH --signal`` sends (default ``SIGUSR1``).
    """

    def __init__(self, signal_name: str = "SIGUSR1") -> None:
        try:
            self.signum = signal.Signals[signal_name]
        except KeyError as err:
            raise ConfigError(f"SyncedSLURMRequeue.signal_name: unknown signal {signal_name!r}") from err
        self._signalled = False
        self._previous = None

    def _on_signal(self, signum: int, frame: object) -> None:
        # Only a flag: collectives inside a signal handler deadlock DDP (see the module docstring).
        self._signalled = True

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._signalled = False
        self._previous = signal.signal(self.signum, self._on_signal)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: object) -> None:
        if not trainer.strategy.reduce_boolean_decision(self._signalled, all=False):
            return
        self._signalled = False
        path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
        trainer.save_checkpoint(path)  # every rank, same step: its closing barrier is safe here
        if trainer.is_global_zero:
            job_id = os.environ.get("SLURM_JOB_ID")
            if os.environ.get("SLURM_ARRAY_JOB_ID"):
                job_id = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
            log.info("saved %s at step %d; requeueing SLURM job %s", path, trainer.global_step, job_id)
            if job_id is None:
                log.warning("SyncedSLURMRequeue: not in a SLURM job (no SLURM_JOB_ID), nothing to requeue")
            else:
                result = subprocess.run(["scontrol", "requeue", job_id], check=False)
                if result.returncode != 0:
                    log.warning("scontrol requeue %s failed with exit code %d", job_id, result.returncode)
        trainer.should_stop = True
