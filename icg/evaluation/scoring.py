"""Scores of generated covers on the paper's axes (ICG, Bian et al., EMNLP 2025); docs/evaluation.md defines each.

* quality: the aesthetic reward; ImageReward when the reward bundle holds one (its weights were supplied);
* fidelity: the relevance reward and its title-match accuracy; CLIP image-title / image-reference similarity when
  ``clip_path`` is given; SSIM to the reference (no weights); LPIPS when an ``lpips`` scorer is given;
* personalization: the held-out user's click probability under the *evaluator* click model
  (``icg.evaluation.evaluator``); on the synthetic platform the oracle's true click probability; the stage-2
  preference reward (the optimized one, shown for reference); similarity to the user's clicked covers; diversity
  across users for the same item.

A metric whose weights are absent is missing from the scores and named, with the reason, by ``unavailable_metrics``;
it is never faked.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from icg.data.datamodule import ICGDataModule
from icg.data.oracle import Oracle
from icg.evaluation.evaluator import ClickModel
from icg.evaluation.metrics import bootstrap_lift, cosine_to_history, mean_pairwise_dissimilarity, ssim_to
from icg.evaluation.settings import ScoringSettings
from icg.models.preference import PreferenceModel
from icg.models.rewards.base import RewardContext
from icg.models.rewards.bundle import RewardBundle, load_reward_bundle


class PairScorer:
    """Every per-pair metric of a set of covers; optional scorers are None when their weights are absent.

    Args:
        bundle: the stage-2 reward bundle (None: its metrics unavailable).
        evaluator: the grading click model; ``stage1_users`` maps DataModule users to the bundle's preference reward.
        oracle: the synthetic platform's hidden truth (None on real data).
        clip: ``{"title": ..., "reference": ...}`` CLIP relevance scorers (None: unavailable).
        lpips: ``(images, reference) -> B`` LPIPS distances (None: unavailable).
        names: the bundle's aesthetic, relevance, preference and ImageReward reward names (None: not there).
        device: where the bundle, CLIP and the evaluator run.
    """

    def __init__(self, bundle, evaluator: ClickModel, stage1_users, oracle, clip, lpips, names,
                 device: torch.device | str = "cpu"):  # fmt: skip
        self.bundle, self.evaluator, self.oracle = bundle, evaluator, oracle
        self.stage1_users = stage1_users
        self.clip, self.lpips = clip, lpips
        self.aesthetic, self.relevance, self.preference, self.imagereward = names
        self.device = torch.device(device)

    @classmethod
    def load(cls, rewards: RewardBundle | str | Path | None, evaluator: ClickModel, stage1_users: torch.Tensor,
             oracle: Oracle | None, settings: ScoringSettings, device) -> PairScorer:  # fmt: skip
        """The scorer with the reward bundle (or its checkpoint) and ``settings``' CLIP and LPIPS, on ``device``."""
        bundle = load_reward_bundle(rewards, "rewards") if isinstance(rewards, str | Path) else rewards
        if bundle is not None:
            bundle.to(device)
        names = (*settings.reward_names, imagereward_name(bundle))
        clip = None
        if settings.clip_path is not None:
            from icg.models.rewards.clip_relevance import ClipRelevance

            clip = {
                mode: ClipRelevance(str(settings.clip_path), mode=mode, config_key="clip_path").to(device)
                for mode in ("title", "reference")
            }
        return cls(bundle, evaluator, stage1_users, oracle, clip, settings.lpips, names, device)

    @torch.no_grad()
    def per_pair(self, images: torch.Tensor, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Metric name -> B scores (only the metrics that are available), on the CPU."""
        out: dict[str, torch.Tensor] = {}
        cpu_images, cpu_reference = images, batch["image"]
        images, reference = images.to(self.device), cpu_reference.to(self.device)
        titles, user_idx = batch["title"], batch["user_idx"]
        if self.bundle is not None:
            stage1_users = self.stage1_users[user_idx].to(self.device)
            context = RewardContext(titles=titles, user_idx=stage1_users, reference=reference)
            raw = self.bundle(images, context).raw
            for metric, name in (
                ("aesthetic", self.aesthetic),
                ("relevance", self.relevance),
                ("preference_reward", self.preference),
                ("imagereward", self.imagereward),
            ):
                if name is not None and name in raw:
                    out[metric] = raw[name].float().cpu()
        if self.clip is not None:
            out["clip_title"] = self.clip["title"](images, RewardContext(titles=titles)).float().cpu()
            out["clip_reference"] = self.clip["reference"](images, RewardContext(reference=reference)).float().cpu()
        out["ssim_reference"] = ssim_to(cpu_images, cpu_reference)
        if self.lpips is not None:
            out["lpips_reference"] = torch.as_tensor(self.lpips(cpu_images, cpu_reference)).float().reshape(-1).cpu()
        if self.oracle is not None:  # the synthetic platform's truth stays on the CPU
            out["true_click_prob"] = self.oracle(cpu_images, self.oracle.user_index(batch["user_id"], "fallback"))
        logits = self.evaluator.model(images, self.evaluator.user_rows[user_idx].to(self.device))
        out["evaluator_click_prob"] = torch.sigmoid(logits).float().cpu()
        return out

    def relevance_score(self) -> Callable | None:
        """``(images, titles) -> B`` relevance scores for the title-match accuracy (None: no relevance reward)."""
        if self.bundle is None or self.relevance not in self.bundle.rewards:
            return None
        reward = self.bundle.rewards[self.relevance]
        return lambda images, titles: reward(images.to(self.device), RewardContext(titles=list(titles))).cpu()

    def unavailable(self) -> dict[str, str]:
        """Metric -> why it is unavailable, for every metric this scorer cannot give."""
        return unavailable_metrics(self.bundle, (self.aesthetic, self.relevance, self.preference, self.imagereward),
                                   self.clip, self.lpips, self.oracle, self.relevance_score() is not None)  # fmt: skip


def unavailable_metrics(bundle, names, clip, lpips, oracle, have_relevance) -> dict[str, str]:
    """Metric -> why it is unavailable (its weights or the oracle are absent)."""
    missing: dict[str, str] = {}
    aesthetic, relevance, preference, imagereward = names
    in_bundle = set(bundle.rewards) if bundle is not None else set()
    if aesthetic not in in_bundle:
        missing["aesthetic"] = f"no reward named {aesthetic!r} in the reward bundle"
    if imagereward is None:
        missing["imagereward"] = "no ImageReward weights (the reward bundle holds no ImageRewardRelevance)"
    if relevance not in in_bundle:
        missing["relevance"] = f"no reward named {relevance!r} in the reward bundle"
    if not have_relevance:
        missing["title_match_acc"] = "needs the relevance reward"
    if preference not in in_bundle:
        missing["preference_reward"] = f"no reward named {preference!r} in the reward bundle"
    if clip is None:
        reason = "no CLIP weights given (clip_path)"
        missing["clip_title"] = missing["clip_reference"] = reason
    if lpips is None:
        missing["lpips_reference"] = "no LPIPS backbone weights given (lpips_backbone); nothing is downloaded"
    if oracle is None:
        missing["true_click_prob"] = "no hidden truth: only the synthetic platform has an oracle"
        missing["true_click_prob_candidates"] = missing["true_click_prob"]
        missing["downstream_auc"] = missing["downstream_gauc"] = (
            "needs the clicks users would make on the covers shown (the synthetic platform's oracle); see *_logged"
        )
    return missing


def imagereward_name(bundle: RewardBundle | None) -> str | None:
    """The name of the bundle's ImageReward reward (None: it holds none)."""
    if bundle is None:
        return None
    from icg.models.rewards.imagereward import ImageRewardRelevance

    return next((n for n, r in bundle.rewards.items() if isinstance(r, ImageRewardRelevance)), None)


def history_features(dm: ICGDataModule, evaluator: PreferenceModel, history: torch.Tensor):
    """Evaluator image features (P x L x F) of the clicked covers in ``history`` (item_idx, -1 padded) + mask."""
    mask = history >= 0
    items = sorted({int(i) for i in history[mask].tolist()})
    feats = torch.zeros(*history.shape, evaluator.feature_dim)
    if items:
        with torch.no_grad():
            encoded = {}
            for start in range(0, len(items), 64):
                chunk = items[start : start + 64]
                images = torch.stack([dm.catalogue.decoder(dm.catalogue.images[i]) for i in chunk])
                device = next(evaluator.parameters()).device
                encoded.update(zip(chunk, evaluator.encode_images(images.to(device)).cpu(), strict=True))
        for p, slot in mask.nonzero().tolist():
            feats[p, slot] = encoded[int(history[p, slot])]
    return feats, mask


def history_similarity(evaluator: PreferenceModel, images: torch.Tensor, history: tuple) -> torch.Tensor:
    """Cosine similarity of each cover's evaluator features to its user's clicked covers (``history_features``)."""
    device = next(evaluator.parameters()).device
    with torch.no_grad():
        return cosine_to_history(evaluator.encode_images(images.to(device)).cpu(), *history)


def diversity(images: torch.Tensor, pairs: list[tuple[int, int]], items: list[int]) -> float:
    """Mean over ``items`` of the pairwise dissimilarity of the covers of that item (one per grid user)."""
    by_item = [images[[k for k, (_, i) in enumerate(pairs) if i == item]] for item in items]
    return float(np.mean([mean_pairwise_dissimilarity(x) for x in by_item]))


def nanmean(values: torch.Tensor) -> float | None:
    """Mean of the finite values (None: there are none)."""
    values = values.double()
    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if len(finite) else None


def headline(table: dict, per_pair: dict, user_ids: list[str], oracle: Oracle | None, settings: ScoringSettings,
             seed: int, unavailable: dict[str, str]) -> tuple[dict[str, Any], float | None]:  # fmt: skip
    """The report's ``lift`` (treatment over baseline in true click probability, bootstrap CI over users) and
    ``relevance_drop`` (1 - title-match accuracy ratio); what is missing goes into ``unavailable``."""
    treatment, baseline = settings.treatment, settings.baseline
    lift: dict[str, Any] = {"true_click_prob": None, "ci_low": None, "ci_high": None}
    if oracle is not None and treatment in per_pair and baseline in per_pair:
        result = bootstrap_lift(
            per_pair[treatment]["true_click_prob"].numpy(),
            per_pair[baseline]["true_click_prob"].numpy(),
            user_ids,
            num_samples=settings.bootstrap_samples,
            seed=seed,
        )
        lift = {"true_click_prob": result.pop("value"), **result, "treatment": treatment, "baseline": baseline}
    else:
        unavailable["lift"] = f"needs the oracle and methods named {treatment!r} and {baseline!r}"
    relevance_drop = None
    acc_t, acc_b = (table.get(n, {}).get("title_match_acc") for n in (treatment, baseline))
    if acc_t is not None and acc_b:
        relevance_drop = 1.0 - acc_t / acc_b
    else:
        unavailable["relevance_drop"] = f"needs title_match_acc of {treatment!r} and {baseline!r}"
    return lift, relevance_drop
