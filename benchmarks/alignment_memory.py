"""Time and peak memory of one alignment-like step as T and K grow, with and without gradient checkpointing.

One step = ``sample`` with a gradient window (DRaFT-K ``last_k`` or ReFL ``random_step``) from a trainable
conditioning tensor (the adapter's output stand-in) + a simple differentiable reward on the decoded image +
``backward``. Steps outside the window run without a graph, so peak memory should stay flat as T grows at fixed K,
grow with K, and drop with checkpointing.

Each configuration runs in a fresh subprocess: on CPU the peak is ``resource.getrusage`` max RSS (tracemalloc does
not see torch's allocator), reported as the increase over the RSS after the models are built; on CUDA it is
``torch.cuda.max_memory_allocated`` above what is allocated before the step.

    python -m benchmarks.alignment_memory                                 # tiny preset, CPU
    python -m benchmarks.alignment_memory --device cuda --preset sd15    # SD 1.5 architecture, 512 px, bf16
    python -m benchmarks.alignment_memory --device cuda --preset flux    # FLUX.1-dev architecture (12B), 512 px, bf16

The Flux presets (``flux``: 512 px, ``flux1024``: 1024 px) run fewer configurations (building a random 12B
transformer takes a while in every subprocess): T = 28 (FluxPipeline's default) with K = 1 and 2, with and without
checkpointing, one ReFL step, and one step that also trains a rank-16 LoRA on the transformer (``unet_lora``).
``tiny_flux`` is the same list on a tiny Flux, for a CPU check of the script.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time

PRESETS = {
    "tiny": dict(size=32, batch=2, dtype="float32", t_sweep=[5, 10, 20, 40], k_sweep=[1, 2, 4, 8], k_at=20),
    "sd15": dict(size=512, batch=1, dtype="bfloat16", t_sweep=[10, 25, 50], k_sweep=[1, 2, 4], k_at=25),
    # Flux: the token stream is [T5 title prompt (128) ; adapter tokens (64)], as lightning_configs/real/*_flux.yaml.
    "tiny_flux": dict(size=32, batch=2, dtype="float32", length=192, flux=True),
    "flux": dict(size=512, batch=1, dtype="bfloat16", length=192, flux=True),
    "flux1024": dict(size=1024, batch=1, dtype="bfloat16", length=192, flux=True),
}
FLUX_T = 28


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    return f"cpu {model}, {torch.get_num_threads()} thread(s)"


def worker(args: argparse.Namespace) -> dict:
    """One configuration in this (fresh) process: build, warm up, time ``reps`` steps, report the peak."""
    import torch

    from icg.diffusion.bases import from_preset
    from icg.diffusion.conditioning import Conditioning
    from icg.diffusion.lora import UNetLoRA, add_lora
    from icg.diffusion.sampler import sample

    preset = PRESETS[args.preset]
    device = torch.device(args.device)
    build = {"flux": "flux", "flux1024": "flux"}.get(args.preset, args.preset)
    comps = from_preset(build, device=device, dtype=getattr(torch, preset["dtype"]))
    size, batch = preset["size"], preset["batch"]
    g = torch.Generator().manual_seed(0)
    # The adapter's output stand-in: the only trainable tensor, as in alignment where the denoiser is frozen.
    length = preset.get("length", 77)
    hidden = torch.randn(batch, length, comps.cross_attention_dim, generator=g).to(device).requires_grad_(True)
    pooled = None
    if comps.pooled_dim is not None:
        pooled = torch.randn(batch, comps.pooled_dim, generator=g).to(device).requires_grad_(True)
    lora = add_lora(comps.denoiser, UNetLoRA(rank=16, alpha=16.0)).to(device) if args.lora else None

    def step(seed: int) -> None:
        image = sample(
            comps,
            Conditioning(hidden, None, pooled),
            num_steps=args.T,
            grad_window=args.mode,
            k=args.K,
            random_step_range=(args.T - 10 if args.T > 10 else 0, args.T - 1),
            gradient_checkpointing=args.ckpt,
            height=size,
            width=size,
            generator=torch.Generator(device).manual_seed(seed),
        )
        reward = -((image - 0.5) ** 2).mean(dim=(1, 2, 3))  # any differentiable reward of the pixels
        (-reward.mean()).backward()
        hidden.grad = None
        if pooled is not None:
            pooled.grad = None
        if lora is not None:
            lora.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    step(0)  # warm-up; its peak counts (the first step is the largest)
    times = []
    for rep in range(args.reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step(rep + 1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {
        "mode": args.mode,
        "T": args.T,
        "K": args.K if args.mode == "last_k" else 1,
        "ckpt": args.ckpt,
        "lora": args.lora,
        "lora_params": sum(p.numel() for p in lora.parameters()) if lora is not None else 0,
        "step_s": statistics.median(times),
        "peak_mib": peak / 2**20,
        "base_mib": base / 2**20,
        "device": device_name(device),
        "preset": args.preset,
        "size": size,
        "batch": batch,
        "dtype": preset["dtype"],
    }


def configurations(preset: dict) -> list[tuple[str, int, int, bool, bool]]:
    """(mode, T, K, checkpointing, LoRA): a T sweep at K=1, a K sweep at fixed T, checkpointing, and one ReFL step;
    Flux: K = 1 and 2 at T = 28, with and without checkpointing, one ReFL step, one step with a LoRA."""
    if preset.get("flux"):
        configs = [("last_k", FLUX_T, k, ckpt, False) for k in (1, 2) for ckpt in (False, True)]
        return configs + [("random_step", FLUX_T, 1, False, False), ("last_k", FLUX_T, 1, True, True)]
    t_max, k_at = max(preset["t_sweep"]), preset["k_at"]
    configs = [("last_k", t, 1, False, False) for t in preset["t_sweep"]]
    configs += [("last_k", k_at, k, False, False) for k in preset["k_sweep"] if k > 1]
    configs += [("last_k", k_at, k, True, False) for k in (1, max(preset["k_sweep"]))]
    configs += [("random_step", t_max, 1, False, False)]
    return configs


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write all rows to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="last_k", help=argparse.SUPPRESS)
    parser.add_argument("--T", type=int, default=10, help=argparse.SUPPRESS)
    parser.add_argument("--K", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--lora", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return []

    rows = []
    print("| mode | T | K | checkpointing | LoRA | step s | peak MiB above base |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    has_peft = importlib.util.find_spec("peft") is not None
    for mode, t, k, ckpt, lora in configurations(PRESETS[args.preset]):
        if lora and not has_peft:
            print(f"| {mode} | {t} | {k} | {ckpt} | {lora} | skipped: peft is not importable | |", flush=True)
            continue
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.alignment_memory",
            "--worker",
            "--device",
            args.device,
            "--preset",
            args.preset,
            "--reps",
            str(args.reps),
            "--mode",
            mode,
            "--T",
            str(t),
            "--K",
            str(k),
        ]
        if ckpt:
            cmd.append("--ckpt")
        if lora:
            cmd.append("--lora")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"configuration {mode} T={t} K={k} ckpt={ckpt} lora={lora} failed:\n{proc.stderr[-3000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"| {mode} | {t} | {row['K']} | {ckpt} | {lora} | {row['step_s']:.3f} | {row['peak_mib']:.0f} |", flush=True
        )
    print(
        f"device: {rows[0]['device']}; preset {args.preset} {rows[0]['size']}px batch {rows[0]['batch']} "
        f"{rows[0]['dtype']}; base (models built) {rows[0]['base_mib']:.0f} MiB"
    )
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
