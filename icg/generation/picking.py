"""Best of N: ICG draws N candidate covers per (user, item) and keeps the one its click reward likes best.

ICG (Bian et al., EMNLP 2025) aligns its generator with a personalized reward, the stage-1 click model
(``icg.models.preference.PreferenceModel``, scored as stage 2/3 score it through
``icg.models.rewards.preference.PreferenceReward``). The same model can also choose at inference: draw N covers per
pair, each from its own seed (``icg.generation.seeds.candidate_seeds``; candidate 0 is the pair's own seed, so N = 1 is
the cover made without picking), score each for the pair's user and keep the highest -- best-of-N sampling with a
reward model (as in WebGPT, Nakano et al. 2021). It costs N times the sampling plus N scorings per pair; only each
pair's best cover so far stays in memory unless every candidate is asked for.

The pick optimizes the very model stage 3 was trained against, so its score flatters the picked cover; judge the
gain with another click model (the evaluation's evaluator) or, on the synthetic platform, the oracle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from icg.generation.seeds import candidate_seeds
from icg.generation.users import UserTable
from icg.models.rewards.base import RewardContext
from icg.models.rewards.preference import PreferenceReward


class ClickScorer:
    """The stage-1 click model's click probability of covers for their users: what best-of-N picks by.

    A user outside the model's vocabulary is scored as its cold-start user (as stage 3's preference reward does).

    Args:
        reward: a loaded preference reward (the frozen stage-1 model and its user ids).
    """

    def __init__(self, reward: PreferenceReward) -> None:
        if not reward.loaded:
            raise ValueError("ClickScorer needs a PreferenceReward with its stage-1 model loaded")
        self.reward = reward
        self.users = UserTable.of_ids(reward.user_ids)

    @classmethod
    def from_checkpoint(cls, path: str | Path, config_key: str = "preference_ckpt") -> ClickScorer:
        """From a stage-1 checkpoint; every error names ``config_key`` and the file."""
        reward = PreferenceReward(name="click")
        reward.load_preference_checkpoint(str(path), config_key=config_key)
        return cls(reward)

    def to(self, device: torch.device | str) -> ClickScorer:
        self.reward.to(device)
        return self

    def __call__(self, images: Tensor, user_ids: Sequence[str], titles: Sequence[str]) -> Tensor:
        """Click probabilities B in (0, 1) of covers B x 3 x H x W in [0, 1] for ``user_ids`` (titles: the items')."""
        device = next(self.reward.parameters()).device  # the stage-1 model's (frozen) user tables
        user_idx = self.users.index_map([str(u) for u in user_ids]).to(device)
        with torch.no_grad():
            logits = self.reward(images.to(device).float(), RewardContext(titles=list(titles), user_idx=user_idx))
        return torch.sigmoid(logits.float())


@dataclass(frozen=True)
class BestOf:
    """How ICG picks: ``candidates`` covers per pair, scored by ``scorer``, the best kept.

    Args:
        scorer: the click model that picks (``ClickScorer.from_checkpoint(stage-1 checkpoint)``).
        candidates: N >= 1 covers per pair (N times the sampling work; 1 scores the cover made without picking).
        keep_all: also keep every candidate (B x N covers in memory instead of B).
    """

    scorer: ClickScorer
    candidates: int = 4
    keep_all: bool = False

    def __post_init__(self) -> None:
        n = self.candidates
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"candidates must be an integer >= 1, got {n!r}")


@dataclass
class PickedCovers:
    """Each pair's best of N candidates.

    Args:
        images: B x 3 x H x W, the picked cover of each pair.
        index: B, which candidate it is (0: the pair's own seed).
        scores: B, its score.
        all_scores: B x N, every candidate's score.
        all_images: B x N x 3 x H x W, every candidate (None unless kept).
    """

    images: Tensor
    index: Tensor
    scores: Tensor
    all_scores: Tensor
    all_images: Tensor | None = None


def best_of(
    draw: Callable[[list[int]], Tensor],
    score: Callable[[Tensor], Tensor],
    seeds: Sequence[int],
    candidates: int,
    keep_all: bool = False,
) -> PickedCovers:
    """Draw ``candidates`` covers per pair and keep the best-scoring one (ties: the lowest candidate index).

    Args:
        draw: ``seeds -> B x 3 x H x W`` covers, one per seed (the pairs in order).
        score: ``covers -> B`` scores (higher is better).
        seeds: the pairs' own seeds (candidate 0's).
        candidates: N >= 1.
        keep_all: also return every candidate (B x N covers in memory instead of B).
    """
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise ValueError(f"candidates must be an integer >= 1, got {candidates!r}")
    best = index = best_score = None
    every_score, every_image = [], []
    for c in range(candidates):
        images = draw(candidate_seeds(seeds, c))
        scores = score(images).detach().float().cpu().reshape(-1)
        if scores.shape[0] != images.shape[0]:
            raise ValueError(f"score gave {scores.shape[0]} scores for {images.shape[0]} covers")
        every_score.append(scores)
        if keep_all:
            every_image.append(images)
        if best is None:
            best, index, best_score = images.clone(), torch.zeros(len(scores), dtype=torch.long), scores.clone()
            continue
        better = scores > best_score  # strictly: a tie keeps the earlier candidate
        best[better.to(best.device)] = images[better.to(images.device)]
        index[better], best_score[better] = c, scores[better]
    return PickedCovers(best, index, best_score, torch.stack(every_score, dim=1),
                        torch.stack(every_image, dim=1) if keep_all else None)  # fmt: skip
