"""``lightning_configs/slurm/generate.sbatch`` checked without a cluster (fast set; the cluster run is in
``test_slurm_cluster.py``): bash runs it as the batch step of an allocation, with ``srun`` and ``scontrol`` replaced by
stubs that record their command lines.

The template must hand ``icg generate`` the allocation's layout (and the user's arguments, last), the Trainer that
``icg generate`` builds from them must match the allocation under Lightning's SLURM environment with Lightning's own
requeue handler off, and USR1 to the batch shell must requeue the job (generation resumes from its folder, so no
checkpoint is involved).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies import DDPStrategy

from icg.lit.generation import generation_trainer

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "lightning_configs" / "slurm" / "generate.sbatch"
SRUN_STUB = """#!/bin/bash
exec >/dev/null 2>&1  # holds no pipe of the batch step open while it "runs"
printf '%s\\n' "$@" > "$SRUN_RECORD"
sleep "${SRUN_SLEEP:-0}"
"""
SCONTROL_STUB = """#!/bin/bash
printf '%s\\n' "$@" > "$SCONTROL_RECORD"
"""


def allocation(nodes: int, tasks_per_node: int) -> dict[str, str]:
    """What SLURM sets in the batch step of an ``sbatch --nodes=N --ntasks-per-node=T`` job."""
    return {
        "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "icg-generate", "SLURM_JOB_NUM_NODES": str(nodes),
        "SLURM_NNODES": str(nodes), "SLURM_NTASKS_PER_NODE": str(tasks_per_node),
        "SLURM_NTASKS": str(nodes * tasks_per_node), "SLURM_JOB_NODELIST": f"node[1-{nodes}]",
        "SLURM_NODELIST": f"node[1-{nodes}]", "SLURM_CPUS_PER_TASK": "1", "SLURM_RESTART_COUNT": "0",
    }  # fmt: skip


def start(tmp: Path, layout: dict[str, str], *args: str, **env: str) -> subprocess.Popen:
    """The template as the batch step of ``layout``, with recording stubs for srun and scontrol first on PATH."""
    stubs = tmp / "bin"
    stubs.mkdir(exist_ok=True)
    for name, text in (("srun", SRUN_STUB), ("scontrol", SCONTROL_STUB)):
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "ICG_"))},
        **layout,
        "PATH": f"{stubs}:{os.environ['PATH']}",
        "SRUN_RECORD": str(tmp / "srun.args"),
        "SCONTROL_RECORD": str(tmp / "scontrol.args"),
        "SLURM_SUBMIT_DIR": str(REPO),
        **env,
    }
    return subprocess.Popen(["bash", str(TEMPLATE), *args], env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip


def directives() -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?", TEMPLATE.read_text(), flags=re.M))


def test_generate_template_asks_the_batch_shell_for_the_signal():
    assert subprocess.run(["bash", "-n", str(TEMPLATE)], capture_output=True).returncode == 0
    found = directives()
    where, _, rest = found["signal"].partition(":")
    name, _, lead = rest.partition("@")
    assert where == "B" and signal.Signals[f"SIG{name}"] == signal.SIGUSR1  # the batch shell only, not the ranks
    assert int(lead) > 0 and "requeue" in found and found["open-mode"] == "append"


@pytest.mark.parametrize(("nodes", "tasks"), [(2, 1), (1, 2)])
def test_generate_template_runs_icg_generate_on_the_allocation(nodes, tasks, tmp_path, monkeypatch):
    user_args = ["--export", "/shared/export", "--pairs", "/shared/pairs.csv", "--batch_size", "16"]
    shared = tmp_path / "shared"
    process = start(tmp_path, allocation(nodes, tasks), *user_args, ICG_SHARED_DIR=str(shared), ICG_REPO=str(REPO))
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    words = (tmp_path / "srun.args").read_text().splitlines()
    assert words[0] == "--kill-on-bad-exit=1" and "generate" in words
    args = words[words.index("generate") + 1 :]
    assert args[-len(user_args) :] == user_args  # the user's arguments reach `icg generate` unchanged, last
    given = dict(zip(args[::2], args[1::2], strict=False))
    assert given["--out"] == str(shared / "runs" / "generate")
    assert (given["--num_nodes"], given["--devices"], given["--accelerator"]) == (str(nodes), str(tasks), "cpu")
    # The Trainer `icg generate` builds from them, in the environment srun gives task 0.
    for name in [n for n in os.environ if n.startswith("SLURM_")]:
        monkeypatch.delenv(name)
    for name, value in {**allocation(nodes, tasks), "SLURM_NODEID": "0", "SLURM_PROCID": "0",
                        "SLURM_LOCALID": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "15243"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    trainer = generation_trainer(given["--accelerator"], int(given["--devices"]), int(given["--num_nodes"]), [])
    assert (trainer.num_nodes, trainer.num_devices, trainer.world_size) == (nodes, tasks, nodes * tasks)
    assert isinstance(trainer.strategy, DDPStrategy) and trainer.strategy.root_device.type == "cpu"
    environment = trainer.strategy.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and not environment.auto_requeue  # no checkpoint on a signal


def test_usr1_to_the_batch_shell_requeues_the_job(tmp_path):
    process = start(tmp_path, allocation(2, 1), "--export", "e", "--pairs", "p", ICG_SHARED_DIR=str(tmp_path),
                    ICG_REPO=str(REPO), SRUN_SLEEP="30")  # fmt: skip
    deadline = time.monotonic() + 30
    while not (tmp_path / "srun.args").exists():  # srun is running: the shell waits on it
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    process.send_signal(signal.SIGUSR1)  # what `#SBATCH --signal=B:USR1@90` sends 90 s before the time limit
    out, _ = process.communicate(timeout=20)
    os.killpg(process.pid, signal.SIGTERM)  # the stub "srun" still sleeping (SLURM's requeue would stop it)
    assert (tmp_path / "scontrol.args").read_text().split() == ["requeue", "4242"]
    assert "USR1: requeueing job 4242" in out


def test_generate_template_refuses_to_start_without_shared_storage(tmp_path):
    process = start(tmp_path, allocation(2, 1), ICG_REPO=str(REPO))
    _, err = process.communicate(timeout=60)
    assert process.returncode != 0 and not (tmp_path / "srun.args").exists() and "ICG_SHARED_DIR" in err
