"""What the SLURM templates do, checked without a cluster (fast set; ``make test-slurm`` runs them on one).

Each ``lightning_configs/slurm/*.sbatch`` is run by bash as the batch step of an allocation shaped by its own
``#SBATCH`` lines (or by a ``sbatch --nodes/--ntasks-per-node`` override), with ``srun`` replaced by a stub that
records its command line. That command line is then built through the CLI (``ICGLightningCLI(..., run=False)``) in
the environment ``srun`` gives task 0, with the CPU/gloo trainer fragment stacked on (no GPU here): the trainer must
match the allocation, use DDP under Lightning's SLURM environment, write to the shared run folder, and requeue on the
signal the template asks SLURM to send. The templates' own default, the GPU fragment, is parsed (accelerator, NCCL,
bf16, layout from the allocation) and, built on this CPU machine, must stop in one line before anything loads.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies import DDPStrategy

from icg.cli import ICGLightningCLI
from icg.lit.requeue import SyncedSLURMRequeue

REPO = Path(__file__).resolve().parents[2]
SLURM_CONFIGS = REPO / "lightning_configs" / "slurm"
TINY = REPO / "lightning_configs" / "tiny"
TEMPLATES = sorted(SLURM_CONFIGS.glob("stage*.sbatch"))
SYNCED_REQUEUE = SLURM_CONFIGS / "synced_requeue.yaml"
CPU_FRAGMENT = SLURM_CONFIGS / "trainer_ddp_cpu.yaml"
GPU_FRAGMENT = SLURM_CONFIGS / "trainer_ddp_gpu.yaml"
SRUN_STUB = """#!/bin/bash
# Records the command line srun was given (one word per line), as the batch step would run it on every task.
printf '%s\\n' "$@" > "$SRUN_RECORD"
"""


def directives(template: Path) -> dict[str, str]:
    """``#SBATCH --name[=value]`` lines of a template (flags without a value map to '')."""
    return dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?", template.read_text(), flags=re.M))


def seconds(limit: str) -> int:
    """SLURM's ``[days-]hours:minutes:seconds`` time limit in seconds."""
    days, _, clock = limit.rpartition("-")
    h, m, s = (int(x) for x in clock.split(":"))
    return int(days or 0) * 86400 + h * 3600 + m * 60 + s


def allocation(nodes: int, tasks_per_node: int) -> dict[str, str]:
    """What SLURM sets in the batch step of an ``sbatch --nodes=N --ntasks-per-node=T`` job."""
    return {
        "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "icg-test", "SLURM_JOB_NUM_NODES": str(nodes),
        "SLURM_NNODES": str(nodes), "SLURM_NTASKS_PER_NODE": str(tasks_per_node),
        "SLURM_NTASKS": str(nodes * tasks_per_node), "SLURM_JOB_NODELIST": f"node[1-{nodes}]",
        "SLURM_NODELIST": f"node[1-{nodes}]", "SLURM_CPUS_PER_TASK": "1", "SLURM_RESTART_COUNT": "0",
    }  # fmt: skip


def run_template(template: Path, tmp: Path, layout: dict[str, str], *args: str, **env: str):
    """Run ``template`` as a batch step; returns (bash result, srun's words or None when srun was not reached)."""
    stub_dir = tmp / "bin"
    stub_dir.mkdir(exist_ok=True)
    (stub_dir / "srun").write_text(SRUN_STUB)
    (stub_dir / "srun").chmod(0o755)
    record = tmp / "srun.args"
    record.unlink(missing_ok=True)
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "ICG_"))},
        **layout,
        "PATH": f"{stub_dir}:{os.environ['PATH']}",
        "SRUN_RECORD": str(record),
        "SLURM_SUBMIT_DIR": str(REPO),
        **env,
    }
    result = subprocess.run(["bash", str(template), *args], env=full_env, capture_output=True, text=True, timeout=60)
    return result, (record.read_text().splitlines() if record.exists() else None)


def fit_words(srun_words: list[str]) -> list[str]:
    """The ``icg fit`` arguments of srun's command line (after the launcher words and the ``fit`` subcommand)."""
    assert srun_words[0] == "--kill-on-bad-exit=1", srun_words  # one failed rank ends the whole step
    assert "fit" in srun_words, srun_words
    return srun_words[srun_words.index("fit") + 1 :]


