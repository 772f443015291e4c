"""Stage 2 of ICG (Bian et al., EMNLP 2025): wrap, fit, calibrate and validate the reward models as one bundle.

``RewardStage`` is a thin LightningModule around ``icg.models.rewards.bundle.RewardBundle``:

* **fit** what is trainable in the bundle (rewards defining ``fit_loss``, e.g. the synthetic platform's
  ``TitleCoverRelevance``, contrastively on (title, cover) pairs; logged as ``train/contrastive_loss``) with the
  injected optimizer. A bundle with nothing trainable (the public rewards) only calibrates: run one epoch.
* **calibrate**: before each validation and before every checkpoint, each reward's normalization statistics are
  refitted on the real covers of the training split (``items`` unit), with the reward models as they are then.
* **validate** each reward against what it should know: ``val/relevance_auc/<name>`` (an item's own cover vs
  another item's cover for the same title, on items held out of the contrastive fit), ``val/preference_auc`` (the
  personalized reward on held-out clicks; ``val/click_auc/<name>`` for every reward), ``val/reward/<name>`` and
  ``val/reward_normalized/<name>`` means, ``val/reward_corr/<a>__<b>`` (Pearson between rewards on real covers),
  ``norm/mean|std/<name>``, and score histograms in TensorBoard.
* **checkpoint**: ``checkpoint["icg"]`` names the stage ``rewards`` and holds the bundle spec, names, weights and
  normalization; the state dict holds every reward's weights, so ``load_reward_bundle`` rebuilds the frozen bundle
  from this file alone (docs/stage2.md).
"""

from __future__ import annotations

import logging
import zlib
from itertools import combinations
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor
from torchmetrics.classification import BinaryAUROC

from icg.errors import ConfigError
from icg.models.rewards.base import RewardContext
from icg.models.rewards.bundle import STAGE, STATE_PREFIX, RewardBundle  # noqa: F401 - STAGE: what --ckpt_path must be
from icg.models.rewards.preference import PreferenceReward

logger = logging.getLogger(__name__)

BUNDLE_KEY = "model.init_args.bundle"
HOLDOUT_RESOLUTION = 10_000


def is_held_out(item_id: str, fraction: float) -> bool:
    """Deterministic item hold-out for the relevance check: CRC32 of the id, so it is the same on every run."""
    return zlib.crc32(str(item_id).encode("utf-8")) % HOLDOUT_RESOLUTION < fraction * HOLDOUT_RESOLUTION


def _load_preference_rewards(bundle: RewardBundle, preference_ckpt: str | None) -> None:
    """Give every ``PreferenceReward`` its stage-1 model: from the stage's ``preference_ckpt``, in one place."""
    for i, (name, reward) in enumerate(bundle.rewards.items()):
        if not isinstance(reward, PreferenceReward):
            continue
        where = f"{BUNDLE_KEY}.init_args.rewards[{i}] ('{name}')"
        if reward.loaded and preference_ckpt is not None:
            raise ConfigError(
                f"{where} already names a stage-1 checkpoint; model.init_args.preference_ckpt={preference_ckpt} "
                "too: set preference_ckpt in one place"
            )
        if not reward.loaded:
            if preference_ckpt is None:
                raise ConfigError(
                    f"{where} needs the stage-1 checkpoint: set model.init_args.preference_ckpt "
                    "(e.g. runs/demo/stage1/checkpoints/last.ckpt)"
                )
            reward.load_preference_checkpoint(preference_ckpt, config_key="model.init_args.preference_ckpt")


