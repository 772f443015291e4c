"""``make demo``: the whole ICG pipeline on the embedded default, the synthetic platform, with tiny models.

install (Makefile) -> synthetic platform -> the demo's stand-in base model -> stage 1 (click model) -> stage 2
(reward bundle) -> stage 3 (ICG, and ICG without user refinement) -> evaluation -> report + gallery.
Every step is the same ``icg`` command a user would type (``icg.cli.main``), run in-process in order; the configs
are ``lightning_configs/demo/*.yaml`` and everything is written under ``runs/demo/``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from icg.cli import main as icg

RUNS = Path("runs/demo")
DATA = RUNS / "data"
CONFIGS = Path("lightning_configs/demo")
STAGE1_CKPT = RUNS / "stage1/checkpoints/last.ckpt"
STAGE3_CKPT = RUNS / "stage3/checkpoints/last.ckpt"
NO_USER_DIR = RUNS / "stage3_no_user"
NO_USER_CKPT = NO_USER_DIR / "checkpoints/last.ckpt"
HOLDOUT = 3  # = data.holdout of every lightning_configs/demo/stage*.yaml (tests/test_config_hub.py checks)


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def fit(config: str, *overrides: str) -> Callable[[], None]:
    return lambda: _ok(icg(["fit", "--config", str(CONFIGS / config), *overrides]))


def _ok(code: int) -> None:
    if code:
        raise SystemExit(code)


def stage1_table() -> None:
    """Stage 1 beside the oracle (the ceiling) and popularity, on the same test candidates."""
    from icg.data.datamodule import ICGDataModule
    from icg.data.oracle import Oracle
    from icg.lit.preference import compare_click_models, load_preference_model

    model, _ = load_preference_model(STAGE1_CKPT, "demo stage-1 checkpoint")
    datamodule = ICGDataModule(root=str(DATA), image_size=64, holdout=HOLDOUT, eval_candidates=20, seed=0)
    datamodule.setup("test")
    table = compare_click_models(datamodule, model, Oracle.from_dataset(DATA), split="test")
    say(f"  {'test':<11}{'AUC':>8}{'GAUC':>8}{'NDCG@10':>9}")
    for name in ("model", "oracle", "popularity"):
        row = table[name]
        say(f"  {name:<11}{row['auc']:>8.3f}{row['gauc']:>8.3f}{row['ndcg@10']:>9.3f}")


def evaluation(started_at: float) -> None:
    """The paper's axes for title-only, ICG without user refinement and ICG; report, table and gallery."""
    from icg.evaluation.report import format_markdown
    from icg.evaluation.run import evaluate_checkpoints

    report = evaluate_checkpoints(
        str(DATA), str(STAGE1_CKPT), str(STAGE3_CKPT), str(RUNS / "base_model"), out_dir=str(RUNS),
        no_user_ckpt=str(NO_USER_CKPT), holdout=HOLDOUT, started_at=started_at,
    )  # fmt: skip
    say(format_markdown(report))


def steps(quick: bool, started_at: float) -> list[tuple[str, Callable[[], None]]]:
    no_user = ("--config", str(CONFIGS / "stage3_no_user.yaml"))
    short = ("--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2") if quick else ()
    return [
        ("synthetic platform", lambda: _ok(icg(["data", "synth", "--out", str(DATA), "--overwrite"]))),
        ("dataset stats", lambda: _ok(icg(["data", "stats", str(DATA)]))),
        ("stand-in base model (not an ICG stage)", fit("base_model.yaml")),
        ("stage 1: preference model", fit("stage1_preference.yaml", *short)),
        ("stage 1 vs oracle and popularity", stage1_table),
        ("stage 2: reward bundle", fit("stage2_rewards.yaml", *short)),
        ("stage 3: ICG alignment", fit("stage3_alignment.yaml")),
        ("stage 3: ICG without user refinement (baseline)", fit("stage3_alignment.yaml", *no_user)),
        ("evaluation: title-only vs ICG without users vs ICG", lambda: evaluation(started_at)),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m icg.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short stage-1/2 fits (a smoke run, not the result)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    start = time.time()
    if RUNS.exists():  # every stage starts over: no stage may chain a checkpoint of an earlier demo run
        say(f"removing the previous demo run in {RUNS} (the demo always starts from scratch)")
        shutil.rmtree(RUNS)
    plan = steps(args.quick, start)
    for number, (title, run) in enumerate(plan, 1):
        say(f"\n[{number}/{len(plan)}] {title}")
        began = time.time()
        run()
        say(f"  done in {time.time() - began:.0f} s")
    say(f"\nicg demo finished in {(time.time() - start) / 60:.1f} minutes: {RUNS}/report.md, {RUNS}/gallery.html")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
