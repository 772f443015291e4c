"""Where the demo reads its configs and writes its runs (relative to the working directory)."""

from __future__ import annotations

from pathlib import Path

RUNS = Path("runs/demo")
DATA = RUNS / "data"
CONFIGS = Path(__file__).resolve().parents[2] / "lightning_configs" / "demo"
STAGE1_CKPT = RUNS / "stage1/checkpoints/last.ckpt"
STAGE2_CKPT = RUNS / "stage2/checkpoints/last.ckpt"
STAGE3_CKPT = RUNS / "stage3/checkpoints/last.ckpt"
NO_USER_CKPT = RUNS / "stage3_no_user/checkpoints/last.ckpt"
NO_META_CKPT = RUNS / "stage3_no_meta/checkpoints/last.ckpt"
TRAINED_MLLM_CKPT = RUNS / "stage3_trained_mllm/checkpoints/last.ckpt"
MLLM = RUNS / "mllm"  # = export_dir of lightning_configs/demo/mllm.yaml
EXPORT = RUNS / "export"
LOGS = RUNS / "logs"
SEEDS_ROOT = Path("runs/seeds")
HOLDOUT = 3  # = data.holdout of every lightning_configs/demo/stage*.yaml (tests/test_config_hub.py checks)
