"""A trainer that cannot run here is refused in one line before anything is built (``icg.lit.preflight``).

No GPU exists on the test machine: ``torch.cuda`` and ``torch.distributed.is_nccl_available`` are monkeypatched to
describe the machines the checks are about (a node with N GPUs, a torch without NCCL).
"""

from __future__ import annotations

import pytest
import torch

from icg.lit.preflight import HardwareError, check_trainer_fits

DDP_NCCL = {"class_path": "lightning.pytorch.strategies.DDPStrategy", "init_args": {"process_group_backend": "nccl"}}
DDP_GLOO = {"class_path": "lightning.pytorch.strategies.DDPStrategy", "init_args": {"process_group_backend": "gloo"}}


def gpu_trainer(devices=1, num_nodes=1, strategy=DDP_NCCL, accelerator="gpu") -> dict:
    return {"accelerator": accelerator, "strategy": strategy, "devices": devices, "num_nodes": num_nodes}


@pytest.fixture
def node(monkeypatch):
    """Make torch see ``gpus`` CUDA devices (0: none) and NCCL present or not; no SLURM job unless set."""
    for name in ("SLURM_NTASKS", "SLURM_NNODES", "SLURM_JOB_NUM_NODES", "SLURM_GPUS_ON_NODE", "SLURM_JOB_NAME"):
        monkeypatch.delenv(name, raising=False)

    def make(gpus: int, nccl: bool = True) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
        monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: nccl)

    return make


def slurm_job(monkeypatch, tasks: int, nodes: int, gpus_on_node: int | None = None) -> None:
    monkeypatch.setenv("SLURM_NTASKS", str(tasks))
    monkeypatch.setenv("SLURM_NNODES", str(nodes))
    monkeypatch.setenv("SLURM_JOB_NAME", "icg-stage1_preference")
    if gpus_on_node is not None:
        monkeypatch.setenv("SLURM_GPUS_ON_NODE", str(gpus_on_node))


def test_cpu_configs_pass_anywhere(node):
    node(0)
    check_trainer_fits({"accelerator": "cpu", "devices": 1})
    check_trainer_fits({"accelerator": "cpu", "strategy": DDP_GLOO, "devices": 2, "num_nodes": 2})
    check_trainer_fits({"accelerator": "auto", "devices": "auto"})


NO_GPU_CASES = [gpu_trainer(), gpu_trainer(accelerator="cuda"), gpu_trainer(accelerator="auto", strategy=DDP_NCCL)]


@pytest.mark.parametrize("trainer", NO_GPU_CASES, ids=["gpu", "cuda", "nccl"])
def test_a_gpu_run_without_a_gpu(node, trainer):
    node(0)
    with pytest.raises(HardwareError, match=r"^trainer\.accelerator: .* asks for a GPU, but torch .* sees none on "):
        check_trainer_fits(trainer)


def test_more_devices_per_node_than_gpus(node):
    node(2)
    check_trainer_fits(gpu_trainer(devices=2, num_nodes=4))
    check_trainer_fits(gpu_trainer(devices="0,1"))
    with pytest.raises(HardwareError, match=r"^trainer\.devices: 4 GPUs per node x trainer\.num_nodes 2, but .* 2 GPU"):
        check_trainer_fits(gpu_trainer(devices=4, num_nodes=2))
    with pytest.raises(HardwareError, match=r"3 GPUs per node"):
        check_trainer_fits(gpu_trainer(devices=[0, 1, 2]))


def test_nccl_missing_from_the_torch_build(node):
    node(1, nccl=False)
    with pytest.raises(HardwareError, match=r"process_group_backend: nccl, but torch .* has no NCCL backend"):
        check_trainer_fits(gpu_trainer())
    check_trainer_fits(gpu_trainer(strategy=DDP_GLOO))  # gloo on GPUs needs no NCCL


def test_slurm_job_with_fewer_tasks_than_processes(node, monkeypatch):
    node(4)
    slurm_job(monkeypatch, tasks=2, nodes=2, gpus_on_node=4)
    check_trainer_fits(gpu_trainer(devices=1, num_nodes=2))
    with pytest.raises(HardwareError, match=r"= 8 processes, but this SLURM job runs 2 task\(s\) on 2 node\(s\)"):
        check_trainer_fits(gpu_trainer(devices=4, num_nodes=2))


def test_slurm_job_holding_fewer_gpus_than_devices(node, monkeypatch):
    node(4)  # the node has 4, but the job holds 1 per node (a cluster that does not hide the others)
    slurm_job(monkeypatch, tasks=4, nodes=2, gpus_on_node=1)
    with pytest.raises(HardwareError, match=r"this SLURM job holds 1 GPU\(s\) per node .* --gpus-per-node=2"):
        check_trainer_fits(gpu_trainer(devices=2, num_nodes=2))


def test_interactive_allocation_is_left_alone(node, monkeypatch):
    node(1)
    slurm_job(monkeypatch, tasks=8, nodes=2)
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")  # salloc shell: Lightning ignores SLURM, so do we
    check_trainer_fits(gpu_trainer(devices=1, num_nodes=1))


def test_cli_refuses_before_building_anything(tiny_platform, tmp_path, capsys):
    from icg.cli import main

    assert main(["fit", "--config", "lightning_configs/tiny/stage1_preference.yaml", "--data.root", str(tiny_platform),
                 "--trainer.accelerator", "gpu", "--trainer.default_root_dir", str(tmp_path / "run")]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("icg fit: trainer.accelerator: gpu") and "Traceback" not in "".join(err)
    assert not (tmp_path / "run").exists()
