"""Evaluation metrics of ICG's covers (Bian et al., EMNLP 2025) that are not rewards: fidelity, diversity, lift.

Every function takes covers as float tensors in [0, 1] (B x 3 x H x W) and returns plain numbers or per-image
tensors; nothing here has weights. docs/evaluation.md defines each metric and its range.

* ``ssim_to``: per-image SSIM between two batches (torchmetrics; the paper's peers PMG/Pigeon report it).
* ``mean_pairwise_dissimilarity``: diversity, ``1 - SSIM`` averaged over all pairs of covers of one item.
* ``title_match_accuracy``: how often a relevance scorer ranks a cover's own title above another item's title
  (an AUC on a probability-like scale, so relative drops are well defined when raw scores can be negative).
* ``cosine_to_history``: cosine similarity of a cover's features to the mean features of the user's clicked covers.
* ``bootstrap_lift``: relative lift ``mean(treatment) / mean(baseline) - 1`` with a percentile bootstrap CI over
  groups (users), seeded.
* ``bootstrap_ratio``: a ratio of means ``mean(numerator) / mean(denominator)`` with the same bootstrap (e.g. ICG's
  personal share of the faithful headroom).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

# SSIM's 11 x 11 Gaussian window needs at least that many pixels per side; smaller covers are upsampled to it.
MIN_SSIM_SIDE = 16


def _to_size(images: Tensor, side: int) -> Tensor:
    if images.shape[-1] == side and images.shape[-2] == side:
        return images
    return F.interpolate(images.float(), size=(side, side), mode="bilinear", antialias=True, align_corners=False)


def ssim_to(images: Tensor, reference: Tensor) -> Tensor:
    """Per-image SSIM (B) between ``images`` and ``reference``, both B x 3 x H x W in [0, 1].

    The pair is brought to the reference's side (at least ``MIN_SSIM_SIDE``) with antialiased bilinear resizing.
    Range [-1, 1]; 1 means identical.
    """
    if images.shape[0] != reference.shape[0]:
        raise ValueError(f"ssim_to: {images.shape[0]} images but {reference.shape[0]} references")
    side = max(int(reference.shape[-1]), MIN_SSIM_SIDE)
    a, b = _to_size(images.float(), side).clamp(0, 1), _to_size(reference.float(), side).clamp(0, 1)
    return structural_similarity_index_measure(a, b, data_range=1.0, reduction="none").reshape(-1)


def mean_pairwise_dissimilarity(images: Tensor) -> float:
    """Diversity of N >= 2 covers: mean of ``1 - SSIM`` over all unordered pairs. Range [0, 2]; 0 = all identical."""
    n = images.shape[0]
    if n < 2:
        raise ValueError(f"mean_pairwise_dissimilarity needs at least 2 images, got {n}")
    first, second = torch.triu_indices(n, n, offset=1)
    return float((1.0 - ssim_to(images[first], images[second])).mean())


def title_match_accuracy(
    score: Callable[[Tensor, list[str]], Tensor],
    images: Tensor,
    titles: Sequence[str],
    num_rounds: int = 8,
    seed: int = 0,
) -> float:
    """Fraction of (cover, other title) comparisons in which the cover's own title scores higher (ties count 1/2).

    Each round pairs every cover with the title of another item (a seeded permutation; comparisons where the other
    title equals the own title are left out). Range [0, 1]; 0.5 is chance, 1 means every cover is recognised as
    its own item's. Unlike the raw score this is on a fixed scale, so ``1 - ICG / baseline`` is a well-defined drop.

    Args:
        score: ``(images, titles) -> B`` relevance scores (e.g. a relevance reward's forward).
        images: B x 3 x H x W covers in [0, 1].
        titles: the B own titles.
        num_rounds: distractor titles drawn per cover.
        seed: seed of the permutations.
    """
    titles = list(titles)
    n = len(titles)
    if images.shape[0] != n:
        raise ValueError(f"title_match_accuracy: {images.shape[0]} images but {n} titles")
    if len(set(titles)) < 2:
        raise ValueError("title_match_accuracy needs at least two distinct titles")
    own = score(images, titles).detach().double()
    rng = np.random.default_rng(seed)
    wins, total = 0.0, 0
    for _ in range(num_rounds):
        perm = rng.permutation(n)
        other = [titles[j] for j in perm]
        keep = torch.tensor([o != t for o, t in zip(other, titles, strict=True)])
        if not keep.any():
            continue
        distractor = score(images, other).detach().double()
        wins += float((own > distractor)[keep].sum()) + 0.5 * float((own == distractor)[keep].sum())
        total += int(keep.sum())
    return wins / total if total else float("nan")


def cosine_to_history(features: Tensor, history_features: Tensor, history_mask: Tensor) -> Tensor:
    """Cosine similarity (B) of each cover's features (B x F) to the mean of its user's history (B x L x F).

    ``history_mask`` (B x L bool) marks real history entries; a row without any gives NaN. Range [-1, 1].
    """
    weights = history_mask.to(history_features.dtype).unsqueeze(-1)
    count = weights.sum(1)
    centroid = (history_features * weights).sum(1) / count.clamp_min(1.0)
    cosine = F.cosine_similarity(features.float(), centroid.float(), dim=-1)
    return torch.where(count.squeeze(-1) > 0, cosine, torch.full_like(cosine, float("nan")))


def bootstrap_lift(
    treatment: Sequence[float] | np.ndarray,
    baseline: Sequence[float] | np.ndarray,
    groups: Sequence | np.ndarray,
    num_samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Relative lift ``mean(treatment) / mean(baseline) - 1`` and a percentile bootstrap CI resampling groups.

    Treatment and baseline are paired per row (same user and item); whole groups (users) are resampled with
    replacement, so a user with several pairs counts as one unit of variation.

    Args:
        treatment: per-pair scores of the method under test (e.g. the oracle's true click probability of ICG).
        baseline: per-pair scores of the baseline on the same pairs; must have a positive mean.
        groups: per-pair group id (user id).
        num_samples: bootstrap resamples.
        confidence: central coverage of the interval.
        seed: seed of the resampling.

    Returns:
        ``{"value", "ci_low", "ci_high", "num_groups", "num_samples", "confidence"}``.
    """
    try:
        ratio = bootstrap_ratio(treatment, baseline, groups, num_samples, confidence, seed)
    except ValueError as err:
        raise ValueError(str(err).replace("bootstrap_ratio", "bootstrap_lift")) from None
    return ratio | {key: ratio[key] - 1.0 for key in ("value", "ci_low", "ci_high")}


def bootstrap_ratio(
    numerator: Sequence[float] | np.ndarray,
    denominator: Sequence[float] | np.ndarray,
    groups: Sequence | np.ndarray,
    num_samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Ratio of means ``mean(numerator) / mean(denominator)`` and a percentile bootstrap CI resampling groups.

    The same resampling as ``bootstrap_lift`` (whole groups with replacement, seeded): rows are paired, so each
    resample's ratio of sums is its ratio of means.

    Args:
        numerator: per-pair values (e.g. ICG's true click probability minus ICG-without-users').
        denominator: per-pair values on the same pairs; must have a positive mean (e.g. the faithful headroom).
        groups: per-pair group id (user id).
        num_samples: bootstrap resamples.
        confidence: central coverage of the interval.
        seed: seed of the resampling.

    Returns:
        ``{"value", "ci_low", "ci_high", "num_groups", "num_samples", "confidence"}``.
    """
    n, d = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    g = np.asarray(groups, dtype=object)
    if not (len(n) == len(d) == len(g)) or len(n) == 0:
        raise ValueError(f"bootstrap_ratio: numerator ({len(n)}), denominator ({len(d)}), groups ({len(g)}) must match")
    if d.mean() <= 0:
        raise ValueError(f"bootstrap_ratio: the denominator mean must be positive, got {d.mean()}")
    num_groups, (n_sums, d_sums) = _resampled_sums(g, (n, d), num_samples, seed)
    ratios = n_sums / np.maximum(d_sums, 1e-300)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(ratios, [alpha, 1.0 - alpha])
    return {
        "value": float(n.mean() / d.mean()),
        "ci_low": float(low),
        "ci_high": float(high),
        "num_groups": num_groups,
        "num_samples": int(num_samples),
        "confidence": float(confidence),
    }


def _resampled_sums(
    groups: np.ndarray, columns: Sequence[np.ndarray], num_samples: int, seed: int
) -> tuple[int, list[np.ndarray]]:
    """The number of groups and, per column, its sum over each of ``num_samples`` resamples of whole groups.

    A resample draws as many groups as there are, with replacement (multinomial counts per group, seeded).
    """
    _, inverse = np.unique(groups.astype(str), return_inverse=True)
    num_groups = int(inverse.max()) + 1
    sums = [np.bincount(inverse, weights=column, minlength=num_groups) for column in columns]
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(num_groups, np.full(num_groups, 1.0 / num_groups), size=num_samples)
    return num_groups, [counts @ s for s in sums]
