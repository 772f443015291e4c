"""ICG's evaluation on the paper's axes (Bian et al., EMNLP 2025): one table for the baselines and ICG.

``evaluate(...)`` ties the parts together: it draws the sample of held-out (user, item) pairs (``sample.py``), loads
or trains the click models that grade (``evaluator.py``), generates every method's covers (``methods.py``,
``covers.py``), scores them on the paper's axes (``scoring.py``) and on downstream recommendation
(``downstream.py``), and writes ``report.json``, ``report.md``, ``gallery.html`` and TensorBoard hparams
(``report.py``, ``gallery.py``). ``evaluate_checkpoints(...)`` builds the methods from checkpoints first. Both take
the option dataclasses of ``settings.py``; docs/evaluation.md defines every metric and its range.

A metric whose weights are absent is ``null`` in JSON with a reason under ``unavailable``; it is never faked.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from icg.data.datamodule import ICGDataModule
from icg.data.oracle import TRUTH_DIR, TRUTH_JSON, Oracle, user_tastes
from icg.data.synthetic import prompt_vocabulary
from icg.errors import ConfigError
from icg.evaluation.covers import generate_covers, write_held_out_covers
from icg.evaluation.downstream import DownstreamLabels, downstream_metrics
from icg.evaluation.evaluator import ClickModel, load_evaluator, stage1_figures
from icg.evaluation.keywords import HistoryKeywords
from icg.evaluation.lpips import LPIPS
from icg.evaluation.methods import AlignmentMethod, CoverMethod, PersonalizedPromptMethod, TitleOnlyMethod
from icg.evaluation.metrics import title_match_accuracy
from icg.evaluation.personalization import measure_personalization
from icg.evaluation.report import METRICS, attach_user_appeal, write_report
from icg.evaluation.sample import EvaluationSample, draw_sample, pairs_batch
from icg.evaluation.scoring import PairScorer, diversity, headline, history_features, history_similarity, nanmean
from icg.evaluation.settings import (
    DataSettings,
    EvaluatorSettings,
    PromptSettings,
    RunSettings,
    SampleSettings,
    ScoringSettings,
    UserSwapSettings,
)
from icg.evaluation.user_swap import Graders, user_swap_test
from icg.models.rewards.bundle import RewardBundle

log = logging.getLogger(__name__)
DEFAULT_IMAGE_SIZE = 64  # ``evaluate``'s reference-cover side when ``DataSettings.image_size`` is None


def evaluate(  # noqa: PLR0913  # the settings are dataclasses already; the rest are the run's inputs
    data_root: str | Path,
    stage1_ckpt: str | Path,
    methods: dict[str, CoverMethod],
    out_dir: str | Path,
    *,
    rewards: RewardBundle | str | Path | None = None,
    study: dict[str, Any] | None = None,
    mode: str = "",
    data: DataSettings | None = None,
    sample: SampleSettings | None = None,
    evaluator: EvaluatorSettings | None = None,
    scoring: ScoringSettings | None = None,
    run: RunSettings | None = None,
    user_swap: UserSwapSettings | None = None,
) -> dict[str, Any]:
    """Score every method on held-out pairs and write ``report.json``, ``report.md``, ``gallery.html``.

    Args:
        data_root: the dataset folder (icg format); the synthetic platform adds the oracle.
        stage1_ckpt: the stage-1 click model (its test AUC/GAUC go under ``stage1``; it is not the grader).
        methods: method name -> cover generator (``icg.evaluation.methods``); at least ``scoring.treatment`` and
            ``scoring.baseline`` for the lift.
        out_dir: where the report, the gallery and its images are written.
        rewards: the stage-2 reward bundle or its checkpoint (aesthetic, relevance, preference and ImageReward
            scores); None leaves those metrics unavailable.
        study: a blind pairwise study's results over these covers (``icg.study.results.study_results``): its
            Bradley-Terry scores become the ``user_appeal`` row (None: unavailable).
        mode: one sentence for the gallery's legend on how the methods start their covers.
        data, sample, evaluator, scoring, run, user_swap: the options (``icg.evaluation.settings``; None: the
            defaults).

    Returns:
        the report dict (see docs/evaluation.md): ``stage1``, ``evaluator``, ``methods``, ``reference_covers``,
        ``lift``, ``relevance_drop``, ``personalization``, ``user_swap``, ``unavailable``, ``sample``, ``minutes``,
        ``files``.
    """
    start = time.time()
    if not methods:
        raise ValueError("evaluate: methods is empty; give at least one cover generator")
    data, sample = data or DataSettings(), sample or SampleSettings()
    scoring, run = scoring or ScoringSettings(), run or RunSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    image_size = DEFAULT_IMAGE_SIZE if data.image_size is None else data.image_size
    dm = _datamodule(data_root, data, image_size)
    oracle = _oracle(data_root)
    chosen = draw_sample(dm, sample)  # the click models are compared on its users and more
    stage1, stage1_block = stage1_figures(dm, stage1_ckpt, oracle, chosen.compared, run.device)
    grader, evaluator_block = load_evaluator(dm, evaluator or EvaluatorSettings(), chosen.compared, sample.seed + 1,
                                             run.device)  # fmt: skip
    scorer = PairScorer.load(rewards, grader, stage1.user_rows, oracle, scoring, run.device)
    main_pairs, all_pairs = chosen.main_pairs, chosen.all_pairs
    log.info(
        "evaluating %d methods on %d pairs (%d held-out, %d grid, %d downstream)",
        len(methods), len(all_pairs), len(main_pairs), len(chosen.grid_pairs), len(chosen.down_pairs),
    )  # fmt: skip
    covers, timings = generate_covers(methods, dm, all_pairs, run.batch_size)
    labels = DownstreamLabels.of(chosen, sample.downstream_impressions, sample.seed + 2)
    table, per_pair, grid = _score_methods(dm, scorer, grader, oracle, chosen, covers, labels, sample.seed)

    unavailable = scorer.unavailable()
    if len(chosen.grid_users) < 2:
        unavailable["diversity"] = "needs at least 2 grid users"
    user_ids = [str(dm.user_ids[u]) for u, _ in main_pairs]
    lift, relevance_drop = headline(table, per_pair, user_ids, oracle, scoring, sample.seed, unavailable)
    personalization, pool_seconds = measure_personalization(
        dm, str(data_root), oracle, stage1, methods, covers, chosen, scoring, run, sample.seed, unavailable
    )
    swap = user_swap_test(dm, methods, covers, chosen, Graders(oracle, grader, stage1, list(map(str, dm.user_ids))),
                          user_swap or UserSwapSettings())  # fmt: skip
    unavailable.update(swap.unavailable)
    report: dict[str, Any] = {
        "stage1": stage1_block,
        "evaluator": evaluator_block,
        "methods": {name: table[name] for name in methods},
        "reference_covers": table["reference"],
        "lift": lift,
        "relevance_drop": relevance_drop,
        "personalization": personalization,
        "user_swap": swap.block,
        "unavailable": unavailable,
        "sample": _sample_block(chosen, sample, oracle is not None),
        "generation_seconds": timings | pool_seconds,
        "evaluation_minutes": (time.time() - start) / 60.0,
        "minutes": (time.time() - (run.started_at if run.started_at is not None else start)) / 60.0,
    }
    grid |= {"user_notes": user_tastes(data_root), "mode": mode, "user_swap": swap.gallery}
    report["cover_manifest"] = str(write_held_out_covers(out / "covers", dm, main_pairs, covers))
    attach_user_appeal(report, study)
    write_report(report, out, grid=grid, tensorboard=run.tensorboard)
    return report


def _datamodule(data_root: str | Path, data: DataSettings, image_size: int) -> ICGDataModule:
    """The evaluation's DataModule, set up (one split for the evaluation and the methods that read the train clicks)."""
    dm = ICGDataModule(str(data_root), image_size=image_size, holdout=data.holdout,
                       eval_candidates=data.eval_candidates, seed=0)  # fmt: skip
    dm.setup("test")
    return dm


