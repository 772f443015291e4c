"""``make demo``: the whole ICG pipeline on the embedded default, the synthetic platform, with tiny models.

install (Makefile) -> synthetic platform -> the demo's stand-in base model -> stage 1 (click model) -> stage 2
(reward bundle) -> stage 3 (ICG, and ICG without user refinement) -> export and covers for chosen pairs -> evaluation
-> a blind pairwise study answered by simulated raters (user appeal) -> report + gallery + the demo's claims. Every
step is the same ``icg`` command a user would type (``icg.cli.main``), run in-process in order; the configs are
``lightning_configs/demo/*.yaml`` and everything is written under ``runs/demo/``.

``python -m icg.demo --check`` exits non-zero when a claim breaks (CI's guard); ``--seeds 0 1 2`` runs the whole
pipeline once per seed (platform included), each in its own folder ``runs/seeds/seed<N>/``, and prints the per-seed
table with mean and worst case (``make demo-seeds``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icg.cli import main as icg
from icg.console import setup_console

RUNS = Path("runs/demo")
DATA = RUNS / "data"
CONFIGS = Path(__file__).resolve().parents[1] / "lightning_configs" / "demo"
STAGE1_CKPT = RUNS / "stage1/checkpoints/last.ckpt"
STAGE3_CKPT = RUNS / "stage3/checkpoints/last.ckpt"
NO_USER_DIR = RUNS / "stage3_no_user"
NO_USER_CKPT = NO_USER_DIR / "checkpoints/last.ckpt"
EXPORT = RUNS / "export"
SEEDS_ROOT = Path("runs/seeds")
HOLDOUT = 3  # = data.holdout of every lightning_configs/demo/stage*.yaml (tests/test_config_hub.py checks)

# The demo's claims (issue 11): what every seed must show. Bars on the evaluation's figures.
MIN_LIFT = 0.25  # ICG's true click probability over title-only, relative
MAX_RELEVANCE_DROP = 0.05  # 1 - title-match accuracy of ICG / of title-only
MIN_TITLE_MATCH_ICG = 0.90
MIN_TITLE_MATCH_BASELINE = 0.85
# Issue 20's bars: personalization that beats what a platform already has (report.json's "personalization" block).
MIN_USER_SWAP_WIN = 0.70  # own cover vs other users' covers of the item at a common seed, by the true click model
MIN_PERSONAL_SHARE = 0.50  # (ICG - ICG without users) / the faithful headroom


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _ok(code: int) -> None:
    if code:
        raise SystemExit(code)


def fit(config: str, *overrides: str) -> Callable[[], None]:
    return lambda: _ok(icg(["fit", "--config", str(CONFIGS / config), *overrides]))


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
    """The paper's axes for title-only, ICG without user refinement and ICG; report, table, gallery, claims."""

    def run() -> None:
        from icg.evaluation.report import format_markdown
        from icg.evaluation.run import evaluate_checkpoints
        from icg.evaluation.settings import DataSettings, PromptSettings, RunSettings, SampleSettings

        # The handcrafted personalized prompt (docs/prompting.md) stays out of the demo until its comparison holds on
        # seeds 0-2: it would join the simulated study and move the user-appeal figures the claims guard.
        report = evaluate_checkpoints(
            str(DATA), str(STAGE1_CKPT), str(STAGE3_CKPT), str(RUNS / "base_model"), out_dir=str(RUNS),
            no_user_ckpt=str(NO_USER_CKPT), data=DataSettings(holdout=HOLDOUT), sample=SampleSettings(seed=seed),
            run=RunSettings(started_at=started_at), prompt=PromptSettings(num_words=0),
        )  # fmt: skip
        report["user_guidance_curve"] = user_guidance_curve(seed)
        (RUNS / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (RUNS / "report.md").write_text(format_markdown(report))
        say(format_markdown(report))

    return run


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
    relevance = load_reward_bundle(RUNS / "stage2/checkpoints/last.ckpt").rewards["relevance"]

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


def steps(seed: int, quick: bool, started_at: float) -> list[tuple[str, Callable[[], None]]]:
    seeded = ("--seed_everything", str(seed), "--data.seed", str(seed))
    model_seed = ("--model.init_args.seed", str(seed))
    no_user = ("--config", str(CONFIGS / "stage3_no_user.yaml"))
    short = ("--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2") if quick else ()
    synth = ["data", "synth", "--out", str(DATA), "--overwrite", "--seed", str(seed)]
    export = ["export", "--stage3_ckpt", str(STAGE3_CKPT), "--out", str(EXPORT), "--overwrite", "true"]
    return [
        ("synthetic platform", lambda: _ok(icg(synth))),
        ("dataset stats", lambda: _ok(icg(["data", "stats", str(DATA)]))),
        ("stand-in base model (not an ICG stage)", fit("base_model.yaml", *seeded)),
        ("stage 1: preference model", fit("stage1_preference.yaml", *seeded, *short)),
        ("stage 1 vs oracle and popularity", stage1_table(seed)),
        ("stage 2: reward bundle", fit("stage2_rewards.yaml", *seeded, *model_seed, *short)),
        ("stage 3: ICG alignment", fit("stage3_alignment.yaml", *seeded, *model_seed)),
        ("stage 3: ICG without user refinement (baseline)",
         fit("stage3_alignment.yaml", *no_user, *seeded, *model_seed)),
        ("export: the trained ICG as one folder, and covers for chosen pairs", lambda: (_ok(icg(export)),
                                                                                      generate_examples())),
        ("evaluation: title-only vs ICG without users vs ICG", evaluation(seed, started_at)),
        ("user appeal: a blind pairwise study answered by simulated raters", user_appeal),
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------------ the claims
@dataclass
class Claim:
    """One claim on a report. ``guarded`` claims fail ``--check`` (CI) when broken; a target (``guarded=False``) is
    printed met or MISSED with its figures and never hidden, but does not fail the check (docs/demo.md says which
    targets hold on which seeds, and why the missed ones miss)."""

    name: str
    ok: bool
    detail: str
    guarded: bool = True


def claims(report: dict[str, Any]) -> list[Claim]:
    """The demo's claims on one evaluation report (``report.json``)."""
    methods, lift = report["methods"], report["lift"]
    acc = {name: methods.get(name, {}).get("title_match_acc") for name in ("title_only", "icg")}
    prob = {name: methods.get(name, {}).get("true_click_prob") for name in ("title_only", "icg_no_user", "icg")}
    drop = report.get("relevance_drop")

    def below(a: float | None, b: float | None) -> bool:
        return a is not None and b is not None and a < b

    value, low = lift.get("true_click_prob"), lift.get("ci_low")
    return [
        Claim("lift", value is not None and value >= MIN_LIFT and low is not None and low > 0,
              f"ICG over title-only {_pct(value)} (CI {_pct(low)} .. {_pct(lift.get('ci_high'))}); needs >= "
              f"{MIN_LIFT:+.0%} with the CI above 0"),
        Claim("relevance", drop is not None and drop <= MAX_RELEVANCE_DROP,
              f"relevance drop {_pct(drop)}; needs <= {MAX_RELEVANCE_DROP:.0%}"),
        Claim("title-match", (acc["icg"] or 0) >= MIN_TITLE_MATCH_ICG
              and (acc["title_only"] or 0) >= MIN_TITLE_MATCH_BASELINE,
              f"title-match ICG {_num(acc['icg'])} (needs >= {MIN_TITLE_MATCH_ICG}), title-only "
              f"{_num(acc['title_only'])} (needs >= {MIN_TITLE_MATCH_BASELINE})"),
        Claim("ablation", below(prob["icg_no_user"], prob["icg"]),
              f"true click probability without user refinement {_num(prob['icg_no_user'])} < ICG {_num(prob['icg'])}"),
        *_appeal_claim(report),
        *personalization_claims(report),
    ]  # fmt: skip


def _get(block: dict[str, Any] | None, *keys: str) -> Any:
    for key in keys:
        if not isinstance(block, dict):
            return None
        block = block.get(key)
    return block


# Which of issue 20's bars --check enforces: those that held on seeds 0, 1 and 2 (docs/demo.md); the rest are targets.
GUARDED_PERSONALIZATION: frozenset[str] = frozenset({
    "beats the reference (clicked)",
    "beats the reference (candidates)",
    "beats pool + pick at equal cost (clicked)",
    "beats pool + pick at equal cost (candidates)",
    "personal share",
    "user swap",
})  # fmt: skip


def personalization_claims(report: dict[str, Any]) -> list[Claim]:
    """Issue 20's claims: ICG beats the item's own cover and pool + pick, on clicked pairs and candidates; a user's own
    cover beats other users' covers of the item; ICG reaches half the faithful headroom; the user moves a cover more
    than the seed does."""
    block = report.get("personalization")
    if not isinstance(block, dict):
        return []
    found = []
    for part in ("clicked", "candidates"):
        p = _get(block, part, "true_click_prob")
        icg, ref = _get(p, "icg"), _get(p, "reference")
        found.append(Claim(f"beats the reference ({part})", icg is not None and ref is not None and icg > ref,
                           f"ICG {_num(icg)} vs the item's own cover {_num(ref)}"))  # fmt: skip
        pool = _get(block, part, "pool_pick", "icg_no_user")
        equal, four = _get(pool, "equal_cost", "true_click_prob"), _get(pool, "pool", "true_click_prob")
        found.append(Claim(f"beats pool + pick at equal cost ({part})",
                           icg is not None and equal is not None and icg > equal,
                           f"ICG {_num(icg)} vs pool + pick of ICG-without-users covers {_num(equal)} "
                           f"({_num(_get(pool, 'equal_cost', 'covers_per_item'))} covers per item, as ICG); with 4 "
                           f"per item {_num(four)}"))  # fmt: skip
    share = _get(block, "clicked", "personal_share")
    value, headroom = _get(share, "value"), _get(block, "clicked", "faithful", "headroom")
    found.append(Claim("personal share", value is not None and value >= MIN_PERSONAL_SHARE,
                       f"ICG reaches {_pct_plain(value)} of the faithful headroom {_num(headroom)} "
                       f"(CI {_pct_plain(_get(share, 'ci_low'))} .. {_pct_plain(_get(share, 'ci_high'))}); needs >= "
                       f"{MIN_PERSONAL_SHARE:.0%}"))  # fmt: skip
    found += _user_swap_claims(report)
    for claim in found:
        claim.guarded = claim.name in GUARDED_PERSONALIZATION
    return found


def _user_swap_claims(report: dict[str, Any]) -> list[Claim]:
    """The user-swap test at a common seed (held-out clicked pairs; candidates in the detail), and user vs seed."""
    swap = report.get("user_swap")
    if not isinstance(swap, dict):
        return []
    win = _get(swap, "held_out", "icg", "oracle", "win_rate")
    win_candidates = _get(swap, "candidates", "icg", "oracle", "win_rate")
    distance = _get(swap, "held_out", "icg", "distance")
    ratio = _get(distance, "rmse_ratio")
    return [
        Claim("user swap", win is not None and win >= MIN_USER_SWAP_WIN,
              f"a user's own cover beats other users' covers of the item (common seed, true click model) "
              f"{_pct_plain(win)} of the time (candidates {_pct_plain(win_candidates)}); needs >= "
              f"{MIN_USER_SWAP_WIN:.0%}"),
        Claim("user effect vs seed noise", ratio is not None and ratio >= 1.0,
              f"pixel RMSE between users' covers at one seed {_num(_get(distance, 'user_rmse'))}, between one user's "
              f"covers at two seeds {_num(_get(distance, 'seed_rmse'))} (ratio {_num(ratio)}); needs >= 1"),
    ]  # fmt: skip


def _pct_plain(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _appeal_claim(report: dict[str, Any]) -> list[Claim]:
    """With a (simulated) study: its Bradley-Terry scores rank ICG > ICG without users > title-only, as the oracle."""
    scores = {m: row.get("user_appeal") for m, row in report["methods"].items()}
    if "user_appeal" not in report or None in (scores.get("icg"), scores.get("icg_no_user"), scores.get("title_only")):
        return []
    order = scores["icg"] > scores["icg_no_user"] > scores["title_only"]
    return [
        Claim(
            "user appeal",
            order,
            "Bradley-Terry "
            + ", ".join(f"{m} {scores[m]:+.2f}" for m in ("icg", "icg_no_user", "title_only"))
            + "; needs ICG > no user > title-only",
        )
    ]


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1%}"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def say_claims(found: list[Claim]) -> bool:
    """Print the claims (guarded: ok / BROKEN) and the targets (met / MISSED); True when every guarded claim holds."""
    say("\nThe demo's claims:")
    for claim in (c for c in found if c.guarded):
        say(f"  [{'ok' if claim.ok else 'BROKEN'}] {claim.name}: {claim.detail}")
    targets = [c for c in found if not c.guarded]
    if targets:
        say("Targets (shown, not enforced by --check until they hold on seeds 0-2; docs/demo.md):")
        for claim in targets:
            say(f"  [{'met' if claim.ok else 'MISSED'}] {claim.name}: {claim.detail}")
    return all(c.ok for c in found if c.guarded)


# ------------------------------------------------------------------------------------------------ one seed, many
def run_pipeline(seed: int, quick: bool) -> dict[str, Any]:
    start = time.time()
    if RUNS.exists():  # every stage starts over: no stage may chain a checkpoint of an earlier demo run
        say(f"removing the previous demo run in {RUNS} (the demo always starts from scratch)")
        shutil.rmtree(RUNS)
    plan = steps(seed, quick, start)
    for number, (title, run) in enumerate(plan, 1):
        say(f"\n[{number}/{len(plan)}] {title}")
        began = time.time()
        run()
        say(f"  done in {time.time() - began:.0f} s")
    say(f"\nicg demo (seed {seed}) finished in {(time.time() - start) / 60:.1f} minutes: {RUNS}/report.md, "
        f"{RUNS}/gallery.html")  # fmt: skip
    return json.loads((RUNS / "report.json").read_text())


SEED_COLUMNS = (
    ("stage-1 AUC", lambda r: r["stage1"]["auc"], "{:.3f}"),
    ("oracle AUC", lambda r: r["stage1"]["oracle_auc"], "{:.3f}"),
    ("p title-only", lambda r: r["methods"]["title_only"]["true_click_prob"], "{:.3f}"),
    ("p no-user", lambda r: r["methods"]["icg_no_user"]["true_click_prob"], "{:.3f}"),
    ("p ICG", lambda r: r["methods"]["icg"]["true_click_prob"], "{:.3f}"),
    ("lift", lambda r: r["lift"]["true_click_prob"], "{:+.1%}"),
    ("lift CI low", lambda r: r["lift"]["ci_low"], "{:+.1%}"),
    ("lift CI high", lambda r: r["lift"]["ci_high"], "{:+.1%}"),
    ("title-match title-only", lambda r: r["methods"]["title_only"]["title_match_acc"], "{:.3f}"),
    ("title-match ICG", lambda r: r["methods"]["icg"]["title_match_acc"], "{:.3f}"),
    ("relevance drop", lambda r: r["relevance_drop"], "{:+.1%}"),
    ("title-match ICG from noise", lambda r: r["methods"]["icg_from_noise"]["title_match_acc"], "{:.3f}"),
    ("SSIM ICG", lambda r: r["methods"]["icg"]["ssim_reference"], "{:.3f}"),
    ("down AUC title-only", lambda r: r["methods"]["title_only"]["downstream_auc"], "{:.3f}"),
    ("down AUC ICG", lambda r: r["methods"]["icg"]["downstream_auc"], "{:.3f}"),
    ("down AUC reference", lambda r: r["reference_covers"]["downstream_auc"], "{:.3f}"),
    ("p reference", lambda r: r["personalization"]["clicked"]["true_click_prob"]["reference"], "{:.3f}"),
    (
        "p pool+pick equal cost",
        lambda r: r["personalization"]["clicked"]["pool_pick"]["icg_no_user"]["equal_cost"]["true_click_prob"],
        "{:.3f}",
    ),
    (
        "p pool+pick 4",
        lambda r: r["personalization"]["clicked"]["pool_pick"]["icg_no_user"]["pool"]["true_click_prob"],
        "{:.3f}",
    ),
    ("p ICG candidates", lambda r: r["personalization"]["candidates"]["true_click_prob"]["icg"], "{:.3f}"),
    ("p reference candidates", lambda r: r["personalization"]["candidates"]["true_click_prob"]["reference"], "{:.3f}"),
    ("headroom", lambda r: r["personalization"]["clicked"]["faithful"]["headroom"], "{:.3f}"),
    ("personal share", lambda r: r["personalization"]["clicked"]["personal_share"]["value"], "{:.0%}"),
    ("user-swap win", lambda r: r["user_swap"]["held_out"]["icg"]["oracle"]["win_rate"], "{:.0%}"),
    ("user / seed RMSE", lambda r: r["user_swap"]["held_out"]["icg"]["distance"]["rmse_ratio"], "{:.2f}"),
    ("appeal ICG", lambda r: r["methods"]["icg"]["user_appeal"], "{:+.2f}"),
    ("appeal no-user", lambda r: r["methods"]["icg_no_user"]["user_appeal"], "{:+.2f}"),
    ("appeal title-only", lambda r: r["methods"]["title_only"]["user_appeal"], "{:+.2f}"),
    ("minutes", lambda r: r["minutes"], "{:.1f}"),
)
# For the worst case: which direction is bad (-1: lower is worse, +1: higher is worse, 0: not summarised).
WORSE = {
    "relevance drop": 1,
    "minutes": 1,
    "oracle AUC": 0,
    "p reference": 0,
    "p pool+pick equal cost": 0,
    "p pool+pick 4": 0,
    "p reference candidates": 0,
    "headroom": 0,
}


def seed_table(reports: dict[int, dict[str, Any]]) -> str:
    """The per-seed table (Markdown) with mean and worst case of every column."""
    header = "| seed | " + " | ".join(name for name, _, _ in SEED_COLUMNS) + " | claims |"
    lines = [header, "| --- |" + " ---: |" * len(SEED_COLUMNS) + " --- |"]
    values: dict[str, list[float]] = {name: [] for name, _, _ in SEED_COLUMNS}
    for seed, report in reports.items():
        cells = []
        for name, get, fmt in SEED_COLUMNS:
            try:
                value = float(get(report))
            except (KeyError, TypeError):
                cells.append("n/a")
                continue
            values[name].append(value)
            cells.append(fmt.format(value))
        broken = [c.name for c in claims(report) if not c.ok and c.guarded]
        missed = [c.name for c in claims(report) if not c.ok and not c.guarded]
        lines.append(
            f"| {seed} | "
            + " | ".join(cells)
            + f" | {'all hold' if not broken else 'BROKEN: ' + ', '.join(broken)}"
            + (f"; targets missed: {', '.join(missed)}" if missed else "")
            + " |"
        )
    for label, pick in (("mean", lambda v, w: sum(v) / len(v)), ("worst", lambda v, w: max(v) if w > 0 else min(v))):
        cells = []
        for name, _, fmt in SEED_COLUMNS:
            direction = WORSE.get(name, -1)
            ok = values[name] and (label == "mean" or direction != 0)
            cells.append(fmt.format(pick(values[name], direction)) if ok else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " | |")
    return "\n".join(lines) + "\n"  # fmt: skip


def run_seeds(seeds: list[int], quick: bool) -> int:
    """Each seed's whole pipeline in its own folder (a subprocess), then the per-seed table."""
    reports: dict[int, dict[str, Any]] = {}
    SEEDS_ROOT.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        folder = SEEDS_ROOT / f"seed{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        say(f"\n=== seed {seed}: {folder}/runs/demo (log: {folder}/demo.log) ===")
        began = time.time()
        command = [sys.executable, "-m", "icg.demo", "--seed", str(seed)] + (["--quick"] if quick else [])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(CONFIGS.parents[1]), os.environ.get("PYTHONPATH", "")]))
        with (folder / "demo.log").open("w") as log:
            result = subprocess.run(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
        if result.returncode != 0:
            say(f"  seed {seed} failed (exit {result.returncode}); see {folder}/demo.log")
            continue
        reports[seed] = json.loads((folder / RUNS / "report.json").read_text())
        say(f"  done in {(time.time() - began) / 60:.1f} min; claims: "
            + ", ".join(f"{c.name} {('ok' if c.guarded else 'met') if c.ok else ('BROKEN' if c.guarded else 'MISSED')}"
                        for c in claims(reports[seed])))  # fmt: skip
    table = seed_table(reports)
    (SEEDS_ROOT / "summary.md").write_text(table)
    (SEEDS_ROOT / "summary.json").write_text(json.dumps({str(k): v for k, v in reports.items()}, indent=1) + "\n")
    say("\n" + table)
    say(f"per-seed reports: {SEEDS_ROOT}/seed<N>/runs/demo/report.md; table: {SEEDS_ROOT}/summary.md")
    ok = len(reports) == len(seeds) and all(c.ok for r in reports.values() for c in claims(r) if c.guarded)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m icg.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short stage-1/2 fits (a smoke run, not the result)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the platform and of every stage")
    parser.add_argument("--seeds", type=int, nargs="+", help="run the whole pipeline once per seed, then the table")
    parser.add_argument("--check", action="store_true", help="exit 1 when one of the demo's claims breaks")
    args = parser.parse_args(argv)
    setup_console(logging.WARNING)  # the demo prints its own progress; its commands' INFO lines would drown it
    if args.seeds:
        return run_seeds(args.seeds, args.quick)
    report = run_pipeline(args.seed, args.quick)
    hold = say_claims(claims(report))
    return 1 if args.check and not hold else 0


if __name__ == "__main__":
    raise SystemExit(main())
