"""The click models that grade an evaluation of ICG (Bian et al., EMNLP 2025): stage 1's test figures, and the
*evaluator*, a click model trained apart from the stage-1 model that served as reward (so the optimized model is not
the grader). docs/evaluation.md, "Personalization" and "Downstream", says how each is used.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from icg.data.datamodule import EpochSampler, ICGDataModule
from icg.data.oracle import Oracle
from icg.evaluation.settings import EvaluatorSettings
from icg.generation.users import UserTable
from icg.lit.preference import compare_click_models
from icg.models.image_encoders import TinyImageEncoder
from icg.models.preference import PreferenceModel

log = logging.getLogger(__name__)


def train_evaluator(
    datamodule: ICGDataModule,
    epochs: int = 4,
    seed: int = 1,
    lr: float = 5e-3,
    batch_size: int = 256,
    max_pairs: int | None = None,
    device: torch.device | str = "cpu",
    users: np.ndarray | None = None,
) -> PreferenceModel:
    """A click model trained apart from stage 1 (other seed, other architecture) on the train split, in-process.

    Architecture: a ``PreferenceModel`` over a weight-free colour encoder (``TinyImageEncoder`` with no conv
    layers, 3 bins per colour axis), ``embed_dim=16``; item features are encoded once, then ``epochs`` passes of BCE
    on train clicks + the DataModule's resampled negatives, streamed in batches.

    Args:
        max_pairs: train on a seeded sample of at most this many train positives (each with its resampled
            negatives); None: no bound.
        device: where the model trains (and is returned).
        users: train on these users' positives only (sorted ``user_idx``; the users it will grade); None: every
            user. The model's user table then holds these users alone, at ``compact_users(users, ...)[user_idx]``:
            a 1M-row table would cost every optimizer step a dense update of all of it.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = TinyImageEncoder(input_size=32, channels=[], color_bins=3)
        num_users = datamodule.num_users if users is None else len(users)
        model = PreferenceModel(encoder, num_users=num_users, embed_dim=16, hidden_dim=32).to(device)
    rows_of = compact_users(users, datamodule.num_users).to(device)  # DataModule user_idx -> the model's
    features = torch.zeros(datamodule.num_items, model.feature_dim, device=device)
    with torch.no_grad():
        for batch in datamodule.dataloader("train", "items", fields=("item_idx", "image"), batch_size=128):
            features[batch["item_idx"].to(device)] = model.encode_images(batch["image"].to(device))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=1e-4)
    loader = train_rows(datamodule, users, max_pairs, seed, batch_size)
    model.train()
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        total, count = 0.0, 0
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model.score_features(features[batch["item_idx"]], rows_of[batch["user_idx"]])
            loss = F.binary_cross_entropy_with_logits(logits, batch["click"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, count = total + loss.item() * len(logits), count + len(logits)
        log.info("evaluator click model: epoch %d, train BCE %.4f", epoch, total / max(count, 1))
    return model.eval().requires_grad_(False)


class _SampledRows(Dataset):
    """Rows ``rows`` of an ``EpochSampler``-keyed dataset; keys ``epoch * len + i`` keep its per-epoch resampling."""

    def __init__(self, dataset: Dataset, rows: np.ndarray) -> None:
        self.dataset, self.rows = dataset, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int) -> dict:
        epoch, index = divmod(int(key), len(self.rows))
        return self.dataset[epoch * len(self.dataset) + int(self.rows[index])]


def train_rows(
    datamodule: ICGDataModule, users: np.ndarray | None, max_pairs: int | None, seed: int, batch_size: int
) -> DataLoader:
    """The evaluator's shuffled train rows: every one, or those of ``users``' positives, at most ``max_pairs``."""
    fields = ("user_idx", "item_idx", "click")
    dataset = datamodule.dataset("train", "interactions", fields=fields)
    total = len(dataset.positions)
    chosen = np.arange(total)
    if users is not None:
        chosen = chosen[np.isin(datamodule.log.user[dataset.positions], users)]
    if max_pairs is not None and len(chosen) > max_pairs:
        chosen = np.sort(np.random.default_rng(seed).choice(chosen, size=max_pairs, replace=False))
    if len(chosen) == total:  # the whole train split, as DataModule serves it
        return datamodule.dataloader("train", "interactions", fields=fields, shuffle=True, batch_size=batch_size)
    rows = (chosen[:, None] * dataset.per_row + np.arange(dataset.per_row)).ravel()
    log.info("evaluator click model: %d of %d train positives (sampled users, max_pairs)", len(chosen), total)
    sampled = _SampledRows(dataset, rows)
    return DataLoader(sampled, batch_size=batch_size, sampler=EpochSampler(len(sampled), datamodule.seed),
                      num_workers=datamodule.num_workers)  # fmt: skip


def compact_users(users: np.ndarray | None, num_users: int) -> torch.Tensor:
    """DataModule ``user_idx`` -> row of a user table that holds ``users`` alone (sorted; -1: not there, the
    fallback row); the identity when ``users`` is None."""
    if users is None:
        return torch.arange(num_users)
    rows = torch.full((num_users,), -1, dtype=torch.long)
    rows[torch.as_tensor(np.asarray(users), dtype=torch.long)] = torch.arange(len(users))
    return rows


def index_map(vocabulary: Sequence[str], datamodule: ICGDataModule) -> torch.Tensor:
    """DataModule user_idx -> a model's user_idx (-1: unknown to the model), by ``UserTable.index_map``."""
    return UserTable.of_ids(vocabulary).index_map(datamodule.user_ids)


@dataclass
class ClickModel:
    """A click model with the row of each DataModule user in its user table.

    Args:
        model: the click model (eval mode, frozen).
        user_rows: DataModule ``user_idx`` -> the model's user row (-1: the fallback row).
        source: where it came from (the report's ``evaluator.source``).
    """

    model: PreferenceModel
    user_rows: torch.Tensor
    source: str


def stage1_figures(
    dm: ICGDataModule, stage1_ckpt: str | Path, oracle: Oracle | None, users: np.ndarray | None, device
) -> tuple[ClickModel, dict[str, Any]]:
    """Stage 1's click model and its test figures beside the oracle's and popularity's (the report's ``stage1``)."""
    model, ids = PreferenceModel.from_checkpoint(stage1_ckpt, "stage1_ckpt")
    model.to(device)
    stage1 = ClickModel(model, index_map(ids or dm.user_ids, dm), str(stage1_ckpt))
    table = compare_click_models(dm, model, oracle, users=users, user_rows=stage1.user_rows)
    figures = {
        "auc": table["model"]["auc"],
        "gauc": table["model"]["gauc"],
        "oracle_auc": table["oracle"]["auc"] if oracle is not None else None,
        "oracle_gauc": table["oracle"]["gauc"] if oracle is not None else None,
        "popularity_auc": table["popularity"]["auc"],
        "popularity_gauc": table["popularity"]["gauc"],
    }
    return stage1, figures


def load_evaluator(
    dm: ICGDataModule, settings: EvaluatorSettings, users: np.ndarray | None, seed: int, device
) -> tuple[ClickModel, dict[str, Any]]:
    """The evaluator (loaded from ``settings.checkpoint`` or trained here on ``users``) and its test figures."""
    if settings.checkpoint is not None:
        model, ids = PreferenceModel.from_checkpoint(settings.checkpoint, "evaluator_ckpt")
        model = model.to(device)
        evaluator = ClickModel(model, index_map(ids or dm.user_ids, dm), str(settings.checkpoint))
    else:
        model = train_evaluator(dm, epochs=settings.epochs, seed=seed, max_pairs=settings.max_pairs, device=device,
                                users=users)  # fmt: skip
        # its user table holds the compared users alone
        evaluator = ClickModel(model, compact_users(users, dm.num_users), "trained in-process (train_evaluator)")
    table = compare_click_models(dm, evaluator.model, users=users, user_rows=evaluator.user_rows)["model"]
    return evaluator, {"source": evaluator.source, "auc": table["auc"], "gauc": table["gauc"]}
