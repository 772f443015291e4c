"""The one reward interface of ICG's multi-reward alignment (Bian et al., EMNLP 2025, stage 3).

Every reward maps a batch of images in [0, 1] (B×3×H×W) plus a :class:`RewardContext` to one score per image and is
differentiable with respect to the pixels (ReFL, Xu et al. 2023; DRaFT, Clark et al. 2024): preprocessing is torch
ops, the weights are frozen (``requires_grad_(False)``, eval mode), and ``forward`` never runs under
``torch.no_grad()`` so the alignment stage can back-propagate the weighted sum of rewards into the generator.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn


@dataclass
class RewardContext:
    """What a reward may need besides the images; each reward checks that what it needs is there.

    Attributes:
        titles: one item title per image (relevance rewards).
        user_idx: B long tensor of user indices, ``-1`` for unknown users (personalized rewards).
        reference: B×3×H×W reference covers in [0, 1] (fidelity rewards).
    """

    titles: list[str] | None = None
    user_idx: Tensor | None = None
    reference: Tensor | None = None


class Reward(nn.Module):
    """Base class: ``forward(images, context) -> Tensor[B]``; frozen and always in eval mode.

    Subclasses set ``name`` (the metric key, e.g. ``val/reward/aesthetic``), document their score range, load their
    weights in ``__init__`` and call :meth:`freeze` at the end of it.
    """

    name: str = "reward"

    def forward(self, images: Tensor, context: RewardContext) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def freeze(self) -> Reward:
        """Stop every parameter from taking gradients and switch to eval mode (dropout off)."""
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> Reward:
        # A LightningModule calls .train() on its whole tree each epoch; a reward's dropout must stay off anyway,
        # or its scores would be noisy and the reward gradient biased.
        return super().train(False)

    @classmethod
    def _key(cls, config_key: str | None, param: str) -> str:
        """The config key quoted in errors: ``<config_key>.<param>`` when the caller said where the reward lives."""
        return f"{config_key}.{param}" if config_key else f"{cls.__name__} {param}"


def require_titles(context: RewardContext, batch: int, where: str) -> list[str]:
    """The context's titles, checked to be one string per image; ValueError naming ``where`` otherwise."""
    titles = context.titles
    if titles is None:
        raise ValueError(f"{where}: needs RewardContext.titles (one title per image), got None")
    if len(titles) != batch or not all(isinstance(t, str) for t in titles):
        raise ValueError(f"{where}: needs {batch} title strings (one per image), got {len(titles)}")
    return list(titles)