def _oracle(data_root: str | Path) -> Oracle | None:
    try:
        return Oracle.from_dataset(data_root)
    except FileNotFoundError:
        log.info("%s has no hidden truth: oracle metrics are unavailable", data_root)
        return None


def _score_methods(dm: ICGDataModule, scorer: PairScorer, grader: ClickModel, oracle: Oracle | None,
                   chosen: EvaluationSample, covers: dict, labels: DownstreamLabels, seed: int):  # fmt: skip
    """Every method's (and the reference covers') table row, per-pair scores and gallery grid."""
    main_pairs, grid_pairs, down_pairs = chosen.main_pairs, chosen.grid_pairs, chosen.down_pairs
    batch_main, batch_grid, batch_down = (pairs_batch(dm, p) for p in (main_pairs, grid_pairs, down_pairs))
    history = torch.stack([torch.as_tensor(r["history"]) for r in chosen.main_rows])  # P x L item_idx, -1 padded
    history_feats = history_features(dm, grader.model, history)
    relevance_score = scorer.relevance_score()

    def covers_of(name: str, pairs: list, batch: dict[str, Any]) -> torch.Tensor:
        return batch["image"] if name == "reference" else torch.stack([covers[name][p] for p in pairs])

    table, per_pair, grid_scores = {}, {}, {}
    for name in covers:  # "reference" first, then the methods in order
        images = covers_of(name, main_pairs, batch_main)
        scores = scorer.per_pair(images, batch_main)
        scores["history_similarity"] = history_similarity(grader.model, images, history_feats)
        per_pair[name] = scores
        row = {metric: nanmean(values) for metric, values in scores.items()}
        if relevance_score is not None and len(set(batch_main["title"])) > 1:
            with torch.no_grad():
                row["title_match_acc"] = title_match_accuracy(relevance_score, images, batch_main["title"], seed=seed)
        grid_images = covers_of(name, grid_pairs, batch_grid)
        grid_scores[name] = scorer.per_pair(grid_images, batch_grid)
        if len(chosen.grid_users) >= 2:
            row["diversity"] = diversity(grid_images, grid_pairs, chosen.grid_items)
        row.update(downstream_metrics(grader, oracle, covers_of(name, down_pairs, batch_down), batch_down, labels))
        table[name] = {metric: row.get(metric) for metric in METRICS}
    grid = {
        "users": [str(dm.user_ids[u]) for u in chosen.grid_users],
        "items": [str(dm.catalogue.item_ids[i]) for i in chosen.grid_items],
        "titles": [str(dm.catalogue.titles[i]) for i in chosen.grid_items],
        "pairs": grid_pairs,
        "covers": {name: covers_of(name, grid_pairs, batch_grid) for name in covers},
        "scores": grid_scores,
    }
    return table, per_pair, grid