class RewardStage(LightningModule):
    """Stage-2 LightningModule: fit the trainable rewards, calibrate and validate the bundle, save it for stage 3.

    Args:
        bundle: the rewards and their weights (``icg.models.rewards.bundle.RewardBundle``), chosen in YAML.
        preference_ckpt: stage-1 checkpoint loaded into every ``PreferenceReward`` of the bundle that names none.
        optimizer: optimizer factory for the trainable rewards' parameters (unused when nothing is trainable).
        relevance_holdout: fraction of items (by a hash of the item id) left out of the contrastive fit and used for
            ``val/relevance_auc``; 0 validates on all items.
        normalization_batches: batches of training-split covers the normalization is fitted on (None: all).
        preference_val_batches: batches of held-out interactions scored for ``val/preference_auc`` (None: all;
            0: skip).
        seed: seed of the random users paired with covers when fitting normalization and checking relevance.
    """

    data_unit = "items"
    data_fields = ("item_idx", "item_id", "title", "image")

    def __init__(
        self,
        bundle: RewardBundle,
        preference_ckpt: str | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        relevance_holdout: float = 0.2,
        normalization_batches: int | None = None,
        preference_val_batches: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(bundle, RewardBundle):
            raise TypeError(f"{BUNDLE_KEY}: expected an icg.models.rewards.bundle.RewardBundle, got {type(bundle)}")
        if not 0.0 <= relevance_holdout < 1.0:
            raise ConfigError(f"model.init_args.relevance_holdout must be in [0, 1), got {relevance_holdout}")
        self.save_hyperparameters(ignore=["bundle", "optimizer"])
        _load_preference_rewards(bundle, preference_ckpt)
        self.bundle = bundle
        self.optimizer = optimizer
        self.relevance_holdout = relevance_holdout
        self.normalization_batches = normalization_batches
        self.preference_val_batches = preference_val_batches
        self.seed = seed
        self.trainable = bundle.trainable_rewards()
        for reward in self.trainable:
            reward.requires_grad_(True)  # built frozen like every reward; this stage is where it learns
        self.relevance_auc = torch.nn.ModuleDict({name: BinaryAUROC() for name in bundle.names})
        self._normalization_stale = True
        self._val_raw: dict[str, list[Tensor]] = {}
        self._val_norm: dict[str, list[Tensor]] = {}
        self._user_gen = torch.Generator()

    # ------------------------------------------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        if (
            stage == "fit"
            and self._trainer is not None
            and self.trainer.world_size > 1
            and not any(p.requires_grad for reward in self.trainable for p in reward.parameters())
        ):
            raise ConfigError(
                f"this reward bundle has nothing to train (only normalization is fitted), which DDP cannot run on "
                f"{self.trainer.world_size} processes: run stage 2 on one task (trainer.devices=1, "
                "trainer.num_nodes=1; sbatch --nodes=1 --ntasks-per-node=1)"
            )
        datamodule = self._datamodule()
        if datamodule is None:
            return
        for i, (name, reward) in enumerate(self.bundle.rewards.items()):
            if isinstance(reward, PreferenceReward) and list(reward.user_ids) != list(datamodule.user_ids):
                raise ConfigError(
                    f"{BUNDLE_KEY}.init_args.rewards[{i}] ('{name}'): the stage-1 checkpoint (preference_ckpt) was "
                    f"trained on {reward.num_users} users that differ from the {datamodule.num_users} users of "
                    f"data.root={datamodule.root}; train stage 1 on the same dataset"
                )

    def configure_optimizers(self) -> torch.optim.Optimizer | None:
        params = [p for reward in self.trainable for p in reward.parameters() if p.requires_grad]
        if not params:
            logger.info("reward bundle has nothing trainable: this run only fits normalization and validates")
            return None
        return self.optimizer(params)

    def _datamodule(self) -> Any:
        return self.trainer.datamodule if self._trainer is not None else None

    def _random_users(self, batch: int) -> Tensor | None:
        datamodule = self._datamodule()
        if datamodule is None or datamodule.num_users == 0:
            return None
        return torch.randint(datamodule.num_users, (batch,), generator=self._user_gen).to(self.device)

    # ------------------------------------------------------------------------------------------------------- fit
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        if not self.trainable:
            return None
        keep = [not is_held_out(i, self.relevance_holdout) for i in batch["item_id"]]
        if sum(keep) < 2:  # a contrastive loss needs at least one negative
            return None
        mask = torch.tensor(keep, device=batch["image"].device)
        images = batch["image"][mask]
        context = RewardContext(titles=[t for t, k in zip(batch["title"], keep, strict=True) if k])
        losses = {reward.name: reward.fit_loss(images, context) for reward in self.trainable}
        loss = sum(losses.values())
        self.log("train/contrastive_loss", loss, prog_bar=True, batch_size=len(images))
        if len(losses) > 1:
            for name, value in losses.items():
                self.log(f"train/contrastive_loss/{name}", value, batch_size=len(images))
        self._normalization_stale = True
        return loss

    def on_train_epoch_end(self) -> None:
        # runs before ModelCheckpoint's epoch-end save, so a checkpoint never holds stale statistics
        self._fit_normalization()

    # ------------------------------------------------------------------------------------------- normalization
    @torch.no_grad()
    def _fit_normalization(self, force: bool = False) -> dict[str, dict[str, float]] | None:
        datamodule = self._datamodule()
        if datamodule is None or not (self._normalization_stale or force):
            return None
        raw: dict[str, list[Tensor]] = {name: [] for name in self.bundle.names}
        generator = torch.Generator().manual_seed(self.seed)  # same users every refit: comparable statistics
        num_users = datamodule.num_users
        for i, batch in enumerate(datamodule.dataloader("train", "items", fields=("title", "image"))):
            if self.normalization_batches is not None and i >= self.normalization_batches:
                break
            images = batch["image"].to(self.device)
            users = torch.randint(num_users, (len(images),), generator=generator) if num_users else None
            context = RewardContext(
                titles=list(batch["title"]), user_idx=None if users is None else users.to(self.device)
            )
            for name, score in self.bundle.raw_scores(images, context).items():
                raw[name].append(score.float().cpu())
        stats = self.bundle.fit_normalization({name: torch.cat(scores) for name, scores in raw.items() if scores})
        self._normalization_stale = False
        logger.info("reward normalization fitted on training covers: %s", stats)
        return stats

    # ------------------------------------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        if not self.trainer.sanity_checking:
            self._fit_normalization()
        self._user_gen.manual_seed(self.seed + 1)
        self._val_raw = {name: [] for name in self.bundle.names}
        self._val_norm = {name: [] for name in self.bundle.names}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        images, titles = batch["image"], list(batch["title"])
        context = RewardContext(titles=titles, user_idx=self._random_users(len(images)))
        own = self.bundle(images, context)
        for name in self.bundle.names:
            self._val_raw[name].append(own.raw[name].detach().float().cpu())
            self._val_norm[name].append(own.normalized[name].detach().float().cpu())
        held = [is_held_out(i, self.relevance_holdout) or self.relevance_holdout == 0 for i in batch["item_id"]]
        if sum(held) < 2:
            return
        index = torch.tensor([i for i, h in enumerate(held) if h], device=images.device)
        # each held-out title against its own cover (positive) and the next held-out item's cover (negative)
        sub_context = RewardContext(
            titles=[titles[i] for i in index.tolist()],
            user_idx=None if context.user_idx is None else context.user_idx[index],
        )
        other = self.bundle.raw_scores(images[index.roll(1)], sub_context)
        target = torch.cat([torch.ones(len(index)), torch.zeros(len(index))]).long().to(self.device)
        for name in self.bundle.names:
            preds = torch.cat([own.raw[name][index], other[name]])
            self.relevance_auc[name].update(preds, target)

    def on_validation_epoch_end(self) -> None:
        names = self.bundle.names
        metrics: dict[str, Tensor | float] = {}
        for name in names:
            if self.relevance_auc[name].update_count:
                metrics[f"val/relevance_auc/{name}"] = self.relevance_auc[name].compute()
            self.relevance_auc[name].reset()
        raw = {n: torch.cat(v) for n, v in self._val_raw.items() if v}
        norm = {n: torch.cat(v) for n, v in self._val_norm.items() if v}
        for name, scores in raw.items():
            metrics[f"val/reward/{name}"] = scores.mean()
            metrics[f"val/reward_normalized/{name}"] = norm[name].mean()
        for a, b in combinations(raw, 2):
            if len(raw[a]) > 1:
                metrics[f"val/reward_corr/{a}__{b}"] = torch.corrcoef(torch.stack([raw[a], raw[b]]))[0, 1]
        for name, stats in self.bundle.normalization().items():
            metrics[f"norm/mean/{name}"] = stats["mean"]
            metrics[f"norm/std/{name}"] = stats["std"]
        if not self.trainer.sanity_checking:
            metrics.update(self._click_aucs())
            self._log_histograms(raw, norm)
        self.log_dict({k: torch.as_tensor(v, dtype=torch.float32) for k, v in metrics.items()})

    def _click_aucs(self) -> dict[str, Tensor]:
        """AUC of every reward as a click predictor on held-out interactions (the preference reward's is its own)."""
        datamodule = self._datamodule()
        if datamodule is None or self.preference_val_batches == 0:
            return {}
        aucs = {name: BinaryAUROC().to(self.device) for name in self.bundle.names}
        loader = datamodule.dataloader("val", "interactions", fields=("user_idx", "image", "title", "click"))
        for i, batch in enumerate(loader):
            if self.preference_val_batches is not None and i >= self.preference_val_batches:
                break
            images = batch["image"].to(self.device)
            context = RewardContext(titles=list(batch["title"]), user_idx=batch["user_idx"].to(self.device))
            target = batch["click"].to(self.device).long()
            for name, score in self.bundle.raw_scores(images, context).items():
                aucs[name].update(score, target)
        out = {}
        for name, metric in aucs.items():
            if metric.update_count:
                out[f"val/click_auc/{name}"] = metric.compute()
        preference = [n for n, r in self.bundle.rewards.items() if isinstance(r, PreferenceReward)]
        for name in preference:
            key = "val/preference_auc" if len(preference) == 1 else f"val/preference_auc/{name}"
            if f"val/click_auc/{name}" in out:
                out[key] = out[f"val/click_auc/{name}"]
        return out

    def _log_histograms(self, raw: dict[str, Tensor], norm: dict[str, Tensor]) -> None:
        for experiment in (getattr(lg, "experiment", None) for lg in self.loggers):
            if not hasattr(experiment, "add_histogram"):
                continue
            for name, scores in raw.items():
                experiment.add_histogram(f"val/score/{name}", scores, self.global_step)
                experiment.add_histogram(f"val/score_normalized/{name}", norm[name], self.global_step)

    # ------------------------------------------------------------------------------------------------ checkpoint
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._normalization_stale and self._datamodule() is not None:
            self._fit_normalization()
        # the state dict was captured before this hook: write the statistics in use now
        state = checkpoint.setdefault("state_dict", {})
        for key in ("mean", "std", "fitted"):
            state[f"{STATE_PREFIX}.{key}"] = getattr(self.bundle, key).detach().clone().cpu()
        checkpoint["icg"] = self.bundle.icg_block()
