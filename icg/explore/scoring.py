"""Scores beside the explorer's covers: the stage-2 rewards, and on the synthetic platform the true click probability.

ICG (Bian et al., EMNLP 2025) aligns its adapter with a weighted sum of rewards (aesthetic, relevance, the user's
click model); the explorer shows each raw reward and the weighted total of the normalized rewards that stage 3
maximized, for the item's reference cover and for each generated cover, all for the user on screen. On the
synthetic platform the hidden click model (``icg.data.oracle.Oracle``) gives the user's true click probability.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from icg.data.oracle import Oracle
from icg.generation.users import UserTable
from icg.models.rewards.base import RewardContext
from icg.models.rewards.bundle import RewardBundle


@dataclass(frozen=True)
class ScoreRow:
    """One row of the score table.

    Args:
        name: a stable key (``reward/<name>``, ``reward/total``, ``true_click_prob``).
        label: what the page shows.
        values: column (``reference`` or a method) -> score.
        note: how to read it (range, direction, caveats).
    """

    name: str
    label: str
    values: dict[str, float] = field(default_factory=dict)
    note: str = ""


class CoverScorer:
    """Scores a few covers of one (user, item).

    Args:
        bundle: the stage-2 reward bundle (``load_reward_bundle``); None: no reward rows.
        oracle: the synthetic platform's true click model; None: no true click probability.
    """

    def __init__(self, bundle: RewardBundle | None = None, oracle: Oracle | None = None) -> None:
        self.bundle, self.oracle = bundle, oracle
        # the personalized reward indexes users by its stage-1 vocabulary (PreferenceReward.user_ids)
        vocabularies = [getattr(r, "user_ids", None) for r in (bundle.rewards.values() if bundle is not None else [])]
        users = next((v for v in vocabularies if v), [])
        self.reward_users = UserTable.of_ids(users)

    @property
    def active(self) -> bool:
        return self.bundle is not None or self.oracle is not None

    def to(self, device: torch.device | str) -> CoverScorer:
        for module in (self.bundle, self.oracle):
            if module is not None:
                module.to(device)
        return self

    @torch.no_grad()
    def score(self, covers: dict[str, Tensor], user_id: str, title: str) -> list[ScoreRow]:
        """Rows of scores of ``covers`` (column -> 3 x H x W in [0, 1], ``reference`` among them) for one user."""
        columns = list(covers)
        device = self._device()
        images = torch.stack([covers[c] for c in columns]).float().to(device)
        rows: list[ScoreRow] = []
        if self.bundle is not None:
            index = int(self.reward_users.index_map([user_id])[0])
            reference = covers.get("reference", covers[columns[0]]).float().to(device)
            context = RewardContext(
                titles=[title] * len(columns),
                user_idx=torch.full((len(columns),), index, dtype=torch.long, device=device),
                reference=reference[None].expand(len(columns), -1, -1, -1),
            )
            out = self.bundle(images, context)
            for name, reward in self.bundle.rewards.items():
                note = type(reward).__name__ + ", raw score"
                if index < 0 and getattr(reward, "user_ids", None):
                    note += f"; {user_id!r} is not among its users: the cold-start user's score"
                rows.append(ScoreRow(f"reward/{name}", name, _values(columns, out.raw[name]), note))
            weights = ", ".join(f"{w:g} x {n}" for n, w in zip(self.bundle.names, self.bundle.weights, strict=True))
            note = f"{weights}, each normalized on real covers: what stage 3 maximizes (unless its reward_weights)"
            rows.append(ScoreRow("reward/total", "weighted total", _values(columns, out.total), note))
        if self.oracle is not None:
            index = self.oracle.user_index([user_id], "fallback")
            note = "P(click) of this user under the platform's hidden click model"
            if int(index[0]) < 0:
                note = f"{user_id!r} is not a user of the platform: P(click) under the population's taste only"
            probability = self.oracle(images, index.expand(len(columns)))
            rows.append(ScoreRow("true_click_prob", "true click probability", _values(columns, probability), note))
        return rows

    def _device(self) -> torch.device:
        for module in (self.bundle, self.oracle):
            for tensor in (*module.parameters(), *module.buffers()) if module is not None else ():
                return tensor.device
        return torch.device("cpu")


def _values(columns: list[str], scores: Tensor) -> dict[str, float]:
    return {c: float(v) for c, v in zip(columns, scores.detach().float().cpu().tolist(), strict=True)}
