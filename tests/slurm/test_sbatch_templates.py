"""Static checks of the SLURM launch files (fast, no cluster): what a cluster run depends on must be in them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SLURM_CONFIGS = REPO / "lightning_configs" / "slurm"
STAGES = ("stage1_preference", "stage2_rewards", "stage3_alignment")


@pytest.mark.parametrize(
    "path",
    [*sorted((REPO / "scripts" / "slurm").glob("*.sh")), *sorted(SLURM_CONFIGS.glob("*.sbatch"))],
    ids=lambda p: p.name,
)
def test_shell_files_parse(path: Path) -> None:
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, f"{path}: {result.stderr}"


@pytest.mark.parametrize("stage", STAGES)
def test_sbatch_template_launches_stage_with_requeue(stage: str) -> None:
    text = (SLURM_CONFIGS / f"{stage}.sbatch").read_text()
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?", text, flags=re.M))
    assert directives["signal"] == "SIGUSR1@90"  # Lightning's SLURMEnvironment requeue signal, 90 s before the end
    assert "requeue" in directives and directives["open-mode"] == "append"
    assert int(directives["nodes"]) >= 1 and int(directives["ntasks-per-node"]) >= 1
    srun = text[text.index("srun ") :]
    # the trainer's world layout comes from the allocation, so it always matches --nodes/--ntasks-per-node
    assert '--trainer.num_nodes "$SLURM_JOB_NUM_NODES"' in srun and '--trainer.devices "$TASKS_PER_NODE"' in srun
    assert " fit " in srun and '--config "$STAGE_CONFIG" --config "$TRAINER_CONFIG"' in srun
    assert '--trainer.default_root_dir "$RUN_DIR"' in srun and f"RUN_DIR=$ICG_SHARED_DIR/runs/{stage}" in text
    assert "${ICG_SHARED_DIR:?" in text  # refuses to run without shared storage


def test_trainer_fragment_is_cpu_ddp_with_gloo() -> None:
    trainer = yaml.safe_load((SLURM_CONFIGS / "trainer_ddp_cpu.yaml").read_text())["trainer"]
    assert trainer["accelerator"] == "cpu"
    assert trainer["strategy"]["class_path"] == "lightning.pytorch.strategies.DDPStrategy"
    assert trainer["strategy"]["init_args"]["process_group_backend"] == "gloo"
    assert trainer["num_nodes"] == 2 and trainer["devices"] == 1