def _sample_block(chosen: EvaluationSample, sample: SampleSettings, have_oracle: bool) -> dict[str, Any]:
    """The report's ``sample``: what was evaluated."""
    return {
        "held_out_pairs": len(chosen.main_rows),
        "users": len(chosen.users),
        "grid": [len(chosen.grid_users), len(chosen.grid_items)],
        "downstream_users": len(chosen.users[: sample.downstream_users]),
        "downstream_rows": len(chosen.down_rows),
        "downstream_negatives_per_positive": min(chosen.per_row, 1 + sample.downstream_negatives) - 1,
        "downstream_impressions": sample.downstream_impressions if have_oracle else 0,
        "seed": sample.seed,
    }


def evaluate_checkpoints(  # noqa: PLR0913  # the settings are dataclasses already; the rest are checkpoint paths
    data_root: str,
    stage1_ckpt: str,
    stage3_ckpt: str,
    base_model: str,
    out_dir: str = "runs/demo",
    *,
    rewards_ckpt: str | None = None,
    no_user_ckpt: str | None = None,
    no_meta_ckpt: str | None = None,
    other_mllm_ckpt: str | None = None,
    lpips_backbone: str | None = None,
    baseline_guidance_scale: float = 1.0,
    study: dict[str, Any] | None = None,
    prompt: PromptSettings | None = None,
    data: DataSettings | None = None,
    sample: SampleSettings | None = None,
    evaluator: EvaluatorSettings | None = None,
    scoring: ScoringSettings | None = None,
    run: RunSettings | None = None,
    user_swap: UserSwapSettings | None = None,
) -> dict[str, Any]:
    """The demo's evaluation from paths: title-only baseline, the handcrafted personalized prompt, ICG without user
    refinement, ICG without meta tokens (``no_meta_ckpt``), ICG through another MLLM (``other_mllm_ckpt``),
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
        no_meta_ckpt: a stage-3 ablation checkpoint trained without the MLLM's meta tokens (``prompter: null``:
            title prompt + user token only; ``lightning_configs/demo/stage3_no_meta.yaml``), the ``icg_no_meta``
            method (None: left out).
        other_mllm_ckpt: ICG trained the same way but reading items through another MLLM (the demo: its trained
            stand-in MLLM, beside its ICG through the random tiny Qwen2-VL), the ``icg_other_mllm`` method (None: left
            out).
        lpips_backbone: torchvision's AlexNet checkpoint (``alexnet-owt-7be5be79.pth``) for LPIPS to the reference
            (``icg.evaluation.lpips``; None: ``scoring.lpips``).
        baseline_guidance_scale: classifier-free guidance of the title-only baseline.
        study: a blind pairwise study's results over these covers (``evaluate``'s ``study``).
        prompt: the handcrafted personalized prompt baseline, ``personalized_prompt`` (``num_words`` 0: left out).
        data, sample, evaluator, scoring, run, user_swap: as ``evaluate``'s; ``data.image_size`` None: the stage-3
            cover size (as its training data); ``run.device`` is checked before anything loads.
    """
    run = run or RunSettings()
    device = check_device(run.device)
    # Every method runs on the one base model given (checkpoints moved from the folder they were trained in included).
    icg = AlignmentMethod.from_checkpoint(stage3_ckpt, device=device, base_model=base_model)
    mode = icg.mode_strength  # every method in the table runs in ICG's mode, ablations trained in another included
    no_user = (AlignmentMethod.from_checkpoint(no_user_ckpt, "own", "no_user_ckpt", device, base_model, mode)
               if no_user_ckpt else None)  # fmt: skip
    no_user = no_user or AlignmentMethod(icg.generator, user="fallback")
    title_only = TitleOnlyMethod.from_folder(
        base_model,
        num_steps=icg.num_steps,
        image_size=icg.image_size,
        guidance_scale=baseline_guidance_scale,
        strength=mode,
        seed=icg.seed,
        device=device,
        timestep_spacing=icg.timestep_spacing,
    )
    data, scoring = data or DataSettings(), scoring or ScoringSettings()
    data = replace(data, image_size=data.image_size or icg.image_size)
    methods: dict[str, CoverMethod] = {"title_only": title_only}
    prompt = prompt or PromptSettings()
    if prompt.num_words > 0:  # covers from per-pair seeds only: no shared random state reaches the other methods
        methods["personalized_prompt"] = _personalized_prompt(data_root, data, prompt, title_only)
    methods["icg_no_user"] = no_user
    if no_meta_ckpt:
        methods["icg_no_meta"] = AlignmentMethod.from_checkpoint(no_meta_ckpt, "own", "no_meta_ckpt", device,
                                                                 base_model, mode)  # fmt: skip
    if other_mllm_ckpt:
        methods["icg_other_mllm"] = AlignmentMethod.from_checkpoint(other_mllm_ckpt, "own", "other_mllm_ckpt", device,
                                                                    base_model, mode)  # fmt: skip
    methods["icg"] = icg
    if mode < 1:  # reference-guided: also show what ICG does from pure noise
        methods["icg_from_noise"] = AlignmentMethod(icg.generator, strength=1.0)
    if lpips_backbone:
        scoring = replace(scoring, lpips=LPIPS(lpips_backbone))
    return evaluate(
        data_root,
        stage1_ckpt,
        methods,
        out_dir,
        rewards=rewards_ckpt or icg.generator.provenance.get("rewards_ckpt"),
        study=study,
        mode=_mode_sentence(mode),
        data=data,
        sample=sample,
        evaluator=evaluator,
        scoring=scoring,
        run=replace(run, device=device),
        user_swap=user_swap,
    )


