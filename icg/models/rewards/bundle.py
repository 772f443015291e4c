"""The reward bundle of ICG's multi-reward alignment (Bian et al., EMNLP 2025): rewards, weights, normalization.

Stage 3 back-propagates a weighted sum of differentiable rewards (aesthetic, relevance, personalized preference)
through the last denoising steps (ReFL, Xu et al. 2023; DRaFT, Clark et al. 2024). Raw reward scores live on very
different scales (LAION aesthetic ~1-10, ImageReward ~N(0, 1), a click logit, a cosine x temperature), so each reward
is standardized with statistics fitted on real covers before weighting::

    normalized_i = (raw_i - mean_i) / std_i          total = sum_i weight_i * normalized_i

``RewardBundle`` holds the rewards (typed init args: a YAML list of ``class_path`` entries), their weights and the
fitted ``mean``/``std`` buffers. Stage 2 (``icg.lit.rewards.RewardStage``) fits what is trainable in it and the
normalization, and writes a stage checkpoint; ``load_reward_bundle`` rebuilds the frozen bundle from that file alone
(each reward's ``spec`` + the saved state dict) for stage 3 and evaluation.

A reward that stage 2 can fit defines ``fit_loss(images, context) -> scalar Tensor`` (e.g. the contrastive loss of
``TitleCoverRelevance``); everything else is frozen.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from icg import ckpt
from icg.errors import ClassPathError, ConfigError
from icg.models.rewards.base import Reward, RewardContext

logger = logging.getLogger(__name__)

STAGE = "rewards"
SPEC_NAME = "bundle"
# RewardStage keeps the bundle as ``self.bundle``: its weights sit under this prefix in the checkpoint.
STATE_PREFIX = "bundle"
# A reward whose scores barely vary on real covers would be blown up by a tiny std; floor it.
MIN_STD = 1e-6


class NonFiniteRewardError(FloatingPointError):
    """A reward produced NaN or Inf; the message names the reward(s) and how many scores."""


@dataclass
class RewardOutput:
    """What ``RewardBundle.forward`` returns.

    Attributes:
        raw: reward name -> B raw scores (each reward's own scale).
        normalized: reward name -> B standardized scores ``(raw - mean) / std``.
        total: B weighted sum of the normalized scores (what stage 3 maximizes).
    """

    raw: dict[str, Tensor]
    normalized: dict[str, Tensor]
    total: Tensor

    def nonfinite(self) -> dict[str, int]:
        """Reward name -> number of NaN/Inf raw scores, only for rewards that have some (empty when all finite)."""
        counts = {name: int((~torch.isfinite(score.detach())).sum()) for name, score in self.raw.items()}
        return {name: n for name, n in counts.items() if n}

    def check_finite(self, where: str = "reward bundle") -> None:
        """Raise ``NonFiniteRewardError`` naming every reward with NaN/Inf scores (stage 3 calls this per step)."""
        bad = self.nonfinite()
        if bad or not bool(torch.isfinite(self.total.detach()).all()):
            size = self.total.shape[0] if self.total.dim() else 1
            details = ", ".join(f"'{name}': {n} of {size}" for name, n in bad.items()) or "total only"
            raise NonFiniteRewardError(f"{where}: non-finite reward scores ({details})")


class RewardBundle(nn.Module):
    """Rewards + weights + per-reward normalization; ``forward(images, context) -> RewardOutput``.

    Args:
        rewards: the rewards (distinct ``name`` each; a name is a metric key and a state-dict key, so no dots).
        weights: one weight per reward for the total; default 1 each.
    """

    def __init__(self, rewards: list[Reward], weights: list[float] | None = None) -> None:
        super().__init__()
        rewards = list(rewards)
        if not rewards:
            raise ConfigError("RewardBundle.rewards: at least one reward is needed")
        names = [getattr(r, "name", None) for r in rewards]
        for i, (reward, name) in enumerate(zip(rewards, names, strict=True)):
            if not isinstance(reward, nn.Module) or not callable(reward):
                raise TypeError(f"RewardBundle.rewards[{i}]: expected a Reward module, got {type(reward).__name__}")
            if not isinstance(name, str) or not name or "." in name or "/" in name:
                raise ConfigError(f"RewardBundle.rewards[{i}] ({type(reward).__name__}): invalid name {name!r}")
            if not hasattr(type(reward), "spec") and not isinstance(getattr(reward, "spec", None), dict):
                raise TypeError(
                    f"RewardBundle.rewards[{i}] ('{name}', {type(reward).__name__}) has no spec: set "
                    "self.spec = icg.ckpt.init_spec(self, locals()) in its __init__ so the bundle can be rebuilt"
                )
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"RewardBundle.rewards: names must be distinct, repeated: {duplicates}")
        weights = [1.0] * len(rewards) if weights is None else [float(w) for w in weights]
        if len(weights) != len(rewards):
            raise ConfigError(f"RewardBundle.weights: {len(weights)} weights for {len(rewards)} rewards {names}")
        if not all(math.isfinite(w) for w in weights):
            raise ConfigError(f"RewardBundle.weights: must be finite, got {weights}")
        self.rewards = nn.ModuleDict(dict(zip(names, rewards, strict=True)))
        self.weights = weights
        self.mean: Tensor
        self.std: Tensor
        self.fitted: Tensor
        self.register_buffer("mean", torch.zeros(len(rewards)))
        self.register_buffer("std", torch.ones(len(rewards)))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.register_buffer("weight_tensor", torch.tensor(weights), persistent=False)

    def reweight(self, weights: dict[str, float], config_key: str = "weights") -> None:
        """Replace the weights of the named rewards (the others keep theirs), e.g. stage 3's ``reward_weights``."""
        unknown = sorted(set(weights) - set(self.rewards))
        if unknown:
            raise ConfigError(f"{config_key}: unknown rewards {unknown}; the bundle has {list(self.rewards)}")
        if not all(math.isfinite(float(w)) for w in weights.values()):
            raise ConfigError(f"{config_key}: weights must be finite, got {weights}")
        self.weights = [float(weights.get(name, w)) for name, w in zip(self.rewards, self.weights, strict=True)]
        self.weight_tensor.copy_(torch.tensor(self.weights))

    @property
    def spec(self) -> dict[str, Any]:
        """``{"class_path", "init_args"}`` that rebuilds the bundle: every reward's current spec and the weights.

        A property, not a snapshot: a reward may take its weights after construction (``PreferenceReward`` loaded
        by the stage from ``preference_ckpt``) and its spec changes with them.
        """
        return {
            "class_path": f"{type(self).__module__}.{type(self).__qualname__}",
            "init_args": {"rewards": [r.spec for r in self.rewards.values()], "weights": list(self.weights)},
        }

    @property
    def names(self) -> list[str]:
        """Reward names in bundle order."""
        return list(self.rewards.keys())

    @property
    def is_fitted(self) -> bool:
        """Whether ``fit_normalization`` has run (otherwise normalization is the identity)."""
        return bool(self.fitted)

    def trainable_rewards(self) -> list[Reward]:
        """Rewards that stage 2 fits: those defining ``fit_loss(images, context)``."""
        return [r for r in self.rewards.values() if callable(getattr(r, "fit_loss", None))]

    def raw_scores(self, images: Tensor, context: RewardContext) -> dict[str, Tensor]:
        """Reward name -> B raw scores (float32), differentiable w.r.t. ``images``."""
        batch = images.shape[0]
        raw = {}
        for name, reward in self.rewards.items():
            score = reward(images, context)
            if score.shape != (batch,):
                raise ValueError(
                    f"reward '{name}' ({type(reward).__name__}) returned shape {tuple(score.shape)}, "
                    f"expected ({batch},)"
                )
            raw[name] = score.float()
        return raw

    def normalize(self, raw: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Standardize raw scores with the fitted statistics."""
        return {name: (raw[name] - self.mean[i]) / self.std[i] for i, name in enumerate(self.names)}

    def normalized_score(self, name: str, images: Tensor, context: RewardContext) -> Tensor:
        """One reward's standardized scores (B), differentiable w.r.t. ``images``; the other rewards do not run."""
        if name not in self.rewards:
            raise KeyError(f"the reward bundle has no reward {name!r}; it has {self.names}")
        i = self.names.index(name)
        return (self.rewards[name](images, context).float() - self.mean[i]) / self.std[i]

    def forward(self, images: Tensor, context: RewardContext) -> RewardOutput:
        """Score images B x 3 x H x W in [0, 1]: raw and normalized per reward, and the weighted total (B)."""
        raw = self.raw_scores(images, context)
        normalized = self.normalize(raw)
        total = sum(self.weight_tensor[i] * normalized[name] for i, name in enumerate(self.names))
        return RewardOutput(raw=raw, normalized=normalized, total=total)

    @torch.no_grad()
    def fit_normalization(self, raw: Mapping[str, Tensor]) -> dict[str, dict[str, float]]:
        """Set each reward's mean/std from raw scores of real covers (every reward needs >= 2 finite scores).

        Args:
            raw: reward name -> N raw scores (e.g. concatenated over the training split).

        Returns:
            reward name -> ``{"mean", "std", "count"}`` as fitted.
        """
        missing = [n for n in self.names if n not in raw]
        if missing:
            raise ValueError(f"fit_normalization: no scores for rewards {missing} (got {sorted(raw)})")
        stats = {}
        for i, name in enumerate(self.names):
            scores = raw[name].detach().double().flatten()
            bad = int((~torch.isfinite(scores)).sum())
            if bad:
                raise NonFiniteRewardError(f"fit_normalization: reward '{name}' gave {bad} non-finite scores")
            if scores.numel() < 2:
                raise ValueError(f"fit_normalization: reward '{name}' needs at least 2 scores, got {scores.numel()}")
            mean, std = scores.mean(), scores.std(unbiased=False).clamp_min(MIN_STD)
            self.mean[i] = mean.to(self.mean.dtype)
            self.std[i] = std.to(self.std.dtype)
            stats[name] = {"mean": float(mean), "std": float(std), "count": int(scores.numel())}
        self.fitted.fill_(True)
        return stats

    def normalization(self) -> dict[str, dict[str, float]]:
        """Reward name -> ``{"mean", "std"}`` currently in use."""
        return {n: {"mean": float(self.mean[i]), "std": float(self.std[i])} for i, n in enumerate(self.names)}

    def icg_block(self) -> dict[str, Any]:
        """The ``checkpoint["icg"]`` block of a reward-bundle checkpoint (plain data, weights_only-loadable)."""
        return {
            "stage": STAGE,
            "version": ckpt.ICG_CKPT_VERSION,
            "specs": {SPEC_NAME: self.spec},
            "names": self.names,
            "weights": list(self.weights),
            "normalization": self.normalization(),
            "normalization_fitted": self.is_fitted,
        }


def bundle_from_spec(spec: dict[str, Any], key: str = "", origin: str = "") -> RewardBundle:
    """Rebuild a ``RewardBundle`` (fresh weights) from its spec: every reward from its own spec first.

    Every class path in the spec is checked (``icg.ckpt.resolve_class``) before anything is built; ``key`` and
    ``origin`` (where the spec sits, in which file) are quoted in errors.
    """
    if not isinstance(spec, dict) or "init_args" not in spec:
        raise ckpt.CheckpointError(f"not a reward-bundle spec: {spec!r:.200}")
    ckpt.check_class_paths(spec, key, origin)
    cls = ckpt.resolve_class(spec.get("class_path"), key, origin)
    if not issubclass(cls, RewardBundle):
        raise ckpt.CheckpointError(f"{spec['class_path']} is not a RewardBundle")
    init_args = dict(spec["init_args"])
    rewards_key = f"{key}.init_args.rewards" if key else "init_args.rewards"
    rewards = [ckpt.instantiate(r, f"{rewards_key}[{i}]", origin) for i, r in enumerate(init_args.pop("rewards"))]
    return cls(rewards=rewards, **init_args)


def save_reward_bundle(bundle: RewardBundle, path: str | Path) -> Path:
    """Write ``bundle`` as a reward-bundle stage checkpoint without Lightning (same layout as ``RewardStage``)."""
    state = {f"{STATE_PREFIX}.{k}": v.detach().cpu() for k, v in bundle.state_dict().items()}
    ckpt.atomic_torch_save({"state_dict": state, ckpt.ICG_KEY: bundle.icg_block()}, path)
    return Path(path)


def load_reward_bundle(path: str | Path, config_key: str = "rewards_ckpt") -> RewardBundle:
    """The frozen reward bundle saved by stage 2 (or ``save_reward_bundle``), rebuilt from that file alone.

    Args:
        path: a reward-bundle checkpoint (``stage: rewards``).
        config_key: the config key that named ``path``, quoted in every error.
    """
    checkpoint = ckpt.load_stage_checkpoint(path, STAGE, config_key)
    specs = checkpoint[ckpt.ICG_KEY].get("specs", {})
    if SPEC_NAME not in specs:
        raise ckpt.CheckpointError(f"{config_key}: {path} has no '{SPEC_NAME}' spec (has {sorted(specs)})")
    try:
        bundle = bundle_from_spec(specs[SPEC_NAME], f"{ckpt.ICG_KEY}.specs.{SPEC_NAME}", f"{config_key}: {path}")
        bundle.load_state_dict(ckpt.sub_state_dict(checkpoint["state_dict"], STATE_PREFIX), strict=True)
    except ClassPathError:
        raise  # already names the file and the key
    except (ckpt.CheckpointError, RuntimeError, TypeError, ValueError) as err:
        raise ckpt.CheckpointError(f"{config_key}: cannot rebuild the reward bundle from {path}: {err}") from err
    if not bundle.is_fitted:
        logger.warning("%s: %s has unfitted reward normalization (mean 0, std 1)", config_key, path)
    return ckpt.freeze(bundle)
