"""The evaluation's options, grouped: what is read, which pairs are sampled, the grader, the scorers, the run.

``evaluate`` and ``evaluate_checkpoints`` (``icg.evaluation.run``) take the same dataclasses, so each option, its
default and its meaning are written once, here. docs/evaluation.md explains the metrics they shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

# Bounds that keep evaluation on one machine at PixelRec scale (docs/performance.md, "Evaluation at Pixel1M scale");
# the demo's platform (200 users, ~10k train clicks) is below both, so it is evaluated whole.
DEFAULT_MAX_USERS = 2_000  # users whose held-out rows the click-model comparisons score
DEFAULT_MAX_PAIRS = 200_000  # train positives the in-process evaluator learns from


@dataclass(frozen=True)
class DataSettings:
    """How the dataset is read.

    Args:
        image_size: side the reference covers are decoded at (None: the stage-3 cover size in
            ``evaluate_checkpoints``, 64 in ``evaluate``).
        holdout: interactions per user held out for test (and val); must equal the stages' ``data.holdout``.
        eval_candidates: sampled negatives per held-out positive (must match stage 1's for its AUC to compare).
    """

    image_size: int | None = None
    holdout: int = 1
    eval_candidates: int = 20


@dataclass(frozen=True)
class SampleSettings:
    """Which held-out (user, item) pairs are evaluated (seeded).

    Args:
        num_users: held-out users sampled; each contributes its held-out pairs.
        grid_users: users of the gallery grid (also the diversity sample).
        grid_items: items of the gallery grid (each generated for every grid user).
        downstream_users: users whose test candidates get generated covers for the downstream AUC/GAUC.
        downstream_negatives: sampled negatives per held-out positive kept for the downstream AUC/GAUC.
        downstream_impressions: times each downstream (user, candidate, cover) is shown to the oracle's simulated
            user (clicks drawn with common random numbers across methods, seeded).
        max_users: the click-model comparisons (stage 1, oracle, popularity; the evaluator's AUC) score the held-out
            rows of a seeded sample of this many users, plus the ``num_users`` evaluated ones (None: every user);
            the in-process evaluator then trains on those users' positives, the users it grades.
        seed: seed of the user sample, the in-process evaluator (``seed + 1``), the downstream impressions
            (``seed + 2``), the title-match shuffle and the bootstrap.
    """

    num_users: int = 40
    grid_users: int = 4
    grid_items: int = 4
    downstream_users: int = 10
    downstream_negatives: int = 4
    downstream_impressions: int = 20
    max_users: int | None = DEFAULT_MAX_USERS
    seed: int = 0


@dataclass(frozen=True)
class EvaluatorSettings:
    """The click model that grades personalization and downstream recommendation (not stage 1, the reward's).

    Args:
        checkpoint: a separately trained stage-1-style checkpoint to grade with; None trains one in-process
            (``icg.evaluation.evaluator.train_evaluator``: another seed and architecture than stage 1).
        epochs: epochs of the in-process evaluator.
        max_pairs: at most this many train positives for the in-process evaluator (seeded sample; None: no bound).
    """

    checkpoint: str | Path | None = None
    epochs: int = 4
    max_pairs: int | None = DEFAULT_MAX_PAIRS


@dataclass(frozen=True)
class PromptSettings:
    """The handcrafted personalized prompt baseline (``PersonalizedPromptMethod``, PMG-style; docs/prompting.md, "ICG
    against handcrafted prompts").

    Args:
        num_words: keywords of the user's train clicks' titles appended to the title (0: the method is left out).
        vocabulary: the words that may become keywords; None: on the synthetic platform (a dataset with its hidden
            truth) its colour and style words (``icg.data.synthetic.prompt_vocabulary``), elsewhere every title word
            outside ``icg.evaluation.keywords.STOP_WORDS``.
    """

    num_words: int = 2
    vocabulary: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ScoringSettings:
    """The optional scorers and the headline comparison.

    Args:
        clip_path: a local CLIP folder for CLIP image-title / image-reference similarity (None: unavailable).
        lpips: ``(images, reference) -> B`` LPIPS distances with locally supplied weights (None: unavailable).
        reward_names: names of the aesthetic, relevance and preference rewards in the bundle.
        treatment: the method whose lift is reported (ICG).
        baseline: the method the lift and the relevance drop are relative to (title-only).
        bootstrap_samples: resamples of the lift's confidence interval (and of the personal share's).
        without_users: the method without user refinement: the personal share's baseline (docs/evaluation.md,
            "Personalization itself").
        pool_methods: the generic methods (covers that ignore the user but for their seed) whose per-item pools the
            stage-1 click model picks from, the baseline a platform already has.
        pool_size: generic covers per item in each pool (the pool + pick at equal cost is reported besides).
    """

    clip_path: str | Path | None = None
    lpips: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    reward_names: tuple[str, str, str] = ("aesthetic", "relevance", "preference")
    treatment: str = "icg"
    baseline: str = "title_only"
    bootstrap_samples: int = 2000
    without_users: str = "icg_no_user"
    pool_methods: tuple[str, ...] = ("icg_no_user", "title_only")
    pool_size: int = 4


@dataclass(frozen=True)
class RunSettings:
    """Where the evaluation runs and what it writes besides the report.

    Args:
        device: where the evaluator, the reward bundle, CLIP and the stage-1 model run (the methods bring their
            own device; the oracle and SSIM stay on the CPU).
        batch_size: covers generated per call of each method.
        pool_batch_size: covers generated per call for the pool + pick baseline's pools (many covers of few items:
            at the demo's sizes a call of 64 costs about a quarter of the CPU time of eight calls of 8; lower it for a
            big model on a small GPU).
        started_at: ``time.time()`` when the whole run began (``minutes`` counts from it; default: this call).
        tensorboard: also write the table as TensorBoard hparams under ``out_dir/tensorboard``.
    """

    device: torch.device | str = "cpu"
    batch_size: int = 8
    pool_batch_size: int = 64
    started_at: float | None = None
    tensorboard: bool = True


@dataclass(frozen=True)
class UserSwapSettings:
    """The user-swap test: is the cover made for a user better for that user than the covers made for other users of
    the same item at the same seed, by more than seed noise moves a cover (``icg.evaluation.user_swap``).

    Args:
        others: M, the other users whose covers of the same item each evaluated pair's cover is compared with (the
            next M evaluated users after the pair's user, in the sample's order, wrapping around).
        methods: the methods tested, e.g. ICG and, as the control, ICG without users; each must take explicit
            ``seeds`` (``icg.evaluation.methods``); one that is missing or does not is named under ``unavailable``.
        max_pairs: at most this many pairs of each set (held-out clicked pairs; unclicked candidates: the downstream
            sample's negatives), taken round-robin over their users (None: all). Each costs (M + 1) covers per method.
        gallery_users: users (columns) of the gallery's user-swap section (the first sampled users).
        gallery_items: items (rows) of that section (those users' held-out items first).
        batch_size: covers generated per call of a method.
    """

    others: int = 4
    methods: tuple[str, ...] = ("icg", "icg_no_user")
    max_pairs: int | None = 48
    gallery_users: int = 4
    gallery_items: int = 6
    batch_size: int = 64
