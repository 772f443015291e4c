"""The demo's steps, in order, and one run of them (``python -m icg.demo --seed N``).

Each training step is the ``icg fit`` a user would type, with the demo's configs; ``icg.demo.steps`` runs the
independent ones side by side. The stand-in MLLM (``mllm.yaml``) and the stand-in base model (``base_model.yaml``) are
not ICG stages: they play Qwen2-VL's and SD 1.5's parts on the synthetic platform (docs/prompting.md, docs/demo.md).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from icg.cli import main as icg
from icg.demo.paths import (
    CONFIGS,
    DATA,
    EXPORT,
    HOLDOUT,
    LOGS,
    MLLM,
    NO_META_CKPT,
    NO_USER_CKPT,
    RUNS,
    STAGE1_CKPT,
    STAGE2_CKPT,
    STAGE3_CKPT,
    TRAINED_MLLM_CKPT,
)
from icg.demo.steps import Step, run_steps, say

PROMPT_WORDS = 2  # the handcrafted personalized prompt: the title + this many words of the user's clicked titles
PROBE_SEED = 7  # the probe's meta tokens: a draw the stand-in MLLM never read through (it trained through seed 0's)


def _ok(code: int) -> None:
    if code:
        raise SystemExit(code)


def stage1_table(seed: int) -> Callable[[], None]:
    """Stage 1 beside the oracle (the ceiling) and popularity, on the same test candidates."""

    def run() -> None:
        from icg.data.datamodule import ICGDataModule
        from icg.data.oracle import Oracle
        from icg.lit.preference import compare_click_models
        from icg.models.preference import PreferenceModel

        model, _ = PreferenceModel.from_checkpoint(STAGE1_CKPT, "demo stage-1 checkpoint")
        datamodule = ICGDataModule(root=str(DATA), image_size=64, holdout=HOLDOUT, eval_candidates=20, seed=seed)
        datamodule.setup("test")
        table = compare_click_models(datamodule, model, Oracle.from_dataset(DATA), split="test")
        say(f"  {'test':<11}{'AUC':>8}{'GAUC':>8}{'NDCG@10':>9}")
        for name in ("model", "oracle", "popularity"):
            row = table[name]
            say(f"  {name:<11}{row['auc']:>8.3f}{row['gauc']:>8.3f}{row['ndcg@10']:>9.3f}")

    return run


def evaluation(seed: int, started_at: float) -> Callable[[], None]:
    """The paper's axes for every method in ICG's mode: title-only, the handcrafted personalized prompt, ICG without
    user refinement, without meta tokens, through the trained stand-in MLLM, and ICG; report, table, gallery."""

    def run() -> None:
        from icg.evaluation.report import format_markdown
        from icg.evaluation.run import evaluate_checkpoints
        from icg.evaluation.settings import DataSettings, PromptSettings, RunSettings, SampleSettings

        with _quiet_transformers():
            report = evaluate_checkpoints(
                str(DATA), str(STAGE1_CKPT), str(STAGE3_CKPT), str(RUNS / "base_model"), out_dir=str(RUNS),
                no_user_ckpt=str(NO_USER_CKPT), no_meta_ckpt=str(NO_META_CKPT), other_mllm_ckpt=str(TRAINED_MLLM_CKPT),
                data=DataSettings(holdout=HOLDOUT), sample=SampleSettings(seed=seed),
                run=RunSettings(started_at=started_at), prompt=PromptSettings(num_words=PROMPT_WORDS),
            )  # fmt: skip
        report["user_guidance_curve"] = user_guidance_curve(seed)
        report["mllm_probe"] = json.loads((RUNS / "mllm_probe.json").read_text())
        (RUNS / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (RUNS / "report.md").write_text(format_markdown(report))
        say(format_markdown(report))

    return run


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """The stand-in MLLM is saved with its LM head and the prompter loads the model without one: transformers' report
    of that unused key, and its progress bar, stay out of the demo's output (stage 3's fits log them)."""
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        transformers_logging.enable_progress_bar()


def mllm_probe() -> None:
    """Does the stand-in MLLM read the item? The held-out linear probe, against the random tiny MLLM."""
    from icg.evaluation.mllm_probe import probe_platform

    with _quiet_transformers():
        results = probe_platform(DATA, {"random": None, "trained": str(MLLM)}, seed=PROBE_SEED)
    (RUNS / "mllm_probe.json").write_text(json.dumps(results, indent=2) + "\n")
    say(f"  held-out accuracy (meta-token seed {PROBE_SEED}), random / trained MLLM:")
    for key in results["random"]:
        say(f"    {key:<20}{results['random'][key]:>6.2f} /{results['trained'][key]:>5.2f}")


GUIDANCE_SCALES = (0.0, 1.0, 2.0, 4.0)
GUIDANCE_PAIRS = 48


def user_guidance_curve(seed: int) -> dict[str, Any]:
    """True click probability and title-match of ICG's covers against the user-guidance scale (48 held-out pairs)."""
    import torch

    from icg.data.datamodule import ICGDataModule
    from icg.data.oracle import Oracle
    from icg.evaluation.guidance_curve import guidance_curve
    from icg.evaluation.sample import draw_sample
    from icg.evaluation.settings import SampleSettings
    from icg.generation import CoverGenerator
    from icg.models.rewards.base import RewardContext
    from icg.models.rewards.bundle import load_reward_bundle

    generator = CoverGenerator.from_checkpoint(STAGE3_CKPT, base_model=str(RUNS / "base_model"))
    datamodule = ICGDataModule(root=str(DATA), image_size=64, holdout=HOLDOUT, eval_candidates=20, seed=seed)
    datamodule.setup("test")
    pairs = draw_sample(datamodule, SampleSettings(seed=seed)).main_pairs[:GUIDANCE_PAIRS]
    relevance = load_reward_bundle(STAGE2_CKPT).rewards["relevance"]

    def title_score(images: torch.Tensor, titles: list[str]) -> torch.Tensor:
        return relevance(images, RewardContext(titles=list(titles)))

    oracle = Oracle.from_dataset(DATA)
    rows = guidance_curve(generator, datamodule, pairs, oracle, title_score, GUIDANCE_SCALES, seed=seed)
    return {"pairs": len(pairs), "rows": rows}


