"""Stage 1 of ICG (Bian et al., EMNLP 2025): train the personalized preference (click) model.

``PreferenceStage`` is a thin LightningModule around ``icg.models.preference.PreferenceModel``: binary cross-entropy
on observed clicks plus the DataModule's sampled negatives; validation/test metrics AUC, GAUC, log loss, NDCG@10 and
Recall@10 (``icg.lit.metrics``) logged as ``val/*`` / ``test/*``; an injected optimizer; a tagged checkpoint that
stages 2 and 3 load by path with ``PreferenceModel.from_checkpoint``. A non-finite loss stops training with an error
naming the step and batch. ``compare_click_models`` scores the oracle and a popularity baseline on the exact test
candidates the model is scored on (docs/stage1.md).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from icg import ckpt
from icg.data.splits import TRAIN
from icg.errors import ConfigError
from icg.lit.metrics import ClickMetrics
from icg.models.preference import CHECKPOINT_STAGE, ItemFeatureCache, PreferenceModel

log = logging.getLogger(__name__)

STAGE = CHECKPOINT_STAGE
MODEL_KEY = "model.init_args.model"


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the step and the batch."""


class PreferenceStage(LightningModule):
    """Stage-1 LightningModule: BCE click training of a ``PreferenceModel`` with offline ranking metrics.

    Args:
        model: the click model (``icg.models.preference.PreferenceModel``), chosen in YAML.
        optimizer: optimizer factory applied to the trainable parameters (e.g. ``torch.optim.AdamW`` + ``lr``).
        scheduler: optional learning-rate scheduler factory, stepped once per epoch (e.g.
            ``torch.optim.lr_scheduler.CosineAnnealingLR`` with ``T_max`` = ``trainer.max_epochs``).
        user_l2: weight of the mean squared norm of the batch's user ID embeddings added to the loss: a Gaussian
            prior that shrinks users with few clicks towards the shared (population) part of the score, unlike
            optimizer weight decay, which would also shrink the item tower.
        feature_cache: with a frozen image encoder, encode each dataset cover once and reuse its features across
            epochs (``ItemFeatureCache``); ignored when the encoder trains.
        top_k: cut-off of NDCG@k and Recall@k.
        dropout_seed: seed of the model's cold-start dropout masks. Each training batch draws its mask from a
            generator seeded by (dropout_seed, global step, batch index, rank), never from the global RNG, so a run
            resumed with ``--ckpt_path`` draws exactly the masks an uninterrupted run would.
    """

    data_unit = "interactions"

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        feature_cache: bool = True,
        top_k: int = 10,
        scheduler: LRSchedulerCallable | None = None,
        user_l2: float = 0.0,
        dropout_seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(model, PreferenceModel):
            raise TypeError(f"{MODEL_KEY}: expected an icg.models.preference.PreferenceModel, got {type(model)}")
        if user_l2 < 0:
            raise ConfigError(f"model.init_args.user_l2 must be >= 0, got {user_l2}")
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler"])
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.user_l2 = user_l2
        self.dropout_seed = dropout_seed
        self.use_cache = feature_cache and model.freeze_encoder
        self.cache: ItemFeatureCache | None = None
        # Only what this model reads: with the cache full (filled at the start of every loop), covers need not be
        # decoded and collated per row at all, which is most of the cache's saving on CPU.
        fields = ["user_idx", "item_idx", "click", "group"] + ([] if self.use_cache else ["image"])
        fields += ["history"] if model.history_type != "none" else []
        fields += ["title"] if model.title_type != "none" else []
        self.data_fields = tuple(fields)
        self.val_metrics = ClickMetrics(top_k)
        self.test_metrics = ClickMetrics(top_k)
        if model.history_type != "none" and not self.use_cache:
            raise ConfigError(
                f"{MODEL_KEY}.init_args.history_type={model.history_type!r} reads the clicked covers' features from "
                "the per-item cache: it needs freeze_encoder: true and model.init_args.feature_cache: true"
            )

    # ------------------------------------------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        if datamodule is None:
            return
        if datamodule.num_users > self.model.num_users:
            raise ConfigError(
                f"{MODEL_KEY}.init_args.num_users={self.model.num_users}, but the dataset at data.root has "
                f"{datamodule.num_users} users: set num_users to at least {datamodule.num_users}"
            )
        groups, evaluable = datamodule.eval_groups("val")
        if groups and not evaluable:
            raise ConfigError(
                f"val/gauc cannot be computed: none of the {groups} val groups of data.root={datamodule.root} holds "
                f"both a click and a non-click (data.holdout={datamodule.holdout}, data.eval_candidates="
                f"{datamodule.eval_candidates}); explicit data needs data.holdout of several ratings per user "
                "(lightning_configs/real/stage1_movielens.yaml: 10), implicit data data.eval_candidates >= 1"
            )
        if self.use_cache and self.cache is None:
            self.cache = ItemFeatureCache(datamodule.num_items, self.model.feature_dim)

    def _fill_cache(self) -> None:
        """Encode every cover once, up front, so epoch 1 is as fast as the rest and histories are complete."""
        datamodule = self.trainer.datamodule
        if self.cache is None or datamodule is None or bool(self.cache.filled.all()):
            return
        for batch in datamodule.dataloader("train", "items", fields=("item_idx", "image")):
            self.cache.lookup(batch["item_idx"], batch["image"].to(self.device), self.model.encode_images)
        log.info("item feature cache: %d covers encoded once", int(self.cache.filled.sum()))

    def on_fit_start(self) -> None:
        self._fill_cache()

    def on_validation_start(self) -> None:
        self._fill_cache()

    def on_test_start(self) -> None:
        self._fill_cache()

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer([p for p in self.parameters() if p.requires_grad])
        if self.scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler(optimizer), "interval": "epoch"}}

    # ---------------------------------------------------------------------------------------------------- scoring
    def _dropout_generator(self, batch_idx: int) -> torch.Generator:
        """The cold-start dropout RNG of one training batch: a function of restorable state only."""
        key = f"{self.dropout_seed}:{self.global_step}:{batch_idx}:{self.global_rank}"
        seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") % (2**63)
        return torch.Generator(device=self.device).manual_seed(seed)

    def _logits(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> Tensor:
        images, user_idx = batch.get("image"), batch["user_idx"]
        if self.cache is not None:
            feats = self.cache.lookup(batch["item_idx"], images, self.model.encode_images).to(self.device)
        else:
            feats = self.model.encode_images(images)
        history_feats = history_mask = None
        if self.model.history_type != "none" and "history" in batch:
            history_feats, history_mask = self.cache.rows(batch["history"])
            history_feats, history_mask = history_feats.to(feats), history_mask.to(feats.device)
        titles = batch.get("title") if self.model.title_type != "none" else None
        return self.model.score_features(feats, user_idx, history_feats, history_mask, titles, generator)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        logits = self._logits(batch, self._dropout_generator(batch_idx))
        loss = F.binary_cross_entropy_with_logits(logits, batch["click"].float())
        if self.user_l2 > 0:
            loss = loss + self.user_l2 * self.model.user_penalty(batch["user_idx"].to(self.device)).mean()
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"train/loss is {loss.item()} at global step {self.global_step} (epoch {self.current_epoch}, "
                f"batch {batch_idx}; first user_idx {batch['user_idx'][:4].tolist()}, item_idx "
                f"{batch['item_idx'][:4].tolist()}): stopping instead of training a NaN model; lower the "
                "learning rate or check the inputs"
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=len(logits))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.val_metrics.update(self._logits(batch), batch["click"], batch["user_idx"], batch.get("group"))

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.test_metrics.update(self._logits(batch), batch["click"], batch["user_idx"], batch.get("group"))

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test", self.test_metrics)

    def _log_metrics(self, split: str, metrics: ClickMetrics) -> None:
        # Under DDP every rank scored only its shard. The torchmetrics parts (AUC, GAUC, NDCG, Recall) gather all
        # ranks' states in compute(); the log-loss sums are plain buffers, so they are summed here. Every rank takes
        # the same branch (the count is global), so no rank waits on a collective that another skipped.
        strategy = self.trainer.strategy if self._trainer is not None else None
        total = metrics.count.clone()
        loss_sum = metrics.logloss_sum.clone()
        if strategy is not None and self.trainer.world_size > 1:
            total = strategy.reduce(total.to(self.device), reduce_op="sum").to(total)
            loss_sum = strategy.reduce(loss_sum.to(self.device), reduce_op="sum").to(loss_sum)
        if total.item() == 0:
            metrics.reset()
            return
        values = metrics.compute()
        values["logloss"] = (loss_sum / total).float()
        # The values are already global (identical on every rank); sync_dist only averages identical numbers and
        # keeps Lightning from logging one rank's view.
        logged = {f"{split}/{name}": value.to(self.device) for name, value in values.items()}
        self.log_dict(logged, prog_bar=split == "val", sync_dist=True)
        metrics.reset()

    # ------------------------------------------------------------------------------------------------ checkpoint
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        checkpoint[ckpt.ICG_KEY] = {
            "stage": STAGE,
            "version": ckpt.ICG_CKPT_VERSION,
            "specs": {"model": self.model.spec},
            "user_ids": list(datamodule.user_ids) if datamodule is not None else [],
            "item_ids": list(datamodule.item_ids) if datamodule is not None else [],
        }


