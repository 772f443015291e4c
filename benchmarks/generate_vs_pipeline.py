"""Covers per second: ``icg generate`` vs diffusers' pipeline on the same components, and as DDP ranks are added.

**Against the pipeline** (target: ``icg generate``'s time <= 1.05x the pipeline's). Both make the same N covers of
the same (user, item) pairs from the same export, steps, guidance and batch size, and both end in PNG files:

* ``icg generate``: ``icg.commands.generate.generate`` in this process, one rank (what the command runs: pairs
  file, export load, Lightning's predict loop, covers renamed into place, manifest);
* the pipeline: ``CoverGenerator.from_pretrained`` + diffusers' ``StableDiffusionPipeline`` over the same UNet, VAE
  and DDIM scheduler, fed ``CoverGenerator.pipeline_inputs`` per batch (ICG's conditioning as ``prompt_embeds``, the
  per-pair generators), then ``image.save`` per cover -- the few lines a diffusers user would write.

Both are timed end to end (loading included) and as the loop alone (``generate``'s ``seconds``; the pipeline's
batches), interleaved with alternating order; medians of wall time and of CPU time (``time.process_time``).

**Ranks**: ``icg generate --devices R --accelerator cpu`` as subprocesses (DDP, gloo, one thread per rank), R = 1, 2
(more with ``--ranks``); wall time of the whole command (start-up included), and the loop's wall and CPU time (all
ranks) as ``icg generate`` reports them.

    python -m benchmarks.generate_vs_pipeline                          # a tiny random export built here, CPU
    python -m benchmarks.generate_vs_pipeline --export runs/demo/export --pairs ... --data_root runs/demo/data
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tiny_export(folder: Path, users: list[str], steps: int) -> Path:
    """A random-weight export: tiny Qwen2-VL prompter + adapter + title prompt on the tiny diffusion model (32 px);
    the title prompt attends to padding (as CLIP does), which diffusers' pipelines need."""
    import torch

    from icg.diffusion.prompt_encoder import PromptEncoder
    from icg.diffusion.source import DiffusionSource
    from icg.generation import CoverGenerator, SamplerSettings, UserTable
    from icg.models.adapter import ConditioningAdapter
    from icg.models.cover_conditioner import CoverConditioner
    from icg.models.fusion import UserFusion, UserOffset
    from icg.models.meta_prompt import MetaTokenPrompter

    torch.manual_seed(0)
    conditioner = CoverConditioner(
        MetaTokenPrompter(tiny_config={}, num_meta_tokens=8, image_size=56),
        UserFusion(32, 12, "user_token"),
        ConditioningAdapter(32, 64, num_layers=2, num_heads=4, num_tokens=8, hidden_dim=64),
        title_prompt=PromptEncoder(tiny={"num_buckets": 256, "dim": 64, "max_tokens": 12, "padding": "attended"}),
        user_offset=UserOffset(12, num_tokens=8, width=64),
    ).eval()
    source = DiffusionSource(tiny={"cross_attention_dim": 64, "sample_size": 16})
    table = UserTable(users, torch.randn(len(users) + 1, 12))
    settings = SamplerSettings(num_steps=steps, image_size=32, seed=0)
    return CoverGenerator(conditioner, source.load(), table, settings, source=source).save_pretrained(folder)


def tiny_inputs(work: Path, counts: dict[str, int], steps: int) -> tuple[Path, dict[str, Path], None]:
    """A small synthetic platform's covers, pairs files with title + image columns (name -> rows), a tiny export."""
    import pandas as pd

    from icg.data.schema import read_dataset
    from icg.data.synthetic import generate_platform

    platform = generate_platform(work / "platform", users=40, items=80, seed=0, image_size=32)
    items, interactions, _ = read_dataset(platform)
    files = {}
    for name, count in counts.items():
        pairs = interactions.sort_values(["timestamp", "user_id"]).head(count).merge(items, on="item_id")
        pairs["image"] = [str(platform / p) for p in pairs["image"]]
        files[name] = work / f"{name}.csv"
        pairs[["user_id", "item_id", "title", "image"]].to_csv(files[name], index=False)
    export = tiny_export(work / "export", sorted(pd.unique(interactions["user_id"]))[::2], steps)
    return export, files, None


def run_generate(export: Path, pairs: Path, data_root: Path | None, out: Path, batch: int, **kwargs) -> dict:
    from icg.commands.generate import generate

    root = None if data_root is None else str(data_root)
    return generate(str(export), str(pairs), str(out), data_root=root, batch_size=batch, accelerator="cpu",
                    progress_bar=False, **kwargs)  # fmt: skip


def run_pipeline(export: Path, pairs: Path, data_root: Path | None, out: Path, batch: int, **kwargs) -> dict:
    """The diffusers way: load, then per batch ``pipeline_inputs`` -> ``pipe(...)`` -> ``image.save``."""
    import torch

    from icg.generation import CoverGenerator
    from icg.generation.pairs import read_pairs

    found, _ = read_pairs(pairs, data_root)
    gen = CoverGenerator.from_pretrained(export)
    mode = "img2img" if kwargs.get("strength", gen.settings.strength) < 1 else "text2img"
    pipe = gen.diffusion.reference_pipeline(mode)
    out.mkdir(parents=True)
    began = time.perf_counter()
    for start in range(0, len(found), batch):
        chunk = found[start : start + batch]
        with torch.no_grad():
            users, titles, refs = [p.user_id for p in chunk], [p.title for p in chunk], [p.image for p in chunk]
            inputs = gen.pipeline_inputs(users, titles, refs, item_ids=[p.item_id for p in chunk], **kwargs)
            images = pipe(**inputs, output_type="pil").images
        for index, image in enumerate(images, start):
            image.save(out / f"{index:06d}.png")
    return {"seconds": time.perf_counter() - began}


