"""Before a Trainer is built: can this machine (and this SLURM job) run what the trainer config asks for?

A run that cannot fit must say so in one line before anything loads, and never hang in a rendezvous that can not
complete. Checked from the parsed ``trainer`` config (``icg fit|validate|test|predict``):

* ``accelerator: gpu`` (or ``cuda``, or an NCCL strategy) on a machine where torch sees no CUDA GPU;
* ``devices`` per node above the GPUs this process can see (``CUDA_VISIBLE_DEVICES``, SLURM's ``--gpus-per-node``);
* under a SLURM batch job, ``devices x num_nodes`` processes against the job's tasks (one process per task: a
  mismatch leaves DDP waiting for ranks that never start), and against the GPUs the job holds;
* ``process_group_backend: nccl`` with a torch build that has no NCCL.

Lightning would otherwise fail later with a traceback (``MisconfigurationException`` / ``ValueError``), or wait.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import torch

from icg.errors import UserError

GPU_ACCELERATORS = ("gpu", "cuda")


class HardwareError(UserError, RuntimeError):
    """The machine or the SLURM allocation cannot run what the trainer config asks for; the message says what to
    change (the config key, or the ``sbatch`` option)."""


def _class_args(value: Any) -> tuple[str, dict]:
    """``(name, init_args)`` of a trainer setting given as a string or as a ``class_path``/``init_args`` block."""
    if value is None:
        return "", {}
    if isinstance(value, str):
        return value.lower(), {}
    get = value.get if hasattr(value, "get") else lambda key, default=None: getattr(value, key, default)
    init_args = get("init_args") or {}
    if hasattr(init_args, "as_dict"):
        init_args = init_args.as_dict()
    return str(get("class_path", type(value).__name__)).lower(), dict(init_args)


def _devices_per_node(devices: Any) -> int | None:
    """How many devices per node ``trainer.devices`` asks for (None: ``auto``/``-1``, i.e. whatever is there)."""
    if isinstance(devices, int):
        return None if devices == -1 else devices
    if isinstance(devices, list | tuple):
        return len(devices)
    text = str(devices).strip()
    if text in ("auto", "-1"):
        return None
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    return int(text) if text.isdigit() else None


def _slurm_batch_job() -> bool:
    """Inside ``srun`` of a batch job (not an interactive ``salloc`` shell, which Lightning also leaves alone)."""
    return "SLURM_NTASKS" in os.environ and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive")


def _visible() -> str:
    return f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}"


def check_trainer_fits(trainer: Any) -> None:
    """Raise :class:`HardwareError` when the ``trainer`` config cannot run here; return quietly when it can.

    Args:
        trainer: the parsed ``trainer`` config (a jsonargparse Namespace or a dict).
    """
    get = trainer.get if hasattr(trainer, "get") else lambda key, default=None: getattr(trainer, key, default)
    accelerator, _ = _class_args(get("accelerator"))
    strategy, strategy_args = _class_args(get("strategy"))
    backend = str(strategy_args.get("process_group_backend") or "").lower()
    num_nodes = int(get("num_nodes") or 1)
    per_node = _devices_per_node(get("devices", "auto"))
    # "gpu", "cuda" or a CUDAAccelerator class path; an NCCL process group needs GPUs whatever the accelerator says
    wants_gpu = accelerator in GPU_ACCELERATORS or "cuda" in accelerator or backend == "nccl"
    host = socket.gethostname()

    if wants_gpu and not torch.cuda.is_available():
        built = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise HardwareError(
            f"trainer.accelerator: {accelerator or 'auto'} (strategy backend {backend or 'default'}) asks for a GPU, "
            f"but torch {torch.__version__} ({built}) sees none on {host} ({_visible()}): run on a GPU node (sbatch "
            "--gpus-per-node=N), or stack lightning_configs/slurm/trainer_ddp_cpu.yaml for CPU"
        )
    if backend == "nccl" and not (torch.distributed.is_available() and torch.distributed.is_nccl_available()):
        raise HardwareError(
            f"trainer.strategy.init_args.process_group_backend: nccl, but torch {torch.__version__} on {host} has no "
            "NCCL backend (torch.distributed.is_nccl_available() is False): install a CUDA build of torch with NCCL, "
            "or use process_group_backend: gloo"
        )
    visible = torch.cuda.device_count() if wants_gpu else None
    if visible is not None and per_node is not None and per_node > visible:
        raise HardwareError(
            f"trainer.devices: {per_node} GPUs per node x trainer.num_nodes {num_nodes}, but {host} shows this "
            f"process {visible} GPU(s) ({_visible()}): lower trainer.devices to {visible}, or ask SLURM for "
            f"{per_node} (#SBATCH --gpus-per-node={per_node} --ntasks-per-node={per_node})"
        )
    if not _slurm_batch_job() or per_node is None:
        return
    tasks = int(os.environ["SLURM_NTASKS"])
    nodes = os.environ.get("SLURM_NNODES") or os.environ.get("SLURM_JOB_NUM_NODES") or "?"
    processes = per_node * num_nodes
    if processes != tasks:
        raise HardwareError(
            f"trainer.devices {per_node} x trainer.num_nodes {num_nodes} = {processes} processes, but this SLURM job "
            f"runs {tasks} task(s) on {nodes} node(s); DDP needs one task per process and would wait for the missing "
            "ranks: set --nodes and --ntasks-per-node to match (the icg sbatch templates pass both from the allocation)"
        )
    gpus_on_node = os.environ.get("SLURM_GPUS_ON_NODE")
    if wants_gpu and gpus_on_node is not None and gpus_on_node.isdigit() and int(gpus_on_node) < per_node:
        raise HardwareError(
            f"trainer.devices: {per_node} GPUs per node, but this SLURM job holds {gpus_on_node} GPU(s) per node "
            f"(for {processes} processes on {nodes} node(s)): ask for "
            f"#SBATCH --gpus-per-node={per_node}"
        )
