"""What reaches TensorBoard, read back from the event files with tensorboard's own ``EventAccumulator``.

Tiny stage-1 and stage-3 fits through the CLI with a ``TensorBoardLogger`` (stage 3 also with ``CoverGrid``): the
scalars hold what the trainer computed and obey the loss's own arithmetic, and the cover grid shows the reference
covers and exactly what the trained model generates for the grid's users and items (each item column from the noise
of seed 1000 + column, pure noise, no guidance).
"""

import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from icg.cli import ICGLightningCLI
from icg.data.datamodule import ICGDataModule
from icg.lit.callbacks import CoverGrid
from tests.helpers.cli import TINY
from tests.helpers.noise import seeded_noise

GRID_USERS, GRID_ITEMS, PAD = 2, 3, 2
PNG_STEP = 1 / 255  # add_image stores 8-bit pixels


def fit_with_tensorboard(config: str, out, *extra) -> ICGLightningCLI:
    """``icg fit`` of a tiny config with a TensorBoardLogger writing under ``out``; returns the finished CLI."""
    words = ["fit", "--config", TINY / config, "--trainer.default_root_dir", out,
             "--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger",
             "--trainer.logger.save_dir", out, "--trainer.logger.name", "tb", *extra]  # fmt: skip
    return ICGLightningCLI([str(w) for w in words])


def read_events(cli: ICGLightningCLI) -> EventAccumulator:
    events = EventAccumulator(cli.trainer.logger.log_dir, size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def scalars(events: EventAccumulator, tag: str) -> dict[int, float]:
    return {event.step: event.value for event in events.Scalars(tag)}


def test_stage1_scalars_in_the_event_file(tiny_platform, tmp_path):
    cli = fit_with_tensorboard("stage1_preference.yaml", tmp_path, "--data.root", tiny_platform)
    events = read_events(cli)
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "val/auc", "val/gauc", "val/logloss", "val/ndcg@10", "val/recall@10"} <= tags, tags
    losses = scalars(events, "train/loss")
    assert sorted(losses) == list(range(cli.trainer.global_step)) and all(0 < v < 5 for v in losses.values())
    for tag in ("val/auc", "val/gauc", "val/logloss"):
        (value,) = scalars(events, tag).values()  # one validation, at the end of the one epoch
        assert value == pytest.approx(float(cli.trainer.callback_metrics[tag]), abs=1e-6), tag


@pytest.fixture(scope="module")
def stage3_run(tiny_platform, tiny_stage1_ckpt, tiny_stage2_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage3_tb")
    cli = fit_with_tensorboard(
        "stage3_alignment.yaml", out, "--data.root", tiny_platform,
        "--model.init_args.preference_ckpt", tiny_stage1_ckpt, "--model.init_args.rewards_ckpt", tiny_stage2_ckpt,
        "--trainer.val_check_interval", "2", "--model.init_args.optimizer.init_args.lr", "0.05",  # visible change
        "--trainer.callbacks+=icg.lit.callbacks.CoverGrid", "--trainer.callbacks.every_n_steps=1",
        f"--trainer.callbacks.num_users={GRID_USERS}", f"--trainer.callbacks.num_items={GRID_ITEMS}",
    )  # fmt: skip
    return cli, read_events(cli)


def test_stage3_scalars_follow_the_loss_arithmetic(stage3_run):
    cli, events = stage3_run
    names = cli.model.rewards.names
    weights = cli.model.rewards.weights
    tags = set(events.Tags()["scalars"])
    for split in ("train", "val"):
        expected = {f"{split}/reward/total"} | {f"{split}/reward/{n}" for n in names}
        assert expected | {f"{split}/reward_normalized/{n}" for n in names} <= tags, tags
    assert {"train/loss", "train/denoise_loss", "train/grad_norm"} <= tags
    steps = sorted(scalars(events, "train/loss"))
    assert steps == [0, 1]  # tiny config: max_steps 2, log_every_n_steps 1
    total = scalars(events, "train/reward/total")
    for step in steps:
        # the total is the weighted sum of the normalized rewards; the loss adds reg_weight (1.0) x denoising loss
        normalized = [scalars(events, f"train/reward_normalized/{n}")[step] for n in names]
        weighted = sum(w * v for w, v in zip(weights, normalized, strict=True))
        assert total[step] == pytest.approx(weighted, abs=1e-5)
        loss, denoise = scalars(events, "train/loss")[step], scalars(events, "train/denoise_loss")[step]
        assert loss == pytest.approx(-total[step] + cli.model.hparams.reg_weight * denoise, abs=1e-5)
    for name in ("total", *names):
        (value,) = scalars(events, f"val/reward/{name}").values()
        assert value == pytest.approx(float(cli.trainer.callback_metrics[f"val/reward/{name}"]), abs=1e-6)


def decode(event) -> torch.Tensor:
    array = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(array).permute(2, 0, 1)


def cell(grid: torch.Tensor, row: int, col: int, size: int) -> torch.Tensor:
    top, left = PAD + row * (size + PAD), PAD + col * (size + PAD)
    return grid[:, top : top + size, left : left + size]


def test_cover_grid_shows_the_references_and_what_the_model_generates(stage3_run, tiny_platform):
    cli, events = stage3_run
    images = events.Images("covers/users_x_items")
    assert [e.step for e in images] == [0, 1, 2]  # before training, then every step
    size = cli.model.hparams.image_size
    last = decode(images[-1])
    assert last.shape == (3, (GRID_USERS + 1) * (size + PAD) + PAD, GRID_ITEMS * (size + PAD) + PAD)
    # The grid's fixed batch, rebuilt the way CoverGrid picks it: first validation users x items.
    dm = ICGDataModule(str(tiny_platform), image_size=cli.datamodule.hparams.image_size, batch_size=4)
    dm.setup("fit")
    batch = CoverGrid(num_users=GRID_USERS, num_items=GRID_ITEMS)._fixed_batch(SimpleNamespace(datamodule=dm))
    for col in range(GRID_ITEMS):  # first row: the reference covers
        torch.testing.assert_close(cell(last, 0, col, size), batch["reference"][col], rtol=0, atol=PNG_STEP + 1e-6)
    # the other rows: the trained model's covers for those users and items, each column from its item's noise
    stage = cli.model  # after the last optimizer step, the one the last grid was drawn at
    with torch.no_grad():
        cond, _ = stage.condition(batch)
        seeds = [1000 + i % GRID_ITEMS for i in range(cond.batch_size)]
        covers = stage.generate(cond, latents=seeded_noise(stage.generator.diffusion, seeds, size))
    for i in range(GRID_USERS * GRID_ITEMS):
        row, col = divmod(i, GRID_ITEMS)
        torch.testing.assert_close(cell(last, row + 1, col, size), covers[i], rtol=0, atol=PNG_STEP + 1e-5)
    assert not torch.equal(cell(last, 1, 0, size), cell(last, 2, 0, size))  # another user, another cover
    # training changed the covers by more than the tolerance above, so those checks tell the models apart
    assert (decode(images[0]) - last)[:, size + PAD :].abs().max() > 4 * PNG_STEP
