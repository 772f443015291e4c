"""``icg evaluate``: ICG's evaluation on the paper's axes (Bian et al., EMNLP 2025) from checkpoint paths.

The command line's flat options become the option dataclasses of ``icg.evaluation.settings`` (whose defaults they
reuse) for ``icg.evaluation.run.evaluate_checkpoints``. It sits in the commands layer, above the study, because
``--study_db`` joins the evaluation with a blind pairwise study: the study reads its database (``icg.study.results``)
and the evaluation receives the results, so ``icg.evaluation`` never imports ``icg.study``.
``icg/cli.py`` hands ``icg evaluate ...`` to :func:`run`; ``python -m icg.commands.evaluate ...`` does the same.
"""

from __future__ import annotations

from typing import Any

from icg.commands import call
from icg.evaluation.settings import (
    DataSettings,
    EvaluatorSettings,
    PromptSettings,
    RunSettings,
    SampleSettings,
    ScoringSettings,
    UserSwapSettings,
)


def evaluate(  # noqa: PLR0913  # the signature is `icg evaluate`'s command line
    data_root: str,
    stage1_ckpt: str,
    stage3_ckpt: str,
    base_model: str,
    out_dir: str = "runs/demo",
    rewards_ckpt: str | None = None,
    no_user_ckpt: str | None = None,
    no_meta_ckpt: str | None = None,
    other_mllm_ckpt: str | None = None,
    prompt_words: int = PromptSettings.num_words,
    evaluator_ckpt: str | None = EvaluatorSettings.checkpoint,
    clip_path: str | None = ScoringSettings.clip_path,
    lpips_backbone: str | None = None,
    baseline_guidance_scale: float = 1.0,
    image_size: int | None = DataSettings.image_size,
    holdout: int = DataSettings.holdout,
    num_users: int = SampleSettings.num_users,
    downstream_users: int = SampleSettings.downstream_users,
    downstream_negatives: int = SampleSettings.downstream_negatives,
    seed: int = SampleSettings.seed,
    started_at: float | None = RunSettings.started_at,
    study_db: str | None = None,
    device: str = RunSettings.device,
    batch_size: int = RunSettings.batch_size,
    max_users: int | None = SampleSettings.max_users,
    max_pairs: int | None = EvaluatorSettings.max_pairs,
    pool_size: int = ScoringSettings.pool_size,
    pool_batch_size: int = RunSettings.pool_batch_size,
    user_swap_others: int = UserSwapSettings.others,
) -> dict[str, Any]:
    """The demo's evaluation from paths: title-only baseline, the handcrafted personalized prompt, ICG without user
    refinement, ICG without meta tokens (``--no_meta_ckpt``), ICG through another MLLM (``--other_mllm_ckpt``),
    ICG (and, when ICG is reference-guided, ICG from pure noise); every method in ICG's mode.

    Args:
        data_root: the dataset folder.
        stage1_ckpt: stage-1 checkpoint.
        stage3_ckpt: stage-3 (alignment) checkpoint: ICG, and ICG with the cold-start user for everyone.
        base_model: the base diffusion folder with its text encoder (SD 1.5, or the stand-in base model export); every
            method runs on it, ICG included (it replaces the folder the stage-3 checkpoints recorded).
        out_dir: where report.json, report.md and gallery.html go.
        rewards_ckpt: stage-2 checkpoint (None: the one the stage-3 checkpoint recorded).
        no_user_ckpt: a stage-3 ablation checkpoint trained without user refinement (None: ICG with the cold-start
            user embedding for everyone).
        no_meta_ckpt: a stage-3 ablation checkpoint trained without the MLLM's meta tokens (``prompter: null``), the
            ``icg_no_meta`` method (None: left out).
        other_mllm_ckpt: ICG trained the same way but reading items through another MLLM, the ``icg_other_mllm``
            method (None: left out).
        prompt_words: keywords of the user's train clicks appended to the title by the handcrafted personalized
            prompt baseline, ``personalized_prompt`` (0: left out; docs/prompting.md).
        evaluator_ckpt: separately trained click model to grade with (None: trained here).
        clip_path: local CLIP folder for the CLIP metrics.
        lpips_backbone: torchvision's AlexNet checkpoint (``alexnet-owt-7be5be79.pth``) for LPIPS to the reference
            (``icg.evaluation.lpips``; None: LPIPS unavailable).
        baseline_guidance_scale: classifier-free guidance of the title-only baseline.
        image_size: side the reference covers are decoded at (None: the stage-3 cover size, as its training data).
        holdout: interactions per user held out for test (and val); must equal the stages' ``data.holdout``.
        num_users: held-out users sampled.
        downstream_users: users of the downstream AUC/GAUC sample.
        downstream_negatives: negatives per held-out positive in that sample.
        seed: seed of the sample.
        started_at: ``time.time()`` when the whole run began (the report's ``minutes`` counts from it).
        study_db: a blind pairwise study's database over this evaluation's covers (``user_appeal`` row).
        device: where generation and scoring run (``cpu``, ``cuda``, ``cuda:1``).
        batch_size: covers generated per call of each method.
        max_users: users whose held-out rows the click-model comparisons score (seeded sample; None: all).
        max_pairs: train positives the in-process evaluator learns from (seeded sample; None: all).
        pool_size: generic covers per item in the pool + pick baseline (docs/evaluation.md, "Personalization itself").
        pool_batch_size: covers generated per call for those pools.
        user_swap_others: other users whose covers of an item (same seed) each pair's cover is compared with.
    """
    from icg.evaluation.run import check_device, evaluate_checkpoints

    check_device(device)  # a GPU this machine lacks is one line before the study or any checkpoint is read
    study = None
    if study_db is not None:
        from icg.study.results import study_results

        study = study_results(study_db)
    return evaluate_checkpoints(
        data_root,
        stage1_ckpt,
        stage3_ckpt,
        base_model,
        out_dir,
        rewards_ckpt=rewards_ckpt,
        no_user_ckpt=no_user_ckpt,
        no_meta_ckpt=no_meta_ckpt,
        other_mllm_ckpt=other_mllm_ckpt,
        lpips_backbone=lpips_backbone,
        baseline_guidance_scale=baseline_guidance_scale,
        study=study,
        prompt=PromptSettings(num_words=prompt_words),
        data=DataSettings(image_size=image_size, holdout=holdout),
        sample=SampleSettings(
            num_users=num_users,
            downstream_users=downstream_users,
            downstream_negatives=downstream_negatives,
            max_users=max_users,
            seed=seed,
        ),  # fmt: skip
        evaluator=EvaluatorSettings(checkpoint=evaluator_ckpt, max_pairs=max_pairs),
        scoring=ScoringSettings(clip_path=clip_path, pool_size=pool_size),
        run=RunSettings(device=device, batch_size=batch_size, pool_batch_size=pool_batch_size, started_at=started_at),
        user_swap=UserSwapSettings(others=user_swap_others),
    )


def run(words: list[str]) -> int:
    """Run ``icg evaluate --data_root ... --stage1_ckpt ... --stage3_ckpt ... --base_model ...``; returns the exit
    status.

    Args:
        words: the words after ``icg evaluate``.
    """
    from icg.evaluation.report import format_markdown

    report = call(evaluate, words, "icg evaluate")
    print(format_markdown(report))  # cli-output
    return 0


if __name__ == "__main__":
    import logging
    import sys

    from icg.console import setup_console

    setup_console(logging.INFO)
    raise SystemExit(run(sys.argv[1:]))
