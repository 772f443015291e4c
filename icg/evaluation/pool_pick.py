"""Pool + pick: the personalization a platform already has without ICG (Bian et al., EMNLP 2025), the baseline its
per-(user, item) covers must beat (docs/evaluation.md, "Personalization itself").

Per item, a *pool* of generic covers: a method whose covers ignore the user but for their seed (ICG without users,
title-only) run at N seeds, slot ``k`` drawing the pair seed of the pseudo user ``pool/<k>``. The platform's click
model (stage 1, not the oracle) then *picks* one cover per user: the slot it scores highest for that user. A pool of
N covers costs N generated covers per item, whatever the number of users; ICG costs one per (user, item).

Slot ``k`` is the same cover in every pool of an item, so a smaller pool is a prefix of a larger one: the fixed-size
pool and the equal-cost pool (as many covers per item as ICG generates for it) share their covers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from icg.data.datamodule import ICGDataModule
from icg.data.oracle import Oracle
from icg.evaluation.evaluator import ClickModel
from icg.evaluation.methods import CoverMethod
from icg.evaluation.sample import Pair, pairs_batch

log = logging.getLogger(__name__)
POOL_USER = "pool/{slot}"  # the pseudo user id whose pair seed draws slot ``slot`` of every item's pool


def pool_batch(datamodule: ICGDataModule, slots: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """A ``pairs``-unit batch of pool slots ``(slot, item_idx)``: no user (``user_idx`` -1), and as ``user_id`` the
    slot's pseudo id, so each slot draws its own pair seed."""
    batch = pairs_batch(datamodule, [(0, item) for _, item in slots])
    batch["user_idx"] = torch.full((len(slots),), -1, dtype=torch.long)
    batch["user_id"] = [POOL_USER.format(slot=slot) for slot, _ in slots]
    return batch


def generate_pools(
    method: CoverMethod, datamodule: ICGDataModule, sizes: Mapping[int, int], batch_size: int
) -> dict[int, Tensor]:
    """``{item_idx: N x 3 x H x W}``: slots ``0 .. sizes[item] - 1`` of each item's pool of ``method``, in batches."""
    slots = [(slot, item) for item, size in sizes.items() for slot in range(size)]
    covers: dict[tuple[int, int], Tensor] = {}
    for start in range(0, len(slots), batch_size):
        chunk = slots[start : start + batch_size]
        images = method(pool_batch(datamodule, chunk)).detach().float().cpu().clamp(0, 1)
        if images.shape[0] != len(chunk) or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"a method returned covers of shape {tuple(images.shape)} for {len(chunk)} pool slots")
        covers.update(zip(chunk, images, strict=True))
    return {item: torch.stack([covers[(slot, item)] for slot in range(size)]) for item, size in sizes.items()}


@dataclass
class ScoredPool:
    """One item's pool, scored once: what the picker sees of each cover and what every user would truly do.

    Args:
        features: N x F image features of the picker click model.
        true_prob: U x N the oracle's click probability of every platform user for each cover.
    """

    features: Tensor
    true_prob: Tensor


@torch.no_grad()
def score_pools(
    pools: Mapping[int, Tensor], picker: ClickModel, oracle: Oracle, chunk: int = 512
) -> dict[int, ScoredPool]:
    """Every item's pool scored by the picker's image encoder and by the oracle for every user, in chunks of covers."""
    covers = torch.cat(list(pools.values()))
    device = next(picker.model.parameters()).device
    features = torch.cat([picker.model.encode_images(covers[s : s + chunk].to(device)).cpu()
                          for s in range(0, len(covers), chunk)])  # fmt: skip
    true_prob = torch.cat([oracle.probability_matrix(covers[s : s + chunk]) for s in range(0, len(covers), chunk)], 1)
    bounds = np.cumsum([0] + [len(c) for c in pools.values()])
    return {item: ScoredPool(features[bounds[k] : bounds[k + 1]], true_prob[:, bounds[k] : bounds[k + 1]])
            for k, item in enumerate(pools)}  # fmt: skip


@torch.no_grad()
def pick(picker: ClickModel, pool: ScoredPool, size: int, user_idx: Tensor, title: str) -> Tensor:
    """Per user (``user_idx``, DataModule indices), the slot among the pool's first ``size`` covers that the picker
    scores highest (from the pixels and the title, without the click-history term, as the preference reward)."""
    users, device = len(user_idx), next(picker.model.parameters()).device
    features = pool.features[:size].to(device).repeat(users, 1)  # user-major: (users * size) x F
    rows = picker.user_rows[user_idx.long()].to(device).repeat_interleave(size)
    logits = picker.model.score_features(features, rows, titles=[title] * (users * size))
    return logits.view(users, size).argmax(1).cpu()


def pool_pick(
    pools: Mapping[int, ScoredPool],
    pairs: Sequence[Pair],
    sizes: Mapping[int, int],
    picker: ClickModel,
    oracle_rows: Tensor,
    titles: Mapping[int, str],
) -> dict[str, np.ndarray]:
    """Per pair, the true click probability of the picked cover among the item's first ``sizes[item]`` slots, of a
    random pick (the pool's mean) and of the pool's best cover for that user (an oracle's pick: the pool's ceiling).

    Args:
        pools: ``item_idx`` -> its scored pool (at least ``sizes[item]`` covers).
        pairs: (user_idx, item_idx).
        sizes: ``item_idx`` -> the pool size used for it.
        picker: the platform's click model (stage 1).
        oracle_rows: the oracle's row of each pair's user.
        titles: ``item_idx`` -> title (for a picker that reads titles).
    """
    picked, random_pick, best = (np.empty(len(pairs)) for _ in range(3))
    by_item: dict[int, list[int]] = {}
    for k, (_, item) in enumerate(pairs):
        by_item.setdefault(item, []).append(k)
    for item, ks in by_item.items():
        size = sizes[item]
        users = torch.tensor([pairs[k][0] for k in ks])
        slots = pick(picker, pools[item], size, users, titles[item])
        true = pools[item].true_prob[oracle_rows[ks], :size].double()  # M x size
        picked[ks] = true[torch.arange(len(ks)), slots].numpy()
        random_pick[ks], best[ks] = true.mean(1).numpy(), true.amax(1).numpy()
    return {"picked": picked, "random_pick": random_pick, "best_in_pool": best}