@torch.no_grad()
def compare_click_models(
    datamodule: Any,
    model: PreferenceModel | None = None,
    oracle: nn.Module | None = None,
    split: str = "test",
    top_k: int = 10,
    users: Sequence[int] | np.ndarray | None = None,
    user_rows: Tensor | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics of the model, the oracle and a popularity baseline on the same ``split`` candidates.

    Popularity scores an item by its number of clicks in the training split (the strongest user-independent
    baseline under uniform exposure); the oracle (synthetic platform only) scores with the true click probability,
    the ceiling of any click model.

    Args:
        datamodule: a set-up ``ICGDataModule``.
        model: the trained click model (left out of the table when ``None``); scored from the pixels, without
            the click-history term (``history_type="mean"`` models are scored with their ID embedding only).
        oracle: ``icg.data.oracle.Oracle`` of the dataset (left out when ``None``).
        split: ``val`` or ``test``.
        top_k: cut-off of NDCG/Recall.
        users: score only the held-out rows of these users (``user_idx``; a seeded sample keeps the comparison
            bounded at PixelRec scale, where every held-out row of 1M users would be scored); None: every user.
            Rows stream through in batches; only their scores are kept.
        user_rows: the model's user index of each DataModule ``user_idx`` (a model trained on a subset of users);
            None: the same indices.

    Returns:
        ``{"model" | "oracle" | "popularity": {"auc", "gauc", "logloss", "ndcg@k", "recall@k"}}``; log loss is
        only meaningful for the model and the oracle (popularity scores are not probabilities).
    """
    # Clicks per item in the training split, counted on the log's arrays (what summing the train rows' clicks gives,
    # without reading 90M rows one by one at Pixel1M size): sampled negatives add nothing.
    log = datamodule.log
    train = (log.part == TRAIN) & (log.item >= 0)
    counts = np.bincount(log.item[train], weights=log.click[train].astype(np.float64), minlength=datamodule.num_items)
    popularity = torch.from_numpy(counts).float()
    scorers: dict[str, Any] = {"popularity": None}
    if model is not None:
        model.eval()
        scorers["model"] = model
    if oracle is not None:
        scorers["oracle"] = oracle
    metrics = {name: ClickMetrics(top_k) for name in scorers}
    fields = ["user_idx", "item_idx", "click", "image", "group", "title"]
    if users is None:
        loader = datamodule.dataloader(split, "interactions", fields=fields)
    else:
        dataset = datamodule.dataset(split, "interactions", fields=fields)
        bases = np.flatnonzero(np.isin(log.user[dataset.positions], np.asarray(users)))
        rows = (bases[:, None] * dataset.per_row + np.arange(dataset.per_row)).ravel()
        batch_size = datamodule.eval_batch_size or datamodule.batch_size
        loader = DataLoader(Subset(dataset, rows.tolist()), batch_size=batch_size, num_workers=datamodule.num_workers)
    for batch in loader:
        item_idx = batch["item_idx"]
        pop = torch.where(item_idx >= 0, popularity[item_idx.clamp_min(0)], torch.zeros_like(popularity[:1]))
        # log1p keeps the popularity "logits" small; AUC and rankings only see the order
        metrics["popularity"].update(torch.log1p(pop), batch["click"], batch["user_idx"], batch.get("group"))
        if model is not None:
            titles = batch.get("title") if model.title_type != "none" else None
            device = next(model.parameters()).device
            model_users = batch["user_idx"] if user_rows is None else user_rows[batch["user_idx"]]
            logits = model(batch["image"].to(device), model_users.to(device), titles=titles).cpu()
            metrics["model"].update(logits, batch["click"], batch["user_idx"], batch.get("group"))
        if oracle is not None:
            prob = oracle(batch["image"], batch["user_idx"]).double().clamp(1e-7, 1 - 1e-7)
            metrics["oracle"].update(torch.logit(prob).float(), batch["click"], batch["user_idx"], batch.get("group"))
    return {name: {k: float(v) for k, v in m.compute().items()} for name, m in metrics.items()}