def chain_args(stage: str, platform: Path, stage1: Path, stage2: Path) -> list[str]:
    """Extra ``icg fit`` arguments a user passes after the template: the data and the earlier stages' checkpoints."""
    init_args = yaml.safe_load((TINY / f"{stage}.yaml").read_text())["model"]["init_args"]
    words = ["--data.root", str(platform)]
    for key, path in (("preference_ckpt", stage1), ("rewards_ckpt", stage2)):
        if key in init_args:
            words += [f"--model.init_args.{key}", str(path)]
    return words


@pytest.fixture
def task0(monkeypatch):
    """Enter the environment srun gives task 0 of an allocation (restored after the test)."""

    def enter(layout: dict[str, str]) -> None:
        for name in list(os.environ):
            if name.startswith("SLURM_"):
                monkeypatch.delenv(name)
        for name, value in {**layout, "SLURM_NODEID": "0", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # Lightning may set them; keep them scoped to the test
        monkeypatch.setenv("MASTER_PORT", "15242")

    return enter


def test_templates_are_found():
    assert {t.stem for t in TEMPLATES} >= {"stage1_preference", "stage2_rewards", "stage3_alignment"}


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.stem)
def test_template_asks_for_one_gpu_per_task(template):
    found = directives(template)
    assert int(found["gpus-per-node"]) == int(found["ntasks-per-node"]) >= 1  # one DDP process per GPU


def test_stage2_template_runs_one_task_by_default():
    """The real stage 2 has nothing to train and refuses several processes (icg.lit.rewards)."""
    found = directives(SLURM_CONFIGS / "stage2_rewards.sbatch")
    assert (found["nodes"], found["ntasks-per-node"], found["gpus-per-node"]) == ("1", "1", "1")


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.stem)
def test_template_is_valid_bash_and_asks_for_a_requeue_signal(template):
    assert subprocess.run(["bash", "-n", str(template)], capture_output=True).returncode == 0
    found = directives(template)
    name, _, lead = found["signal"].partition("@")
    assert signal.Signals[name] == signal.SIGUSR1  # what both requeue handlers listen to (checked on the trainer)
    assert 0 < int(lead) < seconds(found["time"]) / 10  # warned in time, and well before the end
    assert "requeue" in found and found["open-mode"] == "append"  # requeued runs append to one log


