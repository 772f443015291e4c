"""Personalization against fidelity as ICG's user guidance grows: one curve over the scale.

ICG (Bian et al., EMNLP 2025) makes covers that fit the item and the user; user guidance
(``icg.diffusion.sampler.guided_predictor``) turns the user's part up at sampling time, from 1 (the cover as trained).
On the synthetic platform the truth is known, so what that buys and costs is measurable: per scale, the mean true click
probability of the covers for their users (the platform's ``Oracle``) and their title-match accuracy under the
stage-2 relevance reward (``icg.evaluation.metrics.title_match_accuracy``, as the evaluation's ``title_match_acc``).

Cheap on purpose: one batch of pairs, no gradient, the same conditioning and seeds at every scale, so the scale is the
only thing that changes between points (each point costs one batch's sampling; 2 denoiser rows per cover off 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from icg.data.datamodule import ICGDataModule
from icg.data.oracle import Oracle
from icg.evaluation.metrics import title_match_accuracy
from icg.evaluation.sample import Pair, pairs_batch
from icg.generation.generator import CoverGenerator, check_user_guidance, reference_batch

DEFAULT_SCALES = (1.0, 2.0, 4.0, 8.0)


@torch.no_grad()
def guidance_curve(
    generator: CoverGenerator,
    datamodule: ICGDataModule,
    pairs: Sequence[Pair],
    oracle: Oracle,
    title_score: Callable[[Tensor, list[str]], Tensor],
    scales: Sequence[float] = DEFAULT_SCALES,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Mean true click probability and title-match accuracy of ICG's covers of ``pairs`` at each user-guidance scale.

    Args:
        generator: a trained ICG (its steps, guidance scale, strength and seeds; only the user guidance varies).
        datamodule: the DataModule (set up) whose vocabularies ``pairs`` index; it decodes the reference covers.
        pairs: ``(user_idx, item_idx)`` pairs sampled as one batch, so keep it small (16 to 64); at least two
            distinct titles (the title match compares each cover with other items' titles).
        oracle: the synthetic platform's true click model; a user it does not know is scored with the population's
            taste.
        title_score: ``(images, titles) -> B`` relevance scores, e.g. the evaluation's
            ``PairScorer.relevance_score()`` (the stage-2 relevance reward).
        scales: user-guidance scales, each a finite number >= 0 (1: the cover as trained).
        seed: seed of the title match's distractor titles (the same at every scale).

    Returns:
        one row per scale, in order: ``{"user_guidance", "true_click_prob", "title_match_acc"}``; probability and
        accuracy in [0, 1] (0.5 is chance for the accuracy).
    """
    for scale in scales:
        check_user_guidance(scale, "scales")
    if not pairs:
        raise ValueError("guidance_curve: pairs is empty; give one batch of (user_idx, item_idx) pairs")
    batch = pairs_batch(datamodule, list(pairs))
    users, titles = batch["user_id"], batch["title"]
    if len(set(titles)) < 2:
        raise ValueError("guidance_curve: the pairs need at least two distinct titles for the title match")
    references = reference_batch(batch["image"], generator.image_size, generator.device)
    user_emb, _ = generator.users.lookup(users)
    cond, negative = generator.conditioning(user_emb, titles, references), None
    if any(scale != 1 for scale in scales):
        negative = generator.fallback_conditioning(titles, references)
    seeds = generator.seeds(users, batch["item_id"])
    user_idx = oracle.user_index(users, unknown="fallback")
    rows = []
    for scale in scales:
        images = generator.sample(cond, seeds, references, user_guidance=float(scale), user_negative=negative)
        images = images.float().cpu()  # the oracle stays on the CPU
        rows.append({
            "user_guidance": float(scale),
            "true_click_prob": float(oracle(images, user_idx).mean()),
            "title_match_acc": title_match_accuracy(title_score, images, titles, seed=seed),
        })  # fmt: skip
    return rows
