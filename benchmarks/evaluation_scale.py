"""`icg evaluate`'s own time and peak memory at Pixel1M scale (1.0M users, 100k items, 19.9M interactions).

What grows with the dataset is the evaluation's machinery, not its covers: reading and splitting the log, the
click-model comparisons (stage 1, popularity and the evaluator, on the held-out rows), the in-process evaluator's
training and the user sample. This builds a Pixel1M-shaped dataset (``benchmarks/datamodule_scale.py``), a tiny stage-1
checkpoint on it (``icg fit`` with the tiny config, one step), then runs ``icg.evaluation.run.evaluate`` in a fresh
process with two tiny generators (the title-only baseline twice, named ``title_only`` and ``icg``: covers are
GPU-bound and measured by ``make bench-gpu``), timing each part and reading the peak RSS (``VmHWM``).

The reference is the same evaluation without the bounds (``--max_users 0 --max_pairs 0`` means none; it walks every
held-out row and trains the evaluator on every train click), run at a scale where it finishes.

    python -m benchmarks.evaluation_scale                             # Pixel1M size, bounded (the defaults)
    python -m benchmarks.evaluation_scale --scale 0.02 --max_users 0 --max_pairs 0   # the unbounded reference
    python -m benchmarks.evaluation_scale --dir /tmp/pixel1m          # reuse (or keep) the generated dataset
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY_STAGE1 = REPO / "lightning_configs" / "tiny" / "stage1_preference.yaml"


def _vm(key: str) -> float:
    """A /proc/self/status memory figure in GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def stage1_checkpoint(root: Path, out: Path) -> Path:
    """A tiny stage-1 checkpoint on ``root`` (one training step; num_users counted from the dataset)."""
    found = sorted(out.rglob("*.ckpt"))
    if found:
        return found[0]
    command = [
        sys.executable,
        "-m",
        "icg.cli",
        "fit",
        "--config",
        str(TINY_STAGE1),
        "--data.root",
        str(root),
        "--trainer.max_steps",
        "1",
        "--trainer.limit_val_batches",
        "0",
        "--trainer.num_sanity_val_steps",
        "0",
        "--trainer.default_root_dir",
        str(out),
    ]
    subprocess.run(command, check=True, cwd=REPO, capture_output=True, text=True)
    return sorted(out.rglob("*.ckpt"))[0]


def tiny_methods(folder: Path) -> dict:
    """Two tiny title-only generators on a stand-in base model (random weights, 32 px)."""
    import torch

    from icg.diffusion.components import DiffusionComponents
    from icg.evaluation.methods import TitleOnlyMethod
    from icg.lit.base_model import export_base_model
    from icg.models.title_tokens import TitleTokenEncoder

    torch.manual_seed(0)
    base = DiffusionComponents.tiny(cross_attention_dim=32, sample_size=16)
    export_base_model(folder, base.unet, base.vae, base.scheduler, TitleTokenEncoder(dim=32))
    method = TitleOnlyMethod.from_folder(folder, num_steps=4, image_size=32)
    return {"title_only": method, "icg": method}


def measure(root: Path, stage1: Path, work: Path, max_users: int | None, max_pairs: int | None) -> dict:
    """Run ``evaluate`` in this (fresh) process; time its parts; report the peak RSS."""
    import torch  # noqa: F401 - imported first so the baseline includes it

    import icg.evaluation.evaluator as grading
    import icg.evaluation.run as run
    from icg.data.datamodule import ICGDataModule
    from icg.evaluation.settings import DataSettings, EvaluatorSettings, RunSettings, SampleSettings, ScoringSettings

    parts: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            start, cpu = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                parts[f"{name}_s"] = parts.get(f"{name}_s", 0.0) + time.perf_counter() - start
                parts[f"{name}_cpu_s"] = parts.get(f"{name}_cpu_s", 0.0) + time.process_time() - cpu

        return wrapper

    ICGDataModule.setup = timed("datamodule_setup", ICGDataModule.setup)
    grading.compare_click_models = timed("click_model_comparisons", grading.compare_click_models)
    grading.train_evaluator = timed("evaluator_training", grading.train_evaluator)
    methods = tiny_methods(work / "base_model")
    baseline = _vm("VmRSS")
    start, cpu = time.perf_counter(), time.process_time()
    report = run.evaluate(
        root,
        stage1,
        methods,
        work / "report",
        data=DataSettings(image_size=32, eval_candidates=20),
        sample=SampleSettings(
            num_users=8, grid_users=2, grid_items=2, downstream_users=4, downstream_negatives=4, max_users=max_users
        ),  # fmt: skip
        evaluator=EvaluatorSettings(max_pairs=max_pairs),
        scoring=ScoringSettings(bootstrap_samples=100),
        run=RunSettings(tensorboard=False),
    )
    return {
        "evaluate_s": round(time.perf_counter() - start, 1),
        "evaluate_cpu_s": round(time.process_time() - cpu, 1),
        **{k: round(v, 1) for k, v in parts.items()},
        "generation_s": round(sum(report["generation_seconds"].values()), 1),
        "peak_rss_gib": round(_vm("VmHWM"), 2),
        "rss_before_gib": round(baseline, 2),
        "stage1_auc": report["stage1"]["auc"],
        "evaluator_auc": report["evaluator"]["auc"],
        "held_out_pairs": report["sample"]["held_out_pairs"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of Pixel1M's size")
    parser.add_argument("--dir", type=Path, default=None, help="dataset folder to reuse or keep (default: temp)")
    parser.add_argument("--max_users", type=int, default=2_000, help="0: no bound (the reference)")
    parser.add_argument("--max_pairs", type=int, default=200_000, help="0: no bound (the reference)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    parser.add_argument("--measure", nargs=3, type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    bounds = (args.max_users or None, args.max_pairs or None)
    if args.measure is not None:
        sys.stdout.write(json.dumps(measure(*args.measure, *bounds)) + "\n")
        return
    from benchmarks.datamodule_scale import generate

    with tempfile.TemporaryDirectory() as tmp:
        root = args.dir or Path(tmp) / "pixel1m_like"
        start = time.perf_counter()
        sizes = generate(root, args.scale) if not (root / "meta.json").is_file() else {"reused": str(root)}
        sys.stdout.write(f"dataset {sizes} ready in {time.perf_counter() - start:.0f} s\n")
        start = time.perf_counter()
        stage1 = stage1_checkpoint(root, root.parent / f"{root.name}-stage1")
        sys.stdout.write(f"tiny stage-1 checkpoint {stage1} in {time.perf_counter() - start:.0f} s\n")
        work = Path(tmp) / "work"
        work.mkdir()
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        command = [
            sys.executable,
            "-m",
            "benchmarks.evaluation_scale",
            "--measure",
            str(root),
            str(stage1),
            str(work),
            "--max_users",
            str(args.max_users),
            "--max_pairs",
            str(args.max_pairs),
        ]
        child = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)
        if child.returncode != 0:
            raise SystemExit(f"evaluation failed:\n{child.stderr[-4000:]}")
        result = {
            "scale": args.scale,
            "max_users": bounds[0],
            "max_pairs": bounds[1],
            **json.loads(child.stdout.strip().splitlines()[-1]),
        }
    sys.stdout.write("| figure | value |\n| --- | --- |\n")
    for key, value in result.items():
        sys.stdout.write(f"| {key} | {value} |\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
