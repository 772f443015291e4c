"""Callbacks of the alignment stage: TensorBoard cover grids during training, and the cover writer of ``predict``.

Reward hacking shows first in pictures: covers turn washed-out, over-saturated or black, and collapse to one look for
every user, before the reward curves say anything (docs/stage3.md: the denoising regularizer is the guard). So
``CoverGrid`` renders the same users x items with the same noise every N steps; ``CoverWriter`` writes ``icg predict``
results as PNGs plus a ``manifest.jsonl`` with (user, item, seed, reward scores) per cover, in ``icg generate``'s
folder layout.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from torch import Tensor

from icg.generation.cover_folder import CoverFolder, ShardWriter

log = logging.getLogger(__name__)


def image_grid(images: Tensor, rows: int, pad: int = 2) -> Tensor:
    """Tile N x 3 x H x W images in [0, 1] into one 3 x H' x W' grid of ``rows`` rows (white padding)."""
    n, c, h, w = images.shape
    cols = -(-n // rows)
    grid = torch.ones(c, rows * (h + pad) + pad, cols * (w + pad) + pad)
    for i in range(n):
        r, col = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top : top + h, left : left + w] = images[i].float().cpu()
    return grid


def save_png(image: Tensor, path: Path) -> None:
    """One 3 x H x W image in [0, 1] to a PNG."""
    array = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array).save(path)


class CoverGrid(Callback):
    """Every ``every_n_steps``: TensorBoard image grid of fixed validation users x items (rows: users).

    Args:
        every_n_steps: optimizer steps between grids (also one before training).
        num_users: rows of the grid.
        num_items: columns of the grid (the reference covers are shown in an extra first row).
    """

    def __init__(self, every_n_steps: int = 50, num_users: int = 3, num_items: int = 4) -> None:
        self.every_n_steps = every_n_steps
        self.num_users = num_users
        self.num_items = num_items
        self._batch: dict[str, Any] | None = None

    def _fixed_batch(self, trainer: Trainer) -> dict[str, Any] | None:
        if self._batch is None:
            loader = trainer.datamodule.dataloader("val", "pairs", batch_size=self.num_users * self.num_items)
            pairs = next(iter(loader), None)
            if pairs is None:
                return None
            users = list(dict.fromkeys(pairs["user_idx"].tolist()))[: self.num_users]
            items = list(dict.fromkeys(pairs["item_idx"].tolist()))[: self.num_items]
            rows = [pairs["item_idx"].tolist().index(it) for it in items]
            user_ids = [pairs["user_id"][pairs["user_idx"].tolist().index(u)] for u in users]
            self._batch = {
                "user_idx": torch.tensor([u for u in users for _ in items]),
                "user_id": [u for u in user_ids for _ in items],
                "item_id": [pairs["item_id"][r] for _ in users for r in rows],
                "title": [pairs["title"][r] for _ in users for r in rows],
                "image": pairs["image"][rows].repeat(len(users), 1, 1, 1),
                "reference": pairs["image"][rows],
                "rows": len(users),
            }
        return self._batch

    @torch.no_grad()
    def _log(self, trainer: Trainer, module: LightningModule) -> None:
        if not trainer.is_global_zero or not isinstance(trainer.logger, TensorBoardLogger):
            return
        batch = self._fixed_batch(trainer)
        if batch is None:
            return
        device_batch = {k: v.to(module.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        cond, _ = module.condition(device_batch)
        seeds = [1000 + i % self.num_items for i in range(cond.batch_size)]  # one noise per item column
        images = module.generator.sample(cond, seeds, device_batch["image"], guidance_scale=1.0).cpu()
        reference = torch.nn.functional.interpolate(batch["reference"], size=images.shape[-2:], mode="bilinear")
        grid = image_grid(torch.cat([reference, images]), rows=batch["rows"] + 1)
        trainer.logger.experiment.add_image("covers/users_x_items", grid, global_step=trainer.global_step)

    def on_train_start(self, trainer: Trainer, module: LightningModule) -> None:
        self._log(trainer, module)

    def on_train_batch_end(self, trainer: Trainer, module: LightningModule, *args: Any) -> None:
        if trainer.global_step and trainer.global_step % self.every_n_steps == 0:
            self._log(trainer, module)


class CoverWriter(BasePredictionWriter):
    """Writes ``icg predict``'s covers as ``icg generate`` does: ``covers/<hh>/<user>_<item>_<hash>.png`` (distinct
    for distinct ids), each renamed into place, and one ``manifest.jsonl`` line per cover (user, item, seed, file,
    reward scores), merged from every rank's shard at the end. Covers of any pairs, resumable: ``icg generate``.

    Args:
        out_dir: output folder (created); a new run replaces its manifest.
        method: the manifest's ``method`` of the covers.
    """

    def __init__(self, out_dir: str = "runs/predict", method: str = "icg") -> None:
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir)
        self.method = method
        self.shard: ShardWriter | None = None

    def setup(self, trainer: Trainer, module: LightningModule, stage: str) -> None:
        self.folder = CoverFolder(self.out_dir, {})
        if trainer.is_global_zero:  # a fresh run replaces, never appends to, an earlier manifest
            for path in self.folder.manifest_files():
                path.unlink(missing_ok=True)
        trainer.strategy.barrier("icg-predict-prepared")
        self.shard = ShardWriter(self.folder, trainer.global_rank, self.method)

    def write_on_batch_end(
        self,
        trainer: Trainer,
        module: LightningModule,
        prediction: dict[str, Any],
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        for i, (user, item) in enumerate(zip(prediction["user_id"], prediction["item_id"], strict=True)):
            scores = {k: float(v[i]) for k, v in prediction["scores"].items()}
            row = {"user_id": user, "item_id": item, "seed": int(prediction["seed"][i]), "scores": scores}
            self.shard.write(prediction["images"][i], row)
        self.shard.flush()

    def teardown(self, trainer: Trainer, module: LightningModule, stage: str) -> None:
        if self.shard is not None:
            self.shard.close()
        trainer.strategy.barrier("icg-predict-written")
        if trainer.is_global_zero:
            self.folder.finalize(order=())
