"""Stage 2 (reward bundle) through the CLI: fit, calibrate, validate, checkpoint, reload; config errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from icg.cli import ICGLightningCLI, main
from icg.data.synthetic import generate_platform
from icg.models.rewards.base import RewardContext
from icg.models.rewards.bundle import load_reward_bundle

ROOT = Path(__file__).resolve().parents[2]
TINY1 = str(ROOT / "lightning_configs/tiny/stage1_preference.yaml")
TINY2 = str(ROOT / "lightning_configs/tiny/stage2_rewards.yaml")
DEMO2 = ROOT / "lightning_configs/demo/stage2_rewards.yaml"
REAL2 = str(ROOT / "lightning_configs/real/stage2_rewards.yaml")


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    """A tiny synthetic platform and a stage-1 checkpoint trained on it with the tiny config, through the CLI."""
    tmp = tmp_path_factory.mktemp("stage2")
    data = generate_platform(tmp / "data", users=30, items=60, image_size=32)
    assert (
        main(["fit", "--config", TINY1, "--data.root", str(data), "--trainer.default_root_dir", str(tmp / "s1")]) == 0
    )
    (stage1,) = (tmp / "s1").rglob("*.ckpt")
    return tmp, data, stage1


@pytest.fixture(scope="module")
def stage2(platform):
    """The tiny stage-2 run (ICGLightningCLI(args) is exactly what icg.cli.main runs for ``fit``)."""
    tmp, data, stage1 = platform
    args = ["fit", "--config", TINY2, "--data.root", str(data), "--trainer.default_root_dir", str(tmp / "s2")]
    cli = ICGLightningCLI([*args, "--model.init_args.preference_ckpt", str(stage1)])
    (path,) = (tmp / "s2").rglob("*.ckpt")
    return cli, path


@pytest.mark.slow
def test_stage2_fits_validates_and_writes_a_bundle_checkpoint(stage2):
    cli, path = stage2
    metrics = cli.trainer.callback_metrics
    for key in (
        "train/contrastive_loss",
        "val/relevance_auc/relevance",
        "val/relevance_auc/aesthetic",
        "val/preference_auc",
        "val/click_auc/aesthetic",
        "val/reward/preference",
        "val/reward_corr/aesthetic__relevance",
        "norm/std/preference",
    ):
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert 0.0 <= float(metrics["val/preference_auc"]) <= 1.0
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    block = checkpoint["icg"]
    assert block["stage"] == "rewards" and block["version"] == 1
    assert block["names"] == ["aesthetic", "relevance", "preference"] and block["weights"] == [0.5, 1.0, 1.0]
    assert block["normalization_fitted"] and block["normalization"]["relevance"]["std"] > 0
    assert checkpoint["optimizer_states"], "the relevance stand-in should have been trained"
    torch.testing.assert_close(checkpoint["state_dict"]["bundle.mean"], cli.model.bundle.mean)


@pytest.mark.slow
def test_saved_bundle_reloads_with_identical_scores(stage2):
    cli, path = stage2
    loaded = load_reward_bundle(path)
    original = cli.model.bundle.eval()
    torch.manual_seed(0)
    images = torch.rand(5, 3, 32, 32)
    context = RewardContext(
        titles=["red circle", "a blue star", "", "x", "pink"], user_idx=torch.tensor([0, 1, 2, -1, 29])
    )
    with torch.no_grad():
        before, after = original(images, context), loaded(images, context)
    for name in original.names:
        torch.testing.assert_close(after.raw[name], before.raw[name], rtol=0, atol=0)
    torch.testing.assert_close(after.total, before.total, rtol=0, atol=0)


@pytest.mark.slow
def test_wrong_stage_checkpoint_is_refused_with_the_config_key(platform, stage2, capsys):
    tmp, data, _ = platform
    _, rewards_ckpt = stage2
    args = ["fit", "--config", TINY2, "--data.root", str(data), "--trainer.default_root_dir", str(tmp / "bad")]
    # jsonargparse wraps the stage's own error in its instantiation error; main prints the stage's message alone
    assert main([*args, "--model.init_args.preference_ckpt", str(rewards_ckpt)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"icg fit: model.init_args.preference_ckpt: .* was written by the 'rewards' stage", err)
    assert "Traceback" not in err and "Does not validate" not in err


def test_missing_preference_checkpoint_names_the_config_key(tmp_path, capsys):
    words = ["fit", "--config", TINY2, "--data.root", str(tmp_path), "--trainer.default_root_dir", str(tmp_path)]
    assert main(words) == 2
    assert "model.init_args.preference_ckpt" in capsys.readouterr().err


def test_real_config_fails_before_training_naming_key_and_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no weights/ here
    args = ["fit", "--config", REAL2, "--data.root", str(tmp_path), "--trainer.accelerator", "cpu"]
    assert main([*args, "--model.init_args.preference_ckpt", str(tmp_path / "s1.ckpt")]) == 2
    assert re.search(r"rewards\[0\]\.init_args\.(clip|head)_path: .*weights/", capsys.readouterr().err)


@pytest.mark.slow
def test_relevance_standin_learns_on_demo_sized_items(tmp_path):
    """The demo's relevance stand-in, fitted briefly by the stage on 300 demo items, ranks own covers first."""
    from lightning.pytorch import Trainer

    from icg.data.datamodule import ICGDataModule
    from icg.lit.rewards import RewardStage
    from icg.models.rewards.bundle import RewardBundle
    from icg.models.rewards.standins import TitleCoverRelevance

    # the demo's items (item draws do not depend on the number of users); few users keep generation fast
    data = generate_platform(tmp_path / "data", users=10, items=300, image_size=64, seed=0)
    config = yaml.safe_load(DEMO2.read_text())["model"]["init_args"]
    relevance_args = config["bundle"]["init_args"]["rewards"][1]["init_args"]
    torch.manual_seed(0)
    bundle = RewardBundle([TitleCoverRelevance(**relevance_args)])
    stage = RewardStage(
        bundle,
        optimizer=lambda p: torch.optim.AdamW(p, lr=0.003),
        relevance_holdout=config["relevance_holdout"],
        preference_val_batches=0,
    )
    datamodule = ICGDataModule(str(data), image_size=64, batch_size=64, eval_batch_size=300)
    trainer = Trainer(
        max_epochs=8, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        num_sanity_val_steps=0, check_val_every_n_epoch=8, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(stage, datamodule=datamodule)
    auc = float(trainer.callback_metrics["val/relevance_auc/relevance"])
    print(f"demo-sized relevance AUC on held-out items: {auc:.3f}")
    assert auc > 0.7, f"relevance AUC on held-out items {auc:.3f}"
