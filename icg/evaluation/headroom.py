"""Faithful headroom and the personal share of it (issue 20): how much a cover that keeps its title could gain by
being personal, and how much of that gain ICG (Bian et al., EMNLP 2025) captures. Synthetic platform only.

A *faithful* re-rendering of an item's cover keeps everything its title names (object colour, shape, light or dark,
style) and changes only what the title leaves open (``icg.data.synthetic.faithful_variants``: the backdrop hue and
the object's size). For a (user, item) pair the oracle scores every faithful variant for that user:

* best personal: the highest true click probability over the variants, for this user;
* best generic: the one variant that maximizes the mean probability over all the platform's users (one per item, the
  best "one faithful re-rendering for everyone"), its probability for this user;
* headroom: best personal - best generic (>= 0 per pair): the personal gain a faithful cover could reach.

The personal share is ``mean(p_ICG - p_without_users) / mean(headroom)`` with a bootstrap CI over users
(``icg.evaluation.metrics.bootstrap_ratio``); docs/evaluation.md, "Personalization itself".
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from icg.data.oracle import Oracle
from icg.data.synthetic import faithful_variants, item_attributes, render_cover
from icg.evaluation.metrics import bootstrap_ratio

log = logging.getLogger(__name__)
ORACLE_BATCH = 512  # images per oracle call: its features are a B x 64 x 64 x anchors tensor


@dataclass
class FaithfulTable:
    """The oracle's click probability of every platform user for every faithful re-rendering of some items.

    Args:
        probabilities: ``item_idx`` -> U x V true click probabilities (rows: the oracle's users, columns: the item's
            ``faithful_variants`` in order).
    """

    probabilities: dict[int, Tensor]

    @classmethod
    @torch.no_grad()
    def render(
        cls, oracle: Oracle, truth: dict[str, Any], item_ids: Mapping[int, str], image_size: int
    ) -> FaithfulTable:
        """Render each item's faithful variants at ``image_size`` (the evaluation's cover size) and score them.

        Args:
            oracle: the platform's click model.
            truth: ``icg.data.synthetic.read_truth(root)`` (the items' cover attributes).
            item_ids: ``item_idx`` -> the item's id in the truth.
            image_size: side of the re-renderings.
        """
        items = list(item_ids)
        variants = [faithful_variants(item_attributes(truth, item_ids[i])) for i in items]
        pixels = np.stack([render_cover(a, image_size) for row in variants for a in row])
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
        probs = torch.cat([oracle.probability_matrix(images[s : s + ORACLE_BATCH])
                           for s in range(0, len(images), ORACLE_BATCH)], dim=1)  # fmt: skip
        counts = np.cumsum([0] + [len(row) for row in variants])
        return cls({i: probs[:, counts[k] : counts[k + 1]] for k, i in enumerate(items)})

    def best(self, pairs: Sequence[tuple[int, int]], oracle_rows: Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Per pair: the best personal and the best generic true click probability (``headroom`` = their difference).

        Args:
            pairs: (user_idx, item_idx); every item must be in the table.
            oracle_rows: the oracle's row of each pair's user (``Oracle.user_index``).
        """
        personal, generic = np.empty(len(pairs)), np.empty(len(pairs))
        generic_of = {i: int(p.mean(0).argmax()) for i, p in self.probabilities.items()}  # one variant for everyone
        for k, ((_, item), row) in enumerate(zip(pairs, oracle_rows.tolist(), strict=True)):
            probs = self.probabilities[item][row]
            personal[k], generic[k] = float(probs.max()), float(probs[generic_of[item]])
        return personal, generic


def headroom_figures(personal: np.ndarray, generic: np.ndarray) -> dict[str, float]:
    """The report's ``faithful`` figures: mean best personal, mean best generic and their mean difference."""
    return {
        "best_personal": float(personal.mean()),
        "best_generic": float(generic.mean()),
        "headroom": float((personal - generic).mean()),
    }


def personal_share(
    treatment: np.ndarray,
    without_users: np.ndarray,
    headroom: np.ndarray,
    user_ids: Sequence[str],
    num_samples: int,
    seed: int,
) -> dict[str, float] | None:
    """``mean(treatment - without_users) / mean(headroom)`` with a bootstrap CI over users; None: no headroom.

    Args:
        treatment: per pair, ICG's true click probability.
        without_users: per pair, ICG-without-users' (the same pairs).
        headroom: per pair, best personal - best generic faithful probability.
        user_ids: per pair, its user (the bootstrap's groups).
        num_samples: bootstrap resamples.
        seed: seed of the resampling.
    """
    if not headroom.mean() > 0:
        return None
    return bootstrap_ratio(treatment - without_users, headroom, list(user_ids), num_samples=num_samples, seed=seed)
