"""The demo's stand-in MLLM, trained: a small Qwen2-VL that reads the synthetic platform's covers and titles.

Not one of ICG's three stages (Bian et al., EMNLP 2025). ICG reads items through a frozen pretrained Qwen2-VL-class
MLLM; the synthetic platform has none, so, as it trains a stand-in for SD 1.5 (``icg.lit.base_model``), the demo trains
a stand-in MLLM on the platform's (cover, title) pairs and writes it as a local Qwen2-VL release folder that stage 3's
prompter loads by path (``mllm_path``). Each step reads every item of the batch twice, through the prompt the prompter
builds: the cover with an empty title, and the title with a blank grey cover. Two losses:

* matching (CLIP's InfoNCE) between the two reads' features at the slot positions, where the prompter's meta tokens
  sit: each cover must pick its own title in the batch, so those features carry what covers and titles share (the
  object's colour and shape, light or dark, the style);
* captioning: both reads write the title after the slots (causal LM loss on the title's tokens), which keeps it a
  language model and makes the cover alone tell the title.

Items that ``held_out_items`` picks (``holdout_fraction``) are never trained on, so a probe can score them
(``icg.evaluation.mllm_probe``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from icg import ckpt
from icg.errors import ConfigError
from icg.models.standin_mllm import StandInQwen2VL, held_out_items, matching_loss

log = logging.getLogger(__name__)
STAGE = "mllm"
BLANK = 0.5  # the grey cover of the title-only read


class StandInMLLM(LightningModule):
    """Trains the demo's stand-in MLLM and writes it to ``export_dir`` when training ends.

    Args:
        mllm: the small Qwen2-VL with its LM head, its prompt layout matching the prompter's.
        export_dir: where the local Qwen2-VL folder is written (``mllm_path`` of stage 3's prompter).
        optimizer: optimizer over all of the MLLM's weights.
        scheduler: learning-rate schedule, stepped every step (None: constant).
        matching_weight: weight of the cover-title matching loss.
        caption_weight: weight of the captioning loss.
        temperature: softmax temperature of the matching loss.
        holdout_fraction: share of items never trained on (the probe's test items).
    """

    data_unit = "items"

    def __init__(  # noqa: PLR0913  # a LightningModule constructor LightningCLI reads (model.init_args)
        self,
        mllm: StandInQwen2VL,
        export_dir: str,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        matching_weight: float = 1.0,
        caption_weight: float = 1.0,
        temperature: float = 0.2,
        holdout_fraction: float = 0.25,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["mllm", "optimizer", "scheduler"])
        checks = {
            "matching_weight": matching_weight >= 0,
            "caption_weight": caption_weight >= 0,
            "temperature": temperature > 0,
            "holdout_fraction": 0 <= holdout_fraction < 1,
        }
        bad = [f"model.init_args.{key}" for key, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"{', '.join(bad)}: weights must be >= 0, temperature > 0, holdout_fraction in [0, 1)")
        self.mllm = mllm
        self.optimizer = optimizer
        self.scheduler = scheduler

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer(self.mllm.parameters())
        if self.scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler(optimizer), "interval": "step"}}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        keep = [not held for held in held_out_items(list(batch["item_id"]), self.hparams.holdout_fraction)]
        titles = [t for t, k in zip(batch["title"], keep, strict=True) if k]
        if len(titles) < 2:  # nothing to match a cover against
            return None
        images = batch["image"][torch.tensor(keep, device=batch["image"].device)]
        b = len(titles)
        blank = torch.full_like(images, BLANK)
        caption, features = self.mllm([""] * b + titles, torch.cat([images, blank]), titles + titles)
        matching = matching_loss(features[:b], features[b:], self.hparams.temperature)
        loss = self.hparams.matching_weight * matching + self.hparams.caption_weight * caption.mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        self.log("train/matching_loss", matching, batch_size=b)
        self.log("train/caption_loss_cover", caption[:b].mean(), batch_size=b)
        self.log("train/caption_loss_title", caption[b:].mean(), batch_size=b)
        return loss

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[ckpt.ICG_KEY] = {"stage": STAGE, "version": ckpt.ICG_CKPT_VERSION, "specs": {"mllm": self.mllm.spec}}

    def on_train_end(self) -> None:
        if self.trainer.is_global_zero:
            folder = self.mllm.save_pretrained(self.hparams.export_dir)
            log.info("stand-in MLLM written to %s", folder)
