"""A rerun never chains an earlier run's checkpoint (issue 15): refused without --overwrite, replaced with it."""

import torch

from icg.cli import main
from tests.helpers.cli import TINY, run_cli


def stage1(root, out, *extra):
    return ["fit", "--config", TINY / "stage1_preference.yaml", "--data.root", root, "--trainer.default_root_dir", out,
            "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            f"--trainer.callbacks.dirpath={out / 'checkpoints'}", "--trainer.callbacks.save_last=true",
            *extra]  # fmt: skip


def stage2(root, out, stage1_last, *extra):
    return ["fit", "--config", TINY / "stage2_rewards.yaml", "--data.root", root, "--trainer.default_root_dir", out,
            "--model.init_args.preference_ckpt", stage1_last, "--trainer.limit_val_batches", "0",
            "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            f"--trainer.callbacks.dirpath={out / 'checkpoints'}", "--trainer.callbacks.save_last=true",
            *extra]  # fmt: skip


def user_table(state_dict, prefix):
    (key,) = [k for k in state_dict if k.startswith(prefix) and k.endswith("user_embedding_table.weight")]
    return state_dict[key]


def test_rerun_of_two_chained_stages_reads_the_new_checkpoint(tiny_platform, tmp_path, capsys):
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    last1, last2 = s1 / "checkpoints/last.ckpt", s2 / "checkpoints/last.ckpt"
    run_cli(*stage1(tiny_platform, s1))
    run_cli(*stage2(tiny_platform, s2, last1))
    first = torch.load(last1, weights_only=True)["state_dict"]

    # A rerun over the same folders with another setting is refused and touches nothing.
    before = last1.read_bytes()
    assert main([str(w) for w in stage1(tiny_platform, s1, "--seed_everything", "7")]) == 2
    err = capsys.readouterr().err
    assert "earlier run's checkpoints" in err and "--overwrite true" in err and "Traceback" not in err
    assert last1.read_bytes() == before

    # With --overwrite both stages start over, and stage 2 chains the new stage-1 model.
    run_cli(*stage1(tiny_platform, s1, "--seed_everything", "7", "--overwrite", "true"))
    run_cli(*stage2(tiny_platform, s2, last1, "--overwrite", "true"))
    for folder in (s1, s2):  # the earlier files were deleted: no last-v1.ckpt, no stale epoch=... checkpoint
        names = sorted(p.name for p in (folder / "checkpoints").iterdir())
        assert "last.ckpt" in names and not any("-v" in n for n in names), names
        assert len(names) == 2, names
    second = torch.load(last1, weights_only=True)["state_dict"]
    new_users = user_table(second, "model.")
    assert not torch.equal(user_table(first, "model."), new_users)
    bundle = torch.load(last2, weights_only=True)["state_dict"]
    torch.testing.assert_close(user_table(bundle, "bundle.rewards.preference."), new_users, rtol=0, atol=0)


def test_a_resume_into_the_same_folder_is_allowed(tiny_platform, tmp_path):
    s1 = tmp_path / "s1"
    run_cli(*stage1(tiny_platform, s1))
    last = s1 / "checkpoints/last.ckpt"
    run_cli(*stage1(tiny_platform, s1, "--trainer.max_epochs", "2", "--ckpt_path", last))
    assert torch.load(last, weights_only=True)["epoch"] == 1
    assert not (s1 / "checkpoints/last-v1.ckpt").exists()


def test_model_and_data_seeds_may_differ(tiny_platform, tiny_stage1_ckpt, tmp_path):
    """Lightning refused to log two values of one hparam key ('seed') from the stage and the DataModule."""
    s2 = tmp_path / "s2"
    run_cli("fit", "--config", TINY / "stage2_rewards.yaml", "--data.root", tiny_platform, "--data.seed", "5",
            "--model.init_args.seed", "0", "--model.init_args.preference_ckpt", tiny_stage1_ckpt,
            "--trainer.default_root_dir", s2, "--trainer.limit_val_batches", "0",
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.save_dir={s2}")  # fmt: skip
    assert list(s2.rglob("*.ckpt"))
