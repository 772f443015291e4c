"""Which held-out (user, item) pairs an evaluation of ICG (Bian et al., EMNLP 2025) scores, and their batches.

Three overlapping sets of pairs, drawn once (seeded) and shared by every method: the held-out positives of sampled
users (the table), a users x items grid (the gallery and the diversity), and the downstream candidates (each held-out
positive with its sampled negatives, for the downstream AUC/GAUC).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from icg.data.datamodule import ICGDataModule
from icg.evaluation.settings import SampleSettings

log = logging.getLogger(__name__)
Pair = tuple[int, int]  # (user_idx, item_idx) in the DataModule's vocabularies


def sample_users(datamodule: ICGDataModule, split: str, max_users: int | None, seed: int) -> np.ndarray | None:
    """A seeded sample of ``max_users`` users with held-out rows in ``split`` (sorted ``user_idx``); None: all."""
    dataset = datamodule.dataset(split, "interactions", fields=("user_idx",))
    users = np.unique(datamodule.log.user[dataset.positions])
    if max_users is None or max_users >= len(users):
        return None
    return np.sort(np.random.default_rng(seed).choice(users, size=max_users, replace=False))


def pairs_batch(datamodule: ICGDataModule, pairs: list[Pair]) -> dict[str, Any]:
    """A ``pairs``-unit batch (reference covers decoded at the DataModule's size) for arbitrary (user, item) pairs."""
    cat = datamodule.catalogue
    users, items = [u for u, _ in pairs], [i for _, i in pairs]
    return {
        "user_idx": torch.tensor(users, dtype=torch.long),
        "user_id": [str(datamodule.user_ids[u]) for u in users],
        "item_idx": torch.tensor(items, dtype=torch.long),
        "item_id": [str(cat.item_ids[i]) for i in items],
        "title": [str(cat.titles[i]) for i in items],
        "image": torch.stack([cat.decoder(cat.images[i]) for i in items]),
    }


@dataclass
class EvaluationSample:
    """The pairs of one evaluation.

    Args:
        users: the sampled held-out users (sorted ``user_idx``).
        compared: the users the click-model comparisons score (sorted ``user_idx``; None: every user).
        main_rows: the test rows of the sampled users' held-out positives (with their ``history``).
        grid_users: the gallery grid's users; ``grid_items`` its items.
        down_rows: the downstream candidates' test rows (each held-out positive, then its kept negatives).
        per_row: test rows per held-out positive (1 + the DataModule's ``eval_candidates``).
    """

    users: list[int]
    compared: np.ndarray | None
    main_rows: list[dict[str, Any]]
    grid_users: list[int]
    grid_items: list[int]
    down_rows: list[dict[str, Any]]
    per_row: int

    @property
    def main_pairs(self) -> list[Pair]:
        return [(int(r["user_idx"]), int(r["item_idx"])) for r in self.main_rows]

    @property
    def grid_pairs(self) -> list[Pair]:
        return [(u, i) for u in self.grid_users for i in self.grid_items]

    @property
    def down_pairs(self) -> list[Pair]:
        return [(int(r["user_idx"]), int(r["item_idx"])) for r in self.down_rows]

    @property
    def all_pairs(self) -> list[Pair]:
        """Every pair once, in first-seen order: the covers each method generates."""
        return list(dict.fromkeys(self.main_pairs + self.grid_pairs + self.down_pairs))


def draw_sample(dm: ICGDataModule, settings: SampleSettings) -> EvaluationSample:
    """The held-out positives of ``settings.num_users`` sampled users, the grid and the downstream candidates."""
    rows = dm.dataset("test", "interactions", fields=("user_idx", "item_idx", "click", "history"))
    per_row = rows.per_row
    base_users = dm.log.user[rows.positions]  # the user of each held-out positive (a "base" row), in order
    rng = np.random.default_rng(settings.seed)
    candidates = np.unique(base_users)
    users = sorted(rng.choice(candidates, size=min(settings.num_users, len(candidates)), replace=False).tolist())
    compared = sample_users(dm, "test", settings.max_users, settings.seed)  # None: every user (all the demo's 200)
    if compared is not None:
        compared = np.union1d(compared, users)
    bases_by_user = {u: np.flatnonzero(base_users == u).tolist() for u in users}
    main_rows = [rows[base * per_row] for u in users for base in bases_by_user[u]]
    grid_items = list(dict.fromkeys(int(r["item_idx"]) for r in main_rows))[: settings.grid_items]
    down_rows = []
    for u in users[: settings.downstream_users]:
        for base in bases_by_user[u]:
            kept = min(per_row, 1 + settings.downstream_negatives)
            down_rows += [rows[base * per_row + slot] for slot in range(kept)]
    return EvaluationSample(users, compared, main_rows, users[: settings.grid_users], grid_items, down_rows, per_row)
