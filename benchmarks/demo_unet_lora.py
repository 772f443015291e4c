"""ICG with and without a UNet LoRA on the demo's synthetic platform: lift over title-only and relevance, side by side.

Runs the demo's own steps with its configs (``lightning_configs/demo/``) in a separate folder: the platform, the
stand-in base model, stage 1, stage 2, then stage 3 twice -- as configured (adapter only) and with
``model.init_args.unet_lora`` (the same rewards, learning rate and steps; the LoRA trains beside the adapter) -- and
evaluates each with ``icg.evaluation.run.evaluate_checkpoints``. Prints one table (true click probability of the
synthetic users, lift over the title-only baseline with its CI, title-match accuracy, relevance drop, trained values,
wall and CPU minutes of each stage-3 run) and writes it to ``OUT/summary.json``.

    python -m benchmarks.demo_unet_lora --out runs/lora_demo              # ~40-60 min on 2 shared CPU cores
    python -m benchmarks.demo_unet_lora --out runs/lora_demo --rank 8 --skip-common   # reuse platform/stages 1-2
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from icg.cli import main as icg

CONFIGS = Path(__file__).resolve().parents[1] / "lightning_configs" / "demo"
HOLDOUT = 3  # = the demo configs' data.holdout


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _run(words: list[str]) -> dict[str, float]:
    wall, cpu = time.time(), _cpu()
    code = icg([str(w) for w in words])
    if code:
        raise SystemExit(f"icg {' '.join(map(str, words[:3]))} ... exited {code}")
    return {"wall_min": (time.time() - wall) / 60, "cpu_min": (_cpu() - cpu) / 60}


def _outputs(folder: Path) -> list[str]:
    """Overrides that send a demo stage's logs and checkpoints to ``folder``."""
    return ["--trainer.default_root_dir", folder, "--trainer.logger.init_args.save_dir", folder,
            "--trainer.callbacks.init_args.dirpath", folder / "checkpoints"]  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/lora_demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--alpha", type=float, default=4.0)
    parser.add_argument("--skip-common", action="store_true", help="reuse the platform, base model and stages 1-2")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    data, base = out / "data", out / "base_model"
    stage1, stage2 = out / "stage1/checkpoints/last.ckpt", out / "stage2/checkpoints/last.ckpt"
    seeded = ["--seed_everything", args.seed, "--data.seed", args.seed, "--data.root", data]
    timings: dict[str, dict[str, float]] = {}
    if not args.skip_common:
        timings["synth"] = _run(["data", "synth", "--out", data, "--overwrite", "--seed", args.seed])
        timings["base_model"] = _run(["fit", "--config", CONFIGS / "base_model.yaml", *seeded,
                                      "--model.init_args.export_dir", base, "--trainer.default_root_dir",
                                      out / "base_model_logs", "--trainer.logger.init_args.save_dir",
                                      out / "base_model_logs"])  # fmt: skip
        timings["stage1"] = _run(["fit", "--config", CONFIGS / "stage1_preference.yaml", *seeded,
                                  *_outputs(out / "stage1")])  # fmt: skip
        timings["stage2"] = _run(["fit", "--config", CONFIGS / "stage2_rewards.yaml", *seeded,
                                  "--model.init_args.seed", args.seed, "--model.init_args.preference_ckpt", stage1,
                                  *_outputs(out / "stage2")])  # fmt: skip
    stage3 = ["fit", "--config", CONFIGS / "stage3_alignment.yaml", *seeded, "--model.init_args.seed", args.seed,
              "--model.init_args.preference_ckpt", stage1, "--model.init_args.rewards_ckpt", stage2,
              "--model.init_args.diffusion.path", base,
              "--model.init_args.conditioner.init_args.title_prompt.init_args.path", base]  # fmt: skip
    lora = json.dumps({"rank": args.rank, "alpha": args.alpha})
    variants = {"adapter only": [], f"adapter + UNet LoRA r{args.rank}": ["--model.init_args.unet_lora", lora]}
    from icg.evaluation.run import evaluate_checkpoints
    from icg.evaluation.settings import DataSettings, SampleSettings

    rows = {}
    for i, (name, extra) in enumerate(variants.items()):
        folder = out / f"stage3_{i}"
        timing = _run([*stage3, *extra, *_outputs(folder), "--overwrite", "true"])
        ckpt = folder / "checkpoints/last.ckpt"
        state = torch.load(ckpt, weights_only=True)["state_dict"]
        settings = {"data": DataSettings(holdout=HOLDOUT), "sample": SampleSettings(seed=args.seed)}
        report = evaluate_checkpoints(str(data), str(stage1), str(ckpt), str(base), out_dir=str(folder / "eval"),
                                      **settings)  # fmt: skip
        icg_row, baseline = report["methods"]["icg"], report["methods"]["title_only"]
        rows[name] = {
            "p_icg": icg_row["true_click_prob"],
            "p_title_only": baseline["true_click_prob"],
            "lift": report["lift"]["true_click_prob"],
            "lift_ci": [report["lift"]["ci_low"], report["lift"]["ci_high"]],
            "title_match_icg": icg_row["title_match_acc"],
            "title_match_title_only": baseline["title_match_acc"],
            "relevance_drop": report["relevance_drop"],
            "trained_values": sum(v.numel() for v in state.values()),
            "lora_values": sum(v.numel() for k, v in state.items() if k.startswith("unet_lora.")),
            **timing,
        }
    summary = {"seed": args.seed, "rank": args.rank, "alpha": args.alpha, "rows": rows, "common": timings}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("| stage 3 | p ICG | p title-only | lift (CI) | title-match ICG / title-only | relevance drop | trained "
          "values (LoRA) | wall / CPU min |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        print(f"| {name} | {r['p_icg']:.3f} | {r['p_title_only']:.3f} | {r['lift']:+.1%} ({r['lift_ci'][0]:+.1%} .. "
              f"{r['lift_ci'][1]:+.1%}) | {r['title_match_icg']:.3f} / {r['title_match_title_only']:.3f} | "
              f"{r['relevance_drop']:+.1%} | {r['trained_values']} ({r['lora_values']}) | "
              f"{r['wall_min']:.1f} / {r['cpu_min']:.1f} |")  # fmt: skip
    return summary


if __name__ == "__main__":
    main()
