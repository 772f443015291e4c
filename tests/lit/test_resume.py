"""Resuming a stage with ``--ckpt_path`` ends with the same weights as an uninterrupted run (preemption, requeue).

Runs stop on an epoch boundary (Lightning restarts an interrupted epoch's iteration on resume); within the run,
everything random is seeded by epoch or step, so the two paths must agree exactly.
"""

import pytest
import torch
import yaml

from tests.helpers.cli import TINY
from tests.helpers.resume import resumed_equals_uninterrupted


def test_stage1_resume_with_cold_start_dropout(tiny_platform, tmp_path):
    """The tiny config trains with cold_start_dropout 0.05, drawn per batch from (dropout_seed, step, batch, rank)."""
    config = yaml.safe_load((TINY / "stage1_preference.yaml").read_text())
    assert config["model"]["init_args"]["model"]["init_args"]["cold_start_dropout"] > 0
    resumed = resumed_equals_uninterrupted("stage1_preference.yaml", tmp_path, "--data.root", tiny_platform)
    # Every tiny-platform user is known, so only the dropout trains the fallback row (zero at init).
    fallback = torch.load(resumed, weights_only=True)["state_dict"]["model.user_embedding_table.weight"][-1]
    assert fallback.abs().sum() > 0


@pytest.mark.slow
def test_stage2_resume(tiny_platform, tiny_stage1_ckpt, tmp_path):
    resumed_equals_uninterrupted("stage2_rewards.yaml", tmp_path, "--data.root", tiny_platform,
                                 "--model.init_args.preference_ckpt", tiny_stage1_ckpt)  # fmt: skip


@pytest.mark.slow
def test_stage3_resume(tiny_platform, tiny_stage1_ckpt, tiny_stage2_ckpt, tmp_path):
    resumed_equals_uninterrupted("stage3_alignment.yaml", tmp_path, "--data.root", tiny_platform,
                                 "--model.init_args.preference_ckpt", tiny_stage1_ckpt,
                                 "--model.init_args.rewards_ckpt", tiny_stage2_ckpt,
                                 "--trainer.max_steps", "-1")  # fmt: skip


def test_a_checkpoint_from_another_stage_cannot_resume_stage3(tiny_platform, tiny_stage1_ckpt, tiny_stage2_ckpt,
                                                              tmp_path, capsys):  # fmt: skip
    from icg.cli import main

    words = ["fit", "--config", TINY / "stage3_alignment.yaml", "--trainer.default_root_dir", tmp_path,
             "--data.root", tiny_platform, "--model.init_args.preference_ckpt", tiny_stage1_ckpt,
             "--model.init_args.rewards_ckpt", tiny_stage2_ckpt, "--ckpt_path", tiny_stage1_ckpt]  # fmt: skip
    assert main([str(w) for w in words]) == 2
    err = capsys.readouterr().err
    assert "'preference' stage checkpoint; it cannot resume the 'alignment' stage" in err and "Traceback" not in err
