"""The whole demo once per seed, each in its own folder, and the per-seed table with mean and worst case."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from icg.demo.claims import claims, probe_margins
from icg.demo.paths import CONFIGS, RUNS, SEEDS_ROOT
from icg.demo.steps import say

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
    ("p handcrafted prompt", lambda r: r["methods"]["personalized_prompt"]["true_click_prob"], "{:.3f}"),
    ("title-match handcrafted prompt", lambda r: r["methods"]["personalized_prompt"]["title_match_acc"], "{:.3f}"),
    ("p ICG no meta", lambda r: r["methods"]["icg_no_meta"]["true_click_prob"], "{:.3f}"),
    ("title-match ICG no meta", lambda r: r["methods"]["icg_no_meta"]["title_match_acc"], "{:.3f}"),
    ("p ICG trained MLLM", lambda r: r["methods"]["icg_other_mllm"]["true_click_prob"], "{:.3f}"),
    ("title-match ICG trained MLLM", lambda r: r["methods"]["icg_other_mllm"]["title_match_acc"], "{:.3f}"),
    ("probe margin", lambda r: min(probe_margins(r["mllm_probe"]).values()), "{:+.2f}"),
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
