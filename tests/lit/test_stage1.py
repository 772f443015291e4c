"""Stage 1 end to end on a tiny synthetic platform: CLI fit, checkpoint contract, NaN guard, beats popularity."""

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from icg import ckpt
from icg.cli import main
from icg.data.datamodule import ICGDataModule
from icg.data.oracle import Oracle
from icg.data.synthetic import generate_platform
from icg.lit.preference import NonFiniteLossError, PreferenceStage, compare_click_models
from icg.models.image_encoders import TinyImageEncoder
from icg.models.preference import PreferenceModel

TINY_CONFIG = Path(__file__).resolve().parents[2] / "lightning_configs" / "tiny" / "stage1_preference.yaml"


@pytest.fixture(scope="module")
def platform(tmp_path_factory) -> Path:
    return generate_platform(tmp_path_factory.mktemp("stage1") / "data", users=30, items=60, image_size=32)


def make_stage(num_users: int = 30, lr: float = 0.01) -> PreferenceStage:
    torch.manual_seed(0)
    encoder = TinyImageEncoder(input_size=16, channels=[8], color_bins=3)
    model = PreferenceModel(encoder, num_users=num_users, embed_dim=8, hidden_dim=32)
    return PreferenceStage(model, optimizer=lambda params: torch.optim.AdamW(params, lr=lr))


def make_datamodule(root: Path) -> ICGDataModule:
    # str, not Path: the DataModule saves its hparams in the checkpoint, which must load with weights_only=True
    return ICGDataModule(str(root), image_size=32, batch_size=64, eval_candidates=10, seed=0)


def make_trainer(tmp_path: Path, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=tmp_path, **kwargs,
    )  # fmt: skip


def fit_stage(platform: Path, root: Path, epochs: int):
    """A stage fitted on the tiny platform, its DataModule and a saved checkpoint."""
    stage, datamodule = make_stage(), make_datamodule(platform)
    trainer = make_trainer(root, max_epochs=epochs, num_sanity_val_steps=0, check_val_every_n_epoch=epochs)
    trainer.fit(stage, datamodule=datamodule)
    path = root / "stage1.ckpt"
    trainer.save_checkpoint(path)
    return stage, datamodule, path


@pytest.fixture(scope="module")
def fitted(platform, tmp_path_factory):
    return fit_stage(platform, tmp_path_factory.mktemp("fit"), epochs=1)


def test_cli_fit_tiny_config(platform, tmp_path):
    main(
        ["fit", "--config", str(TINY_CONFIG), "--data.root", str(platform), "--trainer.default_root_dir", str(tmp_path)]
    )
    checkpoints = list((tmp_path / "checkpoints").glob("*.ckpt"))
    assert len(checkpoints) == 1
    model, user_ids = PreferenceModel.from_checkpoint(checkpoints[0])
    assert model.history_type == "mean" and model.title_type == "hashed" and len(user_ids) == 30


def test_checkpoint_round_trip(fitted):
    stage, datamodule, path = fitted
    raw = torch.load(path, map_location="cpu", weights_only=True)  # plain data only
    assert raw["icg"]["stage"] == "preference" and raw["icg"]["user_ids"] == list(datamodule.user_ids)
    model, user_ids = PreferenceModel.from_checkpoint(path, "model.init_args.preference_ckpt")
    assert user_ids == list(datamodule.user_ids)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    images, users = torch.rand(4, 3, 32, 32), torch.tensor([0, 3, -1, 29])
    stage.model.eval()
    assert torch.allclose(model(images, users), stage.model(images, users), atol=1e-6)
    assert torch.allclose(model.user_embedding(users), stage.model.user_embedding(users))


def test_wrong_stage_checkpoint_is_refused(fitted, tmp_path):
    raw = torch.load(fitted[2], map_location="cpu", weights_only=True)
    raw["icg"]["stage"] = "rewards"
    torch.save(raw, tmp_path / "rewards.ckpt")
    with pytest.raises(ckpt.CheckpointError, match=r"preference_ckpt.*'rewards' stage.*'preference' stage"):
        PreferenceModel.from_checkpoint(tmp_path / "rewards.ckpt", "preference_ckpt")


@pytest.mark.slow  # ~8 s on 2 busy cores
def test_short_fit_beats_popularity_and_closes_part_of_the_gap_to_the_oracle(platform, tmp_path):
    stage, datamodule, _ = fit_stage(platform, tmp_path, epochs=25)
    table = compare_click_models(datamodule, stage.model, Oracle.from_dataset(platform), split="test")
    model, popularity, oracle = table["model"], table["popularity"], table["oracle"]
    assert model["auc"] > popularity["auc"] + 0.03, table
    assert model["gauc"] > popularity["gauc"], table
    # The oracle scores with the true click probability: no click model can beat it on every metric, and a model
    # that did would be reading the answer (a leak between splits, or the oracle scoring the wrong covers).
    assert oracle["auc"] > model["auc"] and oracle["gauc"] > model["gauc"], table
    assert oracle["logloss"] < model["logloss"], table
    # ... and the model closes a real part of the gap from popularity to the oracle: measured 0.61 of it in AUC
    # after 25 epochs on the platform with backdrop hues (0.35 after 15, 0.54 after 40; the platform before them:
    # 0.58 after 15, 0.08 after one epoch, which fails here).
    share = (model["auc"] - popularity["auc"]) / (oracle["auc"] - popularity["auc"])
    assert share > 0.4, (share, table)
    # the stage's own test loop scores the same candidates
    results = make_trainer(Path(datamodule.root)).test(stage, datamodule=datamodule, verbose=False)[0]
    assert results["test/auc"] == pytest.approx(model["auc"], abs=1e-4)
    assert results["test/gauc"] == pytest.approx(model["gauc"], abs=1e-4)
    assert set(results) >= {"test/logloss", "test/ndcg@10", "test/recall@10"}


def test_nan_loss_stops_with_step_and_batch(platform, tmp_path):
    stage = make_stage()
    with torch.no_grad():
        stage.model.item_bias.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"global step 0 \(epoch 0, batch 0"):
        make_trainer(tmp_path, max_epochs=1, num_sanity_val_steps=0).fit(stage, datamodule=make_datamodule(platform))


def test_too_few_users_in_config_is_named(platform, tmp_path):
    with pytest.raises(ValueError, match=r"num_users=5.*30 users"):
        make_trainer(tmp_path, max_epochs=1).fit(make_stage(num_users=5), datamodule=make_datamodule(platform))


def test_user_l2_shrinks_user_embeddings_and_scheduler_steps_per_epoch(platform, tmp_path):
    norms = {}
    for user_l2 in (0.0, 5.0):
        stage = make_stage()
        stage.user_l2 = user_l2
        stage.scheduler = lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        trainer = make_trainer(tmp_path, max_epochs=2, num_sanity_val_steps=0, limit_val_batches=0)
        trainer.fit(stage, datamodule=make_datamodule(platform))
        assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.01 * 0.5**2)  # once per epoch
        norms[user_l2] = stage.model.user_embedding_table.weight[:30].norm().item()
    assert norms[5.0] < 0.5 * norms[0.0], norms
    with pytest.raises(ValueError, match="user_l2"):
        PreferenceStage(make_stage().model, user_l2=-1.0)