def compare(export, pairs, data_root, batch: int, reps: int, work: Path, guidance: float | None) -> dict:
    kwargs = {} if guidance is None else {"guidance_scale": guidance}
    sides = {"icg_generate": run_generate, "pipeline": run_pipeline}
    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": [], "loop": []} for name in sides}
    for rep in range(reps + 1):  # rep 0 warms up (allocator, lazy imports) and is not counted
        order = list(sides) if rep % 2 == 0 else list(sides)[::-1]
        for name in order:
            out = work / f"{name}-{batch}-{rep}"
            wall, cpu = time.perf_counter(), time.process_time()
            result = sides[name](export, pairs, data_root, out, batch, **kwargs)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            shutil.rmtree(out)
            if rep:
                times[name]["wall"].append(wall)
                times[name]["cpu"].append(cpu)
                times[name]["loop"].append(result["seconds"])
    medians = {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}
    ours, theirs = medians["icg_generate"], medians["pipeline"]
    return {
        "batch": batch,
        "medians": medians,
        "all": times,
        "ratio_wall": ours["wall"] / theirs["wall"],
        "ratio_loop": ours["loop"] / theirs["loop"],
        "ratio_cpu": ours["cpu"] / theirs["cpu"],
    }


def ranks(export, pairs, data_root, batch: int, world: list[int], work: Path) -> list[dict]:
    rows = []
    env = dict(
        os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    for count in world:
        out = work / f"ranks-{count}"
        command = [sys.executable, "-m", "icg.cli", "generate", "--export", str(export), "--pairs", str(pairs),
                   "--out", str(out), "--batch_size", str(batch), "--devices", str(count), "--accelerator", "cpu",
                   "--progress_bar", "false"] + (["--data_root", str(data_root)] if data_root else [])  # fmt: skip
        wall = time.perf_counter()
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - wall
        if result.returncode:
            raise RuntimeError(result.stderr[-3000:])
        line = next(x for x in result.stdout.splitlines() if "made now" in x)
        made = int(line.split(" covers (")[1].split(" made now")[0])
        loop = float(line.split(") in ")[1].split(" s")[0])
        loop_cpu = float(line.split(" s (")[1].split(" s CPU")[0])
        rows.append({"ranks": count, "covers": made, "wall_s": wall, "loop_s": loop, "loop_cpu_s": loop_cpu,
                     "covers_per_s_loop": made / loop, "covers_per_s_wall": made / wall})  # fmt: skip
        shutil.rmtree(out)
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, default=None, help="an icg export (default: a tiny one built here)")
    parser.add_argument("--pairs", type=Path, default=None, help="its pairs file (with --export)")
    parser.add_argument("--data_root", type=Path, default=None, help="the dataset the pairs resolve against")
    parser.add_argument("--covers", type=int, default=32, help="covers per timed run (tiny export)")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps of the tiny export")
    parser.add_argument("--guidance", type=float, default=None, help="override the export's guidance scale")
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 8], help="pipeline comparison batch sizes")
    parser.add_argument("--ranks", type=int, nargs="*", default=[1, 2], help="DDP world sizes to time")
    parser.add_argument("--rank_covers", type=int, default=128, help="covers per timed run of the ranks (tiny export)")
    parser.add_argument("--rank_batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the result to this file")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import logging

    import torch

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="icg-bench-generate-"))
    try:
        if args.export is None:
            export, files, data_root = tiny_inputs(work, {"pairs": args.covers, "ranks": args.rank_covers}, args.steps)
        else:
            export, data_root = args.export, args.data_root
            files = {"pairs": args.pairs, "ranks": args.pairs}
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
        result = {
            "benchmark": "generate_vs_pipeline",
            "machine": f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} thread(s)",
            "export": str(args.export or "tiny (random weights, built here)"),
            "settings": json.loads((Path(export) / "icg_config.json").read_text())["sampler"],
            "pipeline": [
                compare(export, files["pairs"], data_root, b, args.reps, work, args.guidance) for b in args.batches
            ],
            "ranks": ranks(export, files["ranks"], data_root, args.rank_batch, args.ranks, work),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("| batch | icg generate s (loop / wall / cpu) | pipeline s (loop / wall / cpu) | ratio loop | ratio wall |")
    for row in result["pipeline"]:
        o, p = row["medians"]["icg_generate"], row["medians"]["pipeline"]
        print(f"| {row['batch']} | {o['loop']:.2f} / {o['wall']:.2f} / {o['cpu']:.2f} | {p['loop']:.2f} / "
              f"{p['wall']:.2f} / {p['cpu']:.2f} | {row['ratio_loop']:.3f} | {row['ratio_wall']:.3f} |")  # fmt: skip
    print("| ranks | covers | loop s | loop CPU s (all ranks) | covers/s (loop) | wall s | covers/s (wall) |")
    for row in result["ranks"]:
        print(f"| {row['ranks']} | {row['covers']} | {row['loop_s']:.2f} | {row['loop_cpu_s']:.2f} | "
              f"{row['covers_per_s_loop']:.2f} | {row['wall_s']:.1f} | {row['covers_per_s_wall']:.2f} |")  # fmt: skip
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