def _personalized_prompt(data_root: str, data: DataSettings, prompt: PromptSettings,
                         title_only: TitleOnlyMethod) -> PersonalizedPromptMethod:  # fmt: skip
    """The handcrafted personalized prompt on the title-only baseline's model and settings, keywords from the train
    split the evaluation uses."""
    vocabulary = prompt.vocabulary
    if vocabulary is None and (Path(data_root) / TRUTH_DIR / TRUTH_JSON).is_file():
        vocabulary = prompt_vocabulary()  # the synthetic platform: its colour and style words
    keywords = HistoryKeywords.from_datamodule(_datamodule(data_root, data, data.image_size or DEFAULT_IMAGE_SIZE),
                                               vocabulary)  # fmt: skip
    return PersonalizedPromptMethod(
        title_only.components,
        title_only.title_encoder,
        keywords,
        prompt.num_words,
        num_steps=title_only.num_steps,
        image_size=title_only.image_size,
        guidance_scale=title_only.guidance_scale,
        strength=title_only.strength,
        seed=title_only.seed,
    )


def _mode_sentence(strength: float) -> str:
    """How every method starts its covers, for the gallery's legend."""
    if strength < 1:
        return (
            f"Every method starts each cover from the item's reference cover noised to strength {strength:g} "
            "(reference-guided), with the same noise per (user, item); ICG from noise starts from pure noise."
        )
    return "Every method starts each cover from pure noise, the same noise per (user, item)."


def check_device(device: torch.device | str) -> torch.device:
    """``--device`` as a torch device; a CUDA device this machine does not have is one line, before anything loads."""
    try:
        chosen = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"--device {device!r}: not a torch device (cpu, cuda, cuda:1, ...)") from err
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: torch {torch.__version__} sees no CUDA GPU here; use --device cpu")
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return chosen
