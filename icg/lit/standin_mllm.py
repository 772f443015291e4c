"""The demo's stand-in MLLM, trained: a small Qwen2-VL that reads the synthetic platform's covers and titles.

Not one of ICG's three stages (Bian et al., EMNLP 2025). ICG reads items through a frozen pretrained Qwen2-VL-class
MLLM; the synthetic platform has none, so, as it trains a stand-in for SD 1.5 (``icg.lit.base_model``), the demo trains
a stand-in MLLM and writes it as a local Qwen2-VL release folder that stage 3's prompter loads by path
(``mllm_path``). Each step reads the batch's items and as many freshly drawn items of the platform's world
(``icg.data.synthetic.drawn_covers``: a real MLLM has read far more than one catalogue, and on 225 items alone this
one learnt the items by heart, not to read), three times each, through the prompt the prompter builds: the title with
the cover, the cover with an empty title, the title with a blank grey cover. At every slot (where the prompter's meta
tokens sit) its LM head must name the title's words (``naming_loss``), so the slots' features carry the title's
colour and shape words, read from the title or seen on the cover.

Items that ``held_out_items`` picks (``holdout_fraction``) are never trained on, so a probe can score them
(``icg.evaluation.mllm_probe``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from icg import ckpt
from icg.data.synthetic import drawn_covers
from icg.errors import ConfigError
from icg.models.standin_mllm import StandInQwen2VL, held_out_items, naming_loss

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
        drawn_per_step: freshly drawn items of the platform's world read each step besides the batch's (0: none).
        draw_seed: seeds those draws.
        holdout_fraction: share of the platform's items never trained on (the probe's test items).
    """

    data_unit = "items"

    def __init__(  # noqa: PLR0913  # a LightningModule constructor LightningCLI reads (model.init_args)
        self,
        mllm: StandInQwen2VL,
        export_dir: str,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        drawn_per_step: int = 8,
        draw_seed: int = 0,
        holdout_fraction: float = 0.25,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["mllm", "optimizer", "scheduler"])
        checks = {"drawn_per_step": drawn_per_step >= 0, "holdout_fraction": 0 <= holdout_fraction < 1}
        bad = [f"model.init_args.{key}" for key, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"{', '.join(bad)}: drawn_per_step must be >= 0, holdout_fraction in [0, 1)")
        self.mllm = mllm
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.draws = np.random.default_rng(draw_seed)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer(self.mllm.parameters())
        if self.scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler(optimizer), "interval": "step"}}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        keep = [not held for held in held_out_items(list(batch["item_id"]), self.hparams.holdout_fraction)]
        titles = [t for t, k in zip(batch["title"], keep, strict=True) if k]
        images = batch["image"][torch.tensor(keep, device=batch["image"].device)]
        if self.hparams.drawn_per_step:
            drawn_titles, drawn = drawn_covers(self.hparams.drawn_per_step, self.draws, images.shape[-1])
            titles, images = titles + drawn_titles, torch.cat([images, drawn.to(images)])
        b = len(titles)
        if not b:
            return None
        logits = self.mllm(titles + [""] * b + titles, torch.cat([images, images, torch.full_like(images, BLANK)]))
        per_row = naming_loss(logits, self.mllm.naming_targets(titles).to(logits.device).repeat(3, 1))
        loss = per_row.mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        for i, read in enumerate(("title_cover", "cover", "title")):
            self.log(f"train/naming_loss_{read}", per_row[i * b : (i + 1) * b].mean(), batch_size=b)
        return loss

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[ckpt.ICG_KEY] = {"stage": STAGE, "version": ckpt.ICG_CKPT_VERSION, "specs": {"mllm": self.mllm.spec}}

    def on_train_end(self) -> None:
        if self.trainer.is_global_zero:
            folder = self.mllm.save_pretrained(self.hparams.export_dir)
            log.info("stand-in MLLM written to %s", folder)