@pytest.mark.parametrize("layout", ["sbatch", "override"], ids=["own-sbatch-lines", "nodes=1,ntasks-per-node=2"])
@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.stem)
def test_template_command_builds_a_trainer_that_matches_the_allocation(
    template, layout, tiny_platform, tiny_stage1_ckpt, tiny_stage2_ckpt, tmp_path, task0
):
    stage = template.stem
    found = directives(template)
    nodes, tasks = (int(found["nodes"]), int(found["ntasks-per-node"])) if layout == "sbatch" else (1, 2)
    shared = tmp_path / "shared"
    words = chain_args(stage, tiny_platform, tiny_stage1_ckpt, tiny_stage2_ckpt)
    result, srun = run_template(template, tmp_path, allocation(nodes, tasks), *words, ICG_SHARED_DIR=str(shared),
                                ICG_REPO=str(REPO), ICG_STAGE_CONFIG=str(TINY / f"{stage}.yaml"),
                                ICG_TRAINER_CONFIG=str(CPU_FRAGMENT))  # fmt: skip
    assert result.returncode == 0 and srun is not None, result.stderr
    assert (shared / "runs" / stage).is_dir()
    args = fit_words(srun)
    assert args[-len(words) :] == words  # the user's extra arguments reach `icg fit` unchanged, last
    task0(allocation(nodes, tasks))
    cli = ICGLightningCLI(args, run=False)
    trainer = cli.trainer
    assert (trainer.num_nodes, trainer.num_devices, trainer.world_size) == (nodes, tasks, nodes * tasks)
    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.strategy.root_device.type == "cpu" and trainer.strategy.process_group_backend == "gloo"
    environment = trainer.strategy.cluster_environment
    assert isinstance(environment, SLURMEnvironment)
    environment.validate_settings(num_devices=trainer.num_devices, num_nodes=trainer.num_nodes)  # Lightning's check
    assert Path(trainer.default_root_dir) == shared / "runs" / stage
    # SyncedSLURMRequeue (the default) handles the signal the template asks SLURM to send; Lightning's handler is off
    assert not environment.auto_requeue  # one handler for the signal, not two
    synced = [c for c in trainer.callbacks if isinstance(c, SyncedSLURMRequeue)]
    assert len(synced) == 1 and synced[0].signum == signal.Signals[found["signal"].split("@")[0]]


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.stem)
def test_template_with_lightning_s_own_requeue_handler(template, tiny_platform, tiny_stage1_ckpt, tiny_stage2_ckpt,
                                                       tmp_path, task0):  # fmt: skip
    """``ICG_REQUEUE_CONFIG=`` (empty) leaves the signal to Lightning's stock handler (docs/slurm.md: it can hang)."""
    stage, found = template.stem, directives(template)
    layout = allocation(int(found["nodes"]), int(found["ntasks-per-node"]))
    words = chain_args(stage, tiny_platform, tiny_stage1_ckpt, tiny_stage2_ckpt)
    result, srun = run_template(template, tmp_path, layout, *words, ICG_SHARED_DIR=str(tmp_path / "shared"),
                                ICG_REPO=str(REPO), ICG_STAGE_CONFIG=str(TINY / f"{stage}.yaml"),
                                ICG_TRAINER_CONFIG=str(CPU_FRAGMENT), ICG_REQUEUE_CONFIG="")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert str(SYNCED_REQUEUE) not in srun
    task0(layout)
    trainer = ICGLightningCLI(fit_words(srun), run=False).trainer
    environment = trainer.strategy.cluster_environment
    assert environment.auto_requeue and environment.requeue_signal == signal.Signals[found["signal"].split("@")[0]]
    assert not [c for c in trainer.callbacks if isinstance(c, SyncedSLURMRequeue)]


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.stem)
def test_template_defaults_to_the_demo_stage_the_gpu_fragment_and_synced_requeue(template, tmp_path):
    result, srun = run_template(template, tmp_path, allocation(2, 1), ICG_SHARED_DIR=str(tmp_path), ICG_REPO=str(REPO))
    assert result.returncode == 0, result.stderr
    configs = [srun[i + 1] for i, word in enumerate(srun) if word == "--config"]
    assert configs == [str(REPO / "lightning_configs/demo" / f"{template.stem}.yaml"), str(GPU_FRAGMENT),
                       str(SYNCED_REQUEUE)]  # fmt: skip
    assert all(Path(c).is_file() for c in configs)


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.stem)
def test_default_gpu_command_parses_to_nccl_bf16_ddp_and_stops_in_one_line_without_a_gpu(
    template, tiny_platform, tiny_stage1_ckpt, tiny_stage2_ckpt, tmp_path, task0, capsys
):
    from icg.cli import main

    stage, found = template.stem, directives(template)
    nodes, tasks = int(found["nodes"]), int(found["ntasks-per-node"])
    words = chain_args(stage, tiny_platform, tiny_stage1_ckpt, tiny_stage2_ckpt)
    env = {
        "ICG_REPO": str(REPO),
        "ICG_SHARED_DIR": str(tmp_path / "shared"),
        "ICG_STAGE_CONFIG": str(TINY / f"{stage}.yaml"),
    }
    result, srun = run_template(template, tmp_path, allocation(nodes, tasks), *words, **env)
    assert result.returncode == 0, result.stderr
    task0(allocation(nodes, tasks))
    with pytest.raises(SystemExit):
        main(["fit", *fit_words(srun), "--print_config"])
    trainer = yaml.safe_load(capsys.readouterr().out)["trainer"]
    assert (trainer["accelerator"], trainer["precision"], trainer["num_nodes"], str(trainer["devices"])) == (
        "gpu", "bf16-mixed", nodes, str(tasks))  # fmt: skip
    assert trainer["strategy"]["init_args"]["process_group_backend"] == "nccl"
    assert main(["fit", *fit_words(srun)]) == 2  # this machine has no GPU: one line, nothing built or trained
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("icg fit: trainer.accelerator: gpu") and "sees none" in err[-1]
    assert not list((tmp_path / "shared" / "runs" / stage).iterdir())


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.stem)
def test_template_refuses_to_start_without_shared_storage_or_with_a_missing_config(template, tmp_path):
    result, srun = run_template(template, tmp_path, allocation(2, 1), ICG_REPO=str(REPO))
    assert result.returncode != 0 and srun is None
    assert "ICG_SHARED_DIR" in result.stderr
    missing = tmp_path / "nope.yaml"
    result, srun = run_template(template, tmp_path, allocation(2, 1), ICG_SHARED_DIR=str(tmp_path),
                                ICG_REPO=str(REPO), ICG_STAGE_CONFIG=str(missing))  # fmt: skip
    assert result.returncode == 2 and srun is None
    assert f"config file not found: {missing}" in result.stderr


@pytest.mark.parametrize("script", sorted((REPO / "scripts" / "slurm").glob("*.sh")), ids=lambda p: p.name)
def test_cluster_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, f"{script}: {result.stderr}"