def user_appeal() -> None:
    """The paper's user-appeal axis, simulated: 20 raters answer a blind pairwise study of the evaluation's covers from
    the oracle's click probabilities (docs/study.md); their Bradley-Terry scores become the report's user_appeal row."""
    from icg.evaluation.report import attach_user_appeal, format_markdown
    from icg.study.results import format_results, study_results, write_results

    db = RUNS / "study.db"
    _ok(icg(["study", "simulate", str(RUNS), "--data_root", str(DATA), "--db", str(db), "--raters", "20",
             "--pairs_per_rater", "60"]))  # fmt: skip
    results = study_results(db)
    write_results(results, RUNS)
    say(format_results(results))
    report = json.loads((RUNS / "report.json").read_text())
    report.get("unavailable", {}).pop("user_appeal", None)
    attach_user_appeal(report, results)
    (RUNS / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (RUNS / "report.md").write_text(format_markdown(report))


def generate_examples() -> None:
    """The trained ICG as a user loads it: the export folder, then covers for chosen (user, item) pairs."""
    from icg.data.schema import read_dataset
    from icg.generation import CoverGenerator

    gen = CoverGenerator.from_pretrained(EXPORT)
    items, _, _ = read_dataset(DATA)
    users = gen.users.user_ids[:2] + ["a-new-user"]
    out = RUNS / "covers"
    out.mkdir(parents=True, exist_ok=True)
    for item in items.head(2).to_dict("records"):
        n = len(users)
        covers = gen(users, [item["title"]] * n, [DATA / item["image"]] * n, item_ids=[item["item_id"]] * n)
        for user, image, fallback in zip(users, covers.images, covers.fallback, strict=True):
            path = out / f"{user}__{item['item_id']}.png"
            image.save(path)
            say(f"  {path}" + ("  (unknown user: the cold-start fallback)" if fallback else ""))


def plan(seed: int, quick: bool, started_at: float) -> list[Step]:
    """Every step of one demo run; ``after`` says what each needs, and among the ready ones the list's order goes
    first: stage 1 and the MLLM start together, the base model follows stage 1 and stage 2 the MLLM, then the four
    stage-3 fits side by side; the in-process steps fill a free slot."""
    seeded = ("--seed_everything", str(seed), "--data.seed", str(seed))
    model_seed = ("--model.init_args.seed", str(seed))
    short = ("--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2") if quick else ()
    stage3 = ("fit", "--config", str(CONFIGS / "stage3_alignment.yaml"))

    def overlay(name: str) -> tuple[str, ...]:
        return ("--config", str(CONFIGS / name))

    synth = ["data", "synth", "--out", str(DATA), "--overwrite", "--seed", str(seed)]
    export = ["export", "--stage3_ckpt", str(STAGE3_CKPT), "--out", str(EXPORT), "--overwrite", "true"]
    mllm_steps = ("--trainer.max_steps", "20") if quick else ()
    trained = (*stage3, *overlay("stage3_trained_mllm.yaml"), *seeded, *model_seed)
    return [
        Step("data", "synthetic platform", run=lambda: _ok(icg(synth))),
        Step("stats", "dataset stats", run=lambda: _ok(icg(["data", "stats", str(DATA)])), after=("data",)),
        Step("stage1", "stage 1: preference model",
             ("fit", "--config", str(CONFIGS / "stage1_preference.yaml"), *seeded, *short), after=("data",)),
        Step("mllm", "stand-in MLLM (not an ICG stage)",
             ("fit", "--config", str(CONFIGS / "mllm.yaml"), *mllm_steps), after=("data",)),
        Step("base_model", "stand-in base model (not an ICG stage)",
             ("fit", "--config", str(CONFIGS / "base_model.yaml"), *seeded), after=("data",)),
        Step("stage2", "stage 2: reward bundle",
             ("fit", "--config", str(CONFIGS / "stage2_rewards.yaml"), *seeded, *model_seed, *short),
             after=("stage1",)),
        Step("stage3", "stage 3: ICG alignment", (*stage3, *seeded, *model_seed), after=("base_model", "stage2")),
        Step("stage3_trained_mllm", "stage 3: ICG reading items through the trained stand-in MLLM", trained,
             after=("base_model", "stage2", "mllm")),
        Step("stage3_no_user", "stage 3: ICG without user refinement (ablation)",
             (*stage3, *overlay("stage3_no_user.yaml"), *seeded, *model_seed), after=("base_model", "stage2")),
        Step("stage3_no_meta", "stage 3: ICG without meta tokens (ablation)",
             (*stage3, *overlay("stage3_no_meta.yaml"), *seeded, *model_seed), after=("base_model", "stage2")),
        Step("stage1_table", "stage 1 vs oracle and popularity", run=stage1_table(seed), after=("stage1",),
             threads=1),
        Step("probe", "the stand-in MLLM's probe", run=mllm_probe, after=("mllm",), threads=1),
        Step("export", "export: the trained ICG as one folder, and covers for chosen pairs",
             run=lambda: (_ok(icg(export)), generate_examples()), after=("stage3",), threads=1),
        Step("evaluation", "evaluation: every method in ICG's mode",
             run=evaluation(seed, started_at),
             after=("stage3", "stage3_trained_mllm", "stage3_no_user", "stage3_no_meta", "probe", "stage1_table")),
        Step("appeal", "user appeal: a blind pairwise study answered by simulated raters", run=user_appeal,
             after=("evaluation",)),
    ]  # fmt: skip


def run_pipeline(seed: int, quick: bool) -> dict[str, Any]:
    """One whole demo run from scratch under ``runs/demo``; returns its report."""
    start = time.time()
    if RUNS.exists():  # every stage starts over: no stage may chain a checkpoint of an earlier demo run
        say(f"removing the previous demo run in {RUNS} (the demo always starts from scratch)")
        shutil.rmtree(RUNS)
    run_steps(plan(seed, quick, start), LOGS)
    say(f"\nicg demo (seed {seed}) finished in {(time.time() - start) / 60:.1f} minutes: {RUNS}/report.md, "
        f"{RUNS}/gallery.html")  # fmt: skip
    return json.loads((RUNS / "report.json").read_text())
